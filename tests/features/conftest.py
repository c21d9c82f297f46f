"""The feature store's suite runs against three deployments of the same code: one Redis with one
shard (the default), one Redis with three shards (readers merge partial sums), and a real Redis
Cluster of three masters with three shards, one per master (every script routed by its hash tag)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from features.client import redis_client
from features.config import FeatureConfig


@dataclass(frozen=True)
class FeatureRedis:
    """Where a test's feature store lives: a client and the shard settings every config takes."""

    name: str
    client: Any
    shards: int
    hash_tags: bool

    def config(self, **settings: Any) -> FeatureConfig:
        """A FeatureConfig of this deployment, under a fresh prefix unless one is given."""
        settings.setdefault("prefix", f"t{uuid.uuid4().hex[:8]}:")
        return FeatureConfig(shards=self.shards, hash_tags=self.hash_tags, **settings)


@pytest.fixture(params=["single", "sharded", "cluster"])
def feature_redis(request: pytest.FixtureRequest, redis_url: str) -> FeatureRedis:
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return FeatureRedis("cluster", redis_client(cluster.url), shards=3, hash_tags=True)
    client = redis.Redis.from_url(redis_url)
    return FeatureRedis(request.param, client, shards=1 if request.param == "single" else 3, hash_tags=False)
