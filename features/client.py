"""Redis clients of the feature store, from a URL: a single Redis, or a Redis Cluster.

``redis://host:port/db`` is one server; ``redis+cluster://host:port`` (any node of the cluster)
is a Redis Cluster, reached through redis-py's cluster client, which routes each command (and each
script call, by its first key) to the node owning its slot and follows the cluster when slots move.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    """True for a ``redis+cluster://`` (or ``rediss+cluster://``) URL.

    >>> is_cluster_url("redis+cluster://127.0.0.1:7000"), is_cluster_url("redis://127.0.0.1:6379/0")
    (True, False)
    """
    return url.startswith(CLUSTER_SCHEMES)


def _plain(url: str) -> str:
    """The URL redis-py's cluster client takes: the scheme without ``+cluster``, no database."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.replace('+cluster', '')}://{rest.split('/', 1)[0]}"


def redis_client(url: str) -> Any:
    """A blocking client of ``url``: ``redis.Redis`` or ``redis.cluster.RedisCluster``."""
    if is_cluster_url(url):
        return RedisCluster.from_url(_plain(url))
    return redis.Redis.from_url(url)


def async_redis_client(url: str, max_connections: int = 64) -> Any:
    """An asyncio client of ``url``: a bounded pool where a caller waits (up to 5 s) for a free
    connection instead of failing when many are in flight; on a cluster, a pool per node."""
    if is_cluster_url(url):
        return AsyncRedisCluster.from_url(_plain(url), max_connections=max_connections)
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5)
    return redis.asyncio.Redis(connection_pool=pool)


def is_cluster_client(client: Any) -> bool:
    """True if ``client`` talks to a Redis Cluster."""
    return isinstance(client, (RedisCluster, AsyncRedisCluster))
