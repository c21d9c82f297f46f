"""The local stack is real: a Kafka-protocol broker and Redis answering over loopback sockets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer

from producers.client import EventProducer
from rtrec.errors import DeliveryError, InvalidEvent
from rtrec.events import Event
from rtrec.stack.broker import Broker, ensure_topics
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration


def test_redis_is_a_real_server_on_loopback(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("rtrec:test:key", "v", ex=10)
    assert client.get("rtrec:test:key") == b"v"
    assert redis_url.startswith("redis://127.0.0.1:")
    assert client.info("server")["redis_version"]


def test_topics_are_created_with_several_partitions(kafka_bootstrap: str) -> None:
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert len(consumer.partitions_for_topic("actions")) == 4
        assert len(consumer.partitions_for_topic("actions.dlq")) == 4
    finally:
        consumer.close()


def test_produced_events_come_back_keyed_by_user_with_one_user_on_one_partition(
        kafka_bootstrap: str, fresh_topic: str) -> None:
    events = [Event(f"e{n}", f"u{n % 7}", f"i{n}", "click", 1.7e9 + n) for n in range(300)]
    with EventProducer(kafka_bootstrap, fresh_topic) as producer:
        assert producer.send_many(events) == 300
    got = consume_all(kafka_bootstrap, fresh_topic, 300)
    assert sorted(m["event_id"] for m in got) == sorted(e.event_id for e in events)
    partitions_per_user: dict[str, set[int]] = {}
    for m in got:
        assert m["key"] == m["user_id"]
        partitions_per_user.setdefault(m["user_id"], set()).add(m["partition"])
    assert all(len(p) == 1 for p in partitions_per_user.values())
    assert len({p for ps in partitions_per_user.values() for p in ps}) > 1  # spread over partitions


def test_send_dict_refuses_an_invalid_event_before_it_reaches_kafka(kafka_bootstrap: str, fresh_topic: str) -> None:
    with EventProducer(kafka_bootstrap, fresh_topic) as producer:
        with pytest.raises(InvalidEvent, match="missing field: ts"):
            producer.send_dict({"event_id": "e", "user_id": "u", "item_id": "i", "action": "click"})
        assert producer.sent == 0


def test_delivery_failure_is_raised_from_flush_not_lost(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    broker.start()
    try:
        ensure_topics(broker.bootstrap, ["t"], 1)
        producer = EventProducer(broker.bootstrap, "t", delivery_timeout_ms=3_000)
        producer.send(Event("e0", "u", "i", "click", 1.7e9))
        producer.flush()
    finally:
        broker.stop()
    producer.send(Event("e1", "u", "i", "click", 1.7e9))
    start = time.monotonic()
    with pytest.raises(DeliveryError, match="1 events were not delivered"):
        producer.flush(timeout_s=20)
    assert time.monotonic() - start < 15
    producer._producer.close(timeout=1)
