"""Shared fixtures: the real local stack (Tansu broker + Redis) for integration tests.

The stack is started once per test session on free loopback ports and stopped at the end; tests
that need isolation use their own topic or consumer group (see ``fresh_topic``).
"""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from rtrec.settings import Settings, load_settings
from rtrec.stack.broker import ensure_topics
from rtrec.stack.launcher import LocalStack, StackOptions
from rtrec.stack.redis_cluster import LocalRedisCluster

PARTITIONS = 4


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """A running broker and Redis (no rtrec components), with topics of several partitions."""
    settings = load_settings(topic_partitions=PARTITIONS)
    stack = LocalStack(settings, StackOptions(components=False, simulate=False))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real Redis Cluster of 3 masters (no replicas) from the same redis-server binary, started
    once per test session by the tests that ask for it."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"), nodes=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_stack: LocalStack) -> str:
    return local_stack.info.kafka


@pytest.fixture(scope="session")
def redis_url(local_stack: LocalStack) -> str:
    return local_stack.info.redis


@pytest.fixture
def stack_settings(local_stack: LocalStack) -> Settings:
    """Settings pointing at the session's stack."""
    return load_settings(kafka=local_stack.info.kafka, redis_url=local_stack.info.redis,
                         topic_partitions=PARTITIONS)


@pytest.fixture
def fresh_topic(kafka_bootstrap: str) -> str:
    """A new topic with several partitions, so a test sees only its own events."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka_bootstrap, [name], PARTITIONS)
    return name
