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


def send_poison_batch(bootstrap: str, topic: str, partition: int) -> None:
    """One lz4 record batch whose compressed payload is garbage (CRC intact), as a buggy producer
    could write it: the broker stores it as it is, and only a consumer finds out."""
    import asyncio
    import struct

    from aiokafka import AIOKafkaProducer
    from aiokafka.record._crc32c import crc as crc32c

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="lz4", acks=1)
        await producer.start()
        try:
            batch = producer.create_batch()
            for n in range(5):
                batch.append(key=b"poison", value=b'{"n": %d}' % n, timestamp=None)
            buf = bytearray(batch._build())  # the built v2 batch; its 61-byte header stays readable
            for i in range(61, len(buf)):
                buf[i] ^= 0x5A
            struct.pack_into(">I", buf, 17, crc32c(bytes(buf[21:])))
            batch._buffer = bytes(buf)
            await (await producer.send_batch(batch, topic, partition=partition))
        finally:
            await producer.stop()

    asyncio.run(send())


def test_an_undecodable_batch_is_dead_lettered_and_the_partition_goes_on(pipeline: Pipeline) -> None:
    from rtrec.metrics_http import scrape
    from tests.kafka_helpers import consume_all

    worker = next(p for p in pipeline.processes if p.name.startswith("worker"))
    for partition in range(4):  # whichever partition the next events land on has a poison batch first
        send_poison_batch(pipeline.kafka, pipeline.topic, partition)
    run = f"after-poison-{uuid.uuid4().hex[:6]}"
    produce_with_librdkafka(pipeline.kafka, pipeline.topic, traffic(run, users=4, per_user=10), "lz4")
    reader = FeatureReader(redis.Redis.from_url(pipeline.redis_url))
    users = [f"{run}-u{u}" for u in range(4)]
    wait_until(lambda: all(u["counts"].get("click_24h") == 5 for u in reader.users(users)), timeout_s=60,
               what="features of the events after the poison batches")
    letters = [d for d in consume_all(pipeline.kafka, pipeline.dlq, 4, timeout_s=30)
               if d["reason"].startswith("undecodable record batch")]
    assert sorted(int(d["reason"].split("/")[1].split(" ")[0]) for d in letters) == [0, 1, 2, 3]
    assert all("(5 messages) skipped" in d["reason"] and d["raw"] == "" for d in letters)
    wait_until(lambda: scrape(pipeline.workers[0]["metrics"]).get("rtrec_worker_undecodable_batches_total", 0) >= 4,
               timeout_s=20, what="the undecodable-batch counter")
    assert worker.alive(), worker.tail()
