"""``rtrec worker``: one stream worker process (scale by starting more: Kafka's consumer group
shares the partitions among them)."""

from __future__ import annotations

import json
import logging

import redis
import torch
from faust.worker import Worker

from prometheus_client import REGISTRY

from features.writer import FeatureWriter
from param_server.sharding import ShardedClient
from rtrec.metrics_http import serve_metrics
from rtrec.settings import Settings
from stream_workers.app import create_app
from stream_workers.joiner import Joiner
from stream_workers.pipeline import BatchPipeline
from stream_workers.trainer import OnlineTrainer
from stream_workers.training import TrainingStep

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings, train: bool = True) -> BatchPipeline:
    """The worker's pipeline from settings; ``train=False`` leaves the parameter server out."""
    writer = FeatureWriter(redis.Redis.from_url(settings.redis_url))
    step = None
    if train:
        torch.set_num_threads(settings.torch_threads)  # the worker shares its cores with Redis and Kafka
        params = ShardedClient.connect(settings.param_server_addrs, settings.ps_token)
        step = TrainingStep(OnlineTrainer(params, registry=REGISTRY))
    return BatchPipeline(writer, Joiner(window_s=settings.join_window_s), step)


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
