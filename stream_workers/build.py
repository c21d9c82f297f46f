"""Building the worker's pipeline from settings (used by the pipeline process, benchmarks, tests)."""

from __future__ import annotations

import redis
import torch
from prometheus_client import REGISTRY

from features.reader import FeatureReader
from features.writer import FeatureWriter
from param_server.sharding import ShardedClient
from rtrec.settings import Settings
from rtrec.recipe.joiner import Joiner
from stream_workers.pipeline import BatchPipeline
from stream_workers.recovery import KafkaRangeReader, Recovery
from rtrec.recipe.trainer import OnlineTrainer
from rtrec.recipe.training import TrainingStep


def build_pipeline(settings: Settings, train: bool = True) -> BatchPipeline:
    """The worker's pipeline from settings; ``train=False`` leaves the parameter server out."""
    client = redis.Redis.from_url(settings.redis_url)
    writer = FeatureWriter(client)
    step = recovery = None
    joiner = Joiner(window_s=settings.join_window_s)
    if train:
        torch.set_num_threads(settings.torch_threads)  # the worker shares its cores with Redis and Kafka
        params = ShardedClient.connect(settings.param_server_addrs, settings.ps_token)
        step = TrainingStep(OnlineTrainer(params, registry=REGISTRY), reader=FeatureReader(client))
        recovery = Recovery(step, joiner, KafkaRangeReader(settings.kafka))
    return BatchPipeline(writer, joiner, step, recovery)
