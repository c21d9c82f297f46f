"""The feature store's memory as Prometheus gauges, read from Redis (``INFO memory``) at scrape time.

Redis refuses writes (or evicts features, depending on its ``maxmemory-policy``) once
``used_memory`` reaches ``maxmemory``; these gauges let an alert fire before that. A scrape never
raises and never waits long: the collector talks to Redis through a client of its own with a
short timeout, and a failed read yields no gauges and counts ``rtrec_redis_info_errors_total``.

>>> class FakeRedis:
...     def info(self, section):
...         return {"used_memory": 1_048_576, "maxmemory": 0}
>>> [(m.name, m.samples[0].value) for m in RedisMemoryCollector(FakeRedis()).collect()]
[('rtrec_redis_used_memory_bytes', 1048576.0), ('rtrec_redis_maxmemory_bytes', 0.0), ('rtrec_redis_info_errors', 0.0)]
"""

from __future__ import annotations

import logging
from typing import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from features.client import is_cluster_client

__all__ = ["RedisMemoryCollector", "scrape_client", "SCRAPE_TIMEOUT_S"]

log = logging.getLogger(__name__)

#: Longest a scrape waits for Redis (Prometheus's own scrape timeout is 4 s in deploy/prometheus).
SCRAPE_TIMEOUT_S = 0.5


def scrape_client(client: redis.Redis, timeout_s: float = SCRAPE_TIMEOUT_S) -> redis.Redis:
    """A client to the same Redis as ``client`` with its own connection pool and ``timeout_s``
    timeouts, so a scrape neither waits on the worker's batch writes nor hangs on a dead server
    (on a Redis Cluster, a cluster client of its own)."""
    if is_cluster_client(client):
        node = client.get_default_node()
        return RedisCluster(host=node.host, port=node.port, socket_timeout=timeout_s,
                            socket_connect_timeout=timeout_s)
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
              "retry": Retry(NoBackoff(), 0)}  # redis-py retries 3 times with backoff by default: seconds
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


class RedisMemoryCollector(Collector):
    """``rtrec_redis_used_memory_bytes`` and ``rtrec_redis_maxmemory_bytes`` (0 = no limit).

    ``client`` needs only ``info(section)``; pass :func:`scrape_client` of the worker's client.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.errors = 0

    def describe(self) -> Iterator[Metric]:
        """The families without values: registering the collector does not call Redis."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        used, limit, errors = self._families()
        try:
            infos = self._memory_infos()
            used.add_metric([], float(sum(i["used_memory"] for i in infos)))
            limit.add_metric([], float(sum(i.get("maxmemory", 0) for i in infos)))
        except (redis.RedisError, OSError, KeyError, TypeError, ValueError) as exc:
            self.errors += 1  # a scrape must not fail: count, log, export the error count only
            log.warning("could not read Redis memory (INFO memory): %r", exc)
            errors.add_metric([], float(self.errors))
            yield errors
            return
        errors.add_metric([], float(self.errors))
        yield from (used, limit, errors)

    def _memory_infos(self) -> list[dict]:
        """INFO memory of the Redis, or of every master of a cluster (their sums are exported)."""
        if is_cluster_client(self.client):
            return list(self.client.info("memory", target_nodes=RedisCluster.PRIMARIES).values())
        return [self.client.info("memory")]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (GaugeMetricFamily("rtrec_redis_used_memory_bytes",
                                  "Bytes Redis has allocated (INFO memory used_memory), read at scrape time."),
                GaugeMetricFamily("rtrec_redis_maxmemory_bytes",
                                  "Redis's maxmemory limit in bytes; 0 = no limit."),
                CounterMetricFamily("rtrec_redis_info_errors",
                                    "Scrapes whose INFO memory call to Redis failed (the two gauges are then absent)."))
