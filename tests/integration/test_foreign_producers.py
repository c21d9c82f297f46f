"""Events from a producer rtrec did not write: librdkafka (``confluent-kafka``, what most
applications use) with every Kafka compression codec. Each event must reach the features, and the
worker must not die on a codec (a worker without lz4 support once crashed on the first lz4 batch
and took ``rtrec up`` down with it)."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

from features.reader import FeatureReader
from rtrec.events import encode_event
from tests.integration.test_worker import Pipeline, traffic, wait_until

confluent_kafka = pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.integration

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def produce_with_librdkafka(bootstrap: str, topic: str, events: list, codec: str) -> None:
    """Send ``events`` (keyed by user, as CONTRACT.md asks) in compressed batches of librdkafka's making."""
    producer = confluent_kafka.Producer({
        "bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20,
        "enable.idempotence": False,  # the local broker has no idempotent producer (see broker.py)
        "acks": "all"})
    errors: list = []
    for event in events:
        producer.produce(topic, key=event.user_id.encode(), value=encode_event(event),
                         on_delivery=lambda err, _msg: errors.append(err) if err else None)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages still in librdkafka's queue"
    assert errors == [], errors


@pytest.mark.parametrize("codec", CODECS)
def test_every_event_of_a_librdkafka_producer_reaches_the_features(pipeline: Pipeline, codec: str) -> None:
    worker_pid = next(p for p in pipeline.processes if p.name.startswith("worker")).pid
    run = f"{codec}-{uuid.uuid4().hex[:6]}"
    events = traffic(run, users=4, per_user=10)
    produce_with_librdkafka(pipeline.kafka, pipeline.topic, events, codec)
    reader = FeatureReader(redis.Redis.from_url(pipeline.redis_url))
    users = [f"{run}-u{u}" for u in range(4)]
    wait_until(lambda: all(u["counts"].get("click_24h") == 5 for u in reader.users(users)), timeout_s=60,
               what=f"features of {codec}-compressed events")
    assert all(u["counts"]["impression_24h"] == 10 for u in reader.users(users))
    os.kill(worker_pid, 0)  # the worker that started the module still runs (raises if it died)
    worker = next(p for p in pipeline.processes if p.name.startswith("worker"))
    assert worker.alive(), worker.tail()
