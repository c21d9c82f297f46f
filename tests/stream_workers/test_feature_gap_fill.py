"""A worker's batches carry each message's offset to the feature store; when Redis restarted behind
the consumer (here: every key restored as it was two batches ago), the next batch re-applies the gap
from the real Kafka topic (the reader recovery uses) and features end as in an uninterrupted run."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from features.config import FeatureConfig
from features.writer import FeatureWriter
from producers.client import EventProducer
from rtrec.events import Event
from rtrec.recipe.joiner import Joiner
from stream_workers.batch_frames import decode_batch_request, encode_request
from stream_workers.pipeline import BatchPipeline
from stream_workers.recovery import FeatureGapFill, KafkaRangeReader
from tests.features.test_applied_offsets import WINDOWS, same_features

pytestmark = pytest.mark.integration


def test_message_offsets_travel_to_the_pipeline_process_in_a_frame() -> None:
    request = decode_batch_request(encode_request([b"a", None], {"actions": {1: 9}}, {"actions": {1: 7}}, [1, 1],
                                                  message_offsets=[7, 8]))
    assert request.message_offsets == [7, 8] and request.partitions == [1, 1]
    assert decode_batch_request(encode_request([b"a"], None)).message_offsets is None


def test_a_worker_reapplies_from_kafka_what_a_restarted_redis_lost(kafka_bootstrap: str, redis_url: str,
                                                                   fresh_topic: str) -> None:
    t0 = time.time() - 3600.0  # recent: the broker's retention goes by record time
    # 40 s of events: a gap re-applied after later events of the same item (another partition's)
    # still lands in its window's ring of buckets (the shortest ring here is 60 s), as it does when
    # a Redis restart loses a second and the next batch re-applies it
    events = [Event(f"g{k}", f"u{k % 7}", f"i{k % 11}", "click" if k % 3 else "impression", t0 + 0.1 * k,
                    item={"category": f"c{k % 11 % 2}"}) for k in range(400)]
    with EventProducer(kafka_bootstrap, fresh_topic) as producer:
        producer.send_many(events[:10])
        producer.send_many(events[10:])
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(fresh_topic, p) for p in sorted(consumer.partitions_for_topic(fresh_topic))])
    consumer.seek_to_beginning()
    messages: list[tuple[int, int, bytes]] = []  # (partition, offset, value) as the worker's consumer sees them
    deadline = time.monotonic() + 60  # (end offsets are not asked: Tansu's ListOffsets may answer stale values)
    while len(messages) < len(events):
        assert time.monotonic() < deadline, len(messages)
        for tp, records in consumer.poll(timeout_ms=500).items():
            messages += [(tp.partition, r.offset, r.value) for r in records]
    consumer.close()
    reader = KafkaRangeReader(kafka_bootstrap, timeout_s=30)
    p, o, v = messages[-1]
    assert reader.read_records({(fresh_topic, p): (o, o + 1)}) == {(fresh_topic, p): [(o, v)]}
    # the consumer's batches: offsets [lo, hi) of every partition
    cuts = [0, 15, 30, 50, 70, 120]

    def batch(lo: int, hi: int):
        part = [(p, o, v) for p, o, v in messages if lo <= o < hi]
        starts, nexts = {}, {}
        for p, o, _ in part:
            starts[p] = min(starts.get(p, o), o)
            nexts[p] = max(nexts.get(p, 0), o + 1)
        return ([v for _, _, v in part], {fresh_topic: nexts}, {fresh_topic: starts}, [p for p, _, _ in part],
                [o for _, o, _ in part])

    def pipeline() -> BatchPipeline:
        writer = FeatureWriter(redis.Redis.from_url(redis_url),
                               FeatureConfig(windows=WINDOWS, prefix=f"t{uuid.uuid4().hex[:8]}:"))
        return BatchPipeline(writer, Joiner(), gap_fill=FeatureGapFill(writer, reader))

    uninterrupted, restarted = pipeline(), pipeline()
    for lo, hi in zip(cuts, cuts[1:]):
        values, nexts, starts, partitions, offsets = batch(lo, hi)
        uninterrupted.process(values, nexts, starts, partitions, message_offsets=offsets)
    client, prefix = restarted.writer.client, restarted.writer.config.prefix
    for n, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        if n == 2:
            dumps = {k: client.dump(k) for k in client.scan_iter(match=prefix + "*")}
        if n == 4:  # Redis restarts from a state without batches 2 and 3
            client.delete(*client.scan_iter(match=prefix + "*"))
            for k, v in dumps.items():
                client.restore(k, 0, v)
        values, nexts, starts, partitions, offsets = batch(lo, hi)
        result = restarted.process(values, nexts, starts, partitions, message_offsets=offsets)
        assert result.features.duplicates == 0
        again = restarted.process(values, nexts, starts, partitions, message_offsets=offsets, attempt=1)
        assert (again.features.applied, again.features.duplicates) == (0, len(values))  # a redelivery
    # a partition without messages after the restart waits for the next assignment report
    assert restarted.gap_fill.reapplied < len([m for m in messages if 30 <= m[1] < 70])
    assert restarted.reapply_lost([(fresh_topic, p) for p in range(4)]) > 0
    assert restarted.gap_fill.reapplied == len([m for m in messages if 30 <= m[1] < 70])
    assert restarted.reapply_lost() == 0
    assert restarted.writer.applied_offsets() == uninterrupted.writer.applied_offsets()
    assert same_features(restarted.writer, uninterrupted.writer)
