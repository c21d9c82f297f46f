"""``rtrec worker``: one stream worker (scale by starting more: Kafka's consumer group shares the
partitions among them). The Faust app runs here; the pipeline runs in a child process
(``stream_workers/pipeline_process.py``) that also serves the worker's metrics."""

from __future__ import annotations

import json
import logging
import os

from faust.worker import Worker

from rtrec.settings import Settings
from stream_workers.app import create_app
from stream_workers.pipeline_process import PipelineProcess

log = logging.getLogger(__name__)


def main(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT; prints the ready line once the app has started."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.worker_nice:  # before the pipeline process starts: it inherits the niceness
        log.info("worker niceness %d: training yields the CPU to serving on a shared machine",
                 os.nice(settings.worker_nice))
    pipeline = PipelineProcess(settings.metrics_port)
    app = create_app(settings, pipeline)

    @app.task
    async def announce_ready() -> None:
        print(json.dumps({"ready": True, "worker": settings.worker_group, "metrics": pipeline.metrics_url}),
              flush=True)

    try:
        worker = Worker(app, loglevel=settings.log_level.lower().replace("warning", "warn"), quiet=True,
                        redirect_stdouts=False)
        worker.execute_from_commandline()
    finally:
        pipeline.close()
