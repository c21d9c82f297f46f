"""Redis memory gauges: read at scrape time, never raising, and bounded by a short timeout."""

from __future__ import annotations

import socket
import time

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from features.redis_metrics import RedisMemoryCollector, scrape_client


class FakeRedis:
    """``info(section)`` of redis-py: a reply, or an exception like a Redis that is away."""

    def __init__(self, reply: dict | None = None, error: Exception | None = None) -> None:
        self.reply, self.error, self.sections = reply, error, []

    def info(self, section: str) -> dict:
        self.sections.append(section)
        if self.error is not None:
            raise self.error
        return self.reply or {}


def registry_with(client: object) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RedisMemoryCollector(client))  # type: ignore[arg-type]
    return registry


def test_gauges_carry_used_memory_and_the_limit_read_at_scrape_time() -> None:
    client = FakeRedis({"used_memory": 900, "maxmemory": 1000, "used_memory_rss": 5000})
    registry = registry_with(client)
    assert client.sections == []  # registering describes the metrics without calling Redis
    assert registry.get_sample_value("rtrec_redis_used_memory_bytes") == 900
    assert registry.get_sample_value("rtrec_redis_maxmemory_bytes") == 1000
    client.reply = {"used_memory": 950, "maxmemory": 1000}
    assert registry.get_sample_value("rtrec_redis_used_memory_bytes") == 950
    assert client.sections and set(client.sections) == {"memory"}


def test_no_limit_is_exported_as_zero() -> None:
    registry = registry_with(FakeRedis({"used_memory": 900}))  # a Redis without maxmemory in INFO
    assert registry.get_sample_value("rtrec_redis_maxmemory_bytes") == 0


@pytest.mark.parametrize("error", [redis.ConnectionError("refused"), redis.TimeoutError("slow"), OSError("net")])
def test_a_failed_read_yields_no_gauge_and_counts_the_error_without_raising(error: Exception) -> None:
    registry = registry_with(FakeRedis(error=error))
    text = generate_latest(registry).decode()  # the whole scrape still succeeds
    assert "rtrec_redis_used_memory_bytes " not in text and "rtrec_redis_maxmemory_bytes " not in text
    assert "rtrec_redis_info_errors_total 1.0" in text
    assert registry.get_sample_value("rtrec_redis_info_errors_total") == 2


def test_a_reply_without_used_memory_counts_as_an_error() -> None:
    text = generate_latest(registry_with(FakeRedis({"maxmemory": 1}))).decode()
    assert "rtrec_redis_used_memory_bytes " not in text and "rtrec_redis_maxmemory_bytes " not in text
    assert "rtrec_redis_info_errors_total 1.0" in text


def test_a_silent_server_costs_a_scrape_the_timeout_not_the_socket_default() -> None:
    with socket.socket() as server:  # accepts connections (the backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        worker_client = redis.Redis(host="127.0.0.1", port=port, db=3)  # no timeout: would wait forever
        client = scrape_client(worker_client, timeout_s=0.2)
        assert client.connection_pool is not worker_client.connection_pool
        assert client.connection_pool.connection_kwargs["db"] == 3
        start = time.monotonic()
        text = generate_latest(registry_with(client)).decode()
        assert time.monotonic() - start < 1.0  # one try of 0.2 s: no retries with backoff
        assert "rtrec_redis_used_memory_bytes " not in text and "rtrec_redis_info_errors_total 1.0" in text


@pytest.mark.integration
def test_a_real_redis_reports_its_memory(redis_url: str) -> None:
    registry = registry_with(scrape_client(redis.Redis.from_url(redis_url)))
    assert (registry.get_sample_value("rtrec_redis_used_memory_bytes") or 0) > 0
    assert (registry.get_sample_value("rtrec_redis_maxmemory_bytes") or 0) >= 0
