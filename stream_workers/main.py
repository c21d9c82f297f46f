"""``rtrec worker``: one stream worker process (scale by starting more: Kafka's consumer group
shares the partitions among them)."""

from __future__ import annotations

import json
import logging

import redis
from faust.worker import Worker

from features.writer import FeatureWriter
from rtrec.metrics_http import serve_metrics
from rtrec.settings import Settings
from stream_workers.app import create_app
from stream_workers.joiner import Joiner
from stream_workers.pipeline import BatchPipeline

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings) -> BatchPipeline:
    """The worker's pipeline from settings (also used by benchmarks and tests)."""
    writer = FeatureWriter(redis.Redis.from_url(settings.redis_url))
    return BatchPipeline(writer, Joiner(window_s=settings.join_window_s))


def main(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT; prints the ready line once the app has started."""
    metrics_url = serve_metrics(settings.metrics_port, settings.metrics_host)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, build_pipeline(settings))

    @app.task
    async def announce_ready() -> None:
        print(json.dumps({"ready": True, "worker": settings.worker_group, "metrics": metrics_url}), flush=True)

    worker = Worker(app, loglevel=settings.log_level.lower().replace("warning", "warn"), quiet=True,
                    redirect_stdouts=False)
    worker.execute_from_commandline()
