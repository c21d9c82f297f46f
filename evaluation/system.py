"""The deployed system inside one process: the worker's pipeline and serving over a parameter store.

:class:`TrainedSystem` is what a stream worker runs (:func:`stream_workers.build.build_pipeline`,
the worker's defaults from :mod:`rtrec.settings`) writing to an in-process
:class:`param_server.store.ParamStore` with the production table configs and to one Redis DB.
:class:`ServedModel` is what serving runs (:func:`serving.main.build_serving`, serving's defaults)
over that store and Redis DB; instead of a timer thread it syncs when event time has moved on by
its period, so a replay is deterministic and as fresh, in event time, as the live stack.
"""

from __future__ import annotations

import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import redis
from prometheus_client import CollectorRegistry

from features.config import FeatureConfig
from features.reader import FeatureReader
from param_server.config import DEFAULT_TABLES, EmbeddingConfig
from param_server.store import ParamStore
from rtrec.events import Event
from rtrec.settings import Settings
from rtrec.stack.redis_server import RedisServer
from serving.api import Serving
from serving.index import IndexPlan
from serving.main import build_serving
from serving.ranking import Ask, RankingConfig
from stream_workers.build import build_pipeline
from stream_workers.pipeline import BatchPipeline

__all__ = ["TrainedSystem", "ServedModel", "hashed_tables", "embedded_redis"]


@contextmanager
def embedded_redis(settings: Settings) -> Iterator[str]:
    """A fresh redis-server of the local stack in a temporary folder for one run; yields its URL.

    Stopped (and the folder removed) when the run ends, also on error.
    """
    with tempfile.TemporaryDirectory(prefix="rtrec-eval-") as workdir:
        server = RedisServer(Path(workdir), binary=settings.redis_server_bin)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def hashed_tables(buckets: int, tables: Sequence[EmbeddingConfig] = DEFAULT_TABLES) -> tuple[EmbeddingConfig, ...]:
    """The production tables with every slot folded into ``buckets`` rows (the ``hashed`` variant).

    >>> {t.hash_buckets for t in hashed_tables(10)}
    {10}
    """
    return tuple(replace(t, hash_buckets=buckets) for t in tables)


@dataclass
class TrainedSystem:
    """A worker pipeline training an in-process parameter store; Redis DB ``client`` holds its features."""

    store: ParamStore
    pipeline: BatchPipeline
    client: redis.Redis
    tables: tuple[EmbeddingConfig, ...]

    @classmethod
    def build(cls, settings: Settings, client: redis.Redis, tables: Sequence[EmbeddingConfig] = DEFAULT_TABLES,
              seed: int = 0) -> "TrainedSystem":
        store = ParamStore(tables)
        pipeline = build_pipeline(settings, params=store, redis_client=client, registry=CollectorRegistry(), seed=seed)
        return cls(store, pipeline, client, tuple(tables))

    @property
    def trainer(self) -> Any:
        """The pipeline's :class:`~rtrec.recipe.trainer.OnlineTrainer`."""
        return self.pipeline.train.trainer  # type: ignore[union-attr]

    def process(self, values: Sequence[bytes], train: bool = True) -> None:
        """One slice of raw event JSON, exactly as the worker gets it from Kafka: its features now,
        and (``train``) a training step on every slice staged since the last one."""
        self.pipeline.process(values, train=train)


@dataclass
class ServedModel:
    """One serving instance over a :class:`TrainedSystem`, synced every ``period_s`` of event time.

    ``aligned``: sync only when event time crosses a multiple of ``period_s`` (hourly refreshes of
    the ``batch`` variant) instead of ``period_s`` after the last sync.
    """

    serving: Serving
    period_s: float
    aligned: bool = False
    synced_at: float = field(default=-math.inf)

    @classmethod
    def build(cls, settings: Settings, system: TrainedSystem, period_s: float, aligned: bool = False,
              dense_interval_s: float | None = None) -> "ServedModel":
        """Serving as ``rtrec serve`` wires it, synced every ``period_s`` of the replay clock, dense
        weights every ``dense_interval_s`` of it (None: ``RTREC_DENSE_SYNC_INTERVAL_S``, as live)."""
        if dense_interval_s is None:
            dense_interval_s = settings.dense_sync_interval_s
        reader = FeatureReader(system.client, FeatureConfig.from_settings(settings))  # as the worker's writer
        serving = build_serving(system.store, reader, CollectorRegistry(), system.tables,
                                sync_interval_s=settings.sync_interval_s, dense_interval_s=dense_interval_s,
                                min_sync_interval_s=settings.sync_min_interval_s,
                                ranking=RankingConfig.from_settings(settings),
                                index_plan=IndexPlan(ivf_min_items=settings.index_ivf_min_items,
                                                     nprobe=settings.index_nprobe))
        served = cls(serving, period_s, aligned)
        serving.sync.clock = lambda: served.synced_at  # the replay clock, set before each sync
        return served

    def maybe_sync(self, now: float) -> bool:
        """Sync if ``period_s`` of event time passed (or, aligned, a period boundary); True if it did."""
        if self.aligned:
            due = math.floor(now / self.period_s) != math.floor(self.synced_at / self.period_s) \
                if math.isfinite(self.synced_at) else True
        else:
            due = now - self.synced_at >= self.period_s
        if due:
            self.synced_at = now
            self.serving.sync.sync_once()
        return due

    def recommend(self, events: Sequence[Event], k: int) -> tuple[list[list[str]], int]:
        """The top ``k`` item IDs serving answers for each event's user and context (one batched
        call, as serving batches concurrent requests), and how many answers were cold-start lists."""
        asks = [Ask(e.user_id, k, e.context, ()) for e in events]
        recs = self.serving.recommender.recommend_many(asks)
        return [[name for name, _ in rec.items] for rec in recs], sum(rec.cold_start for rec in recs)
