"""Building the worker's pipeline from settings (used by the pipeline process, ``rtrec eval``, benchmarks, tests)."""

from __future__ import annotations

from typing import Any

import redis
import torch
from prometheus_client import REGISTRY, CollectorRegistry

from features.client import redis_client as features_client
from features.config import FeatureConfig
from features.reader import FeatureReader
from features.writer import FeatureWriter
from param_server.sharding import ShardedClient
from rtrec.settings import Settings
from rtrec.recipe.joiner import Joiner
from rtrec.recipe.negatives import NegativeSampler
from stream_workers.pipeline import BatchPipeline
from stream_workers.recovery import FeatureGapFill, KafkaRangeReader, Recovery
from rtrec.recipe.trainer import OnlineTrainer
from rtrec.recipe.training import TrainingStep


def build_pipeline(settings: Settings, train: bool = True, *, params: Any | None = None,
                   redis_client: redis.Redis | None = None,
                   registry: CollectorRegistry = REGISTRY, seed: int = 0) -> BatchPipeline:
    """The worker's pipeline from settings; ``train=False`` leaves the parameter server out.

    ``params`` (e.g. an in-process :class:`param_server.store.ParamStore`, what ``rtrec eval``
    passes) replaces the shards of ``settings``; the pipeline then has no Kafka recovery, which
    only replays what a restarted remote shard lost. ``redis_client`` replaces
    ``settings.redis_url``; ``registry`` takes the trainer's metrics (one per trainer in a process);
    ``seed`` seeds the initial weights and the negative sampler.
    """
    client = redis_client if redis_client is not None else features_client(settings.redis_url)
    config = FeatureConfig.from_settings(settings)
    writer = FeatureWriter(client, config)
    step = recovery = None
    joiner = Joiner(window_s=settings.join_window_s)
    if train:
        torch.set_num_threads(settings.torch_threads)  # the worker shares its cores with Redis and Kafka
        remote = params is None
        if remote:
            params = ShardedClient.connect(settings.param_server_addrs, settings.ps_token)
        step = TrainingStep(OnlineTrainer(params, registry=registry, seed=seed), reader=FeatureReader(client, config),
                            sampler=NegativeSampler(seed=seed), replay_batches=settings.replay_batches, seed=seed)
        if remote:
            recovery = Recovery(step, joiner, KafkaRangeReader(settings.kafka))
    # batches with offsets (the worker's) re-apply from Kafka what the feature store lost; the
    # reader connects only when a gap is found
    gap_fill = FeatureGapFill(writer, KafkaRangeReader(settings.kafka))
    return BatchPipeline(writer, joiner, step, recovery, settings.max_event_ahead_s, gap_fill)
