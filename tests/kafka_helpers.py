"""Reading a topic back in tests without a consumer group (a group join takes ~20 s on Tansu)."""

from __future__ import annotations

import json
import time

from kafka import KafkaConsumer, TopicPartition


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[dict]:
    """Every message of ``topic`` from the start, decoded as JSON, once ``expected`` have arrived."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out += [{"key": r.key.decode() if r.key else None, "partition": r.partition,
                         **json.loads(r.value)} for r in records]
        return out
    finally:
        consumer.close()
