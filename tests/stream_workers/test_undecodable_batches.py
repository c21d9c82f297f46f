"""A record batch the consumer cannot decode is skipped and recorded, never fatal: the fetched
partition's records go on after it, its fetch position moves past it, and the batch (topic,
partition, offsets, reason) reaches the dead-letter topic through the pipeline, which counts it."""

from __future__ import annotations

import struct

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from stream_workers import metrics
from stream_workers.batch_frames import decode_batch_request, encode_request
from stream_workers.pipeline import BatchPipeline
from stream_workers.transport import UNDECODABLE, SkippingPartitionRecords
from stream_workers.validation import UndecodableBatch

LZ4 = 3


def record_batch(base_offset: int, n: int, corrupt: bool = False, fix_crc: bool = True) -> bytes:
    """An lz4 record batch of ``n`` records at ``base_offset``; ``corrupt`` garbles its compressed
    payload (the CRC still matches, as after a producer bug rather than a broken network)."""
    from aiokafka.record._crc32c import crc as crc32c

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=LZ4, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i in range(n):
        builder.append(i, timestamp=1_700_000_000_000, key=b"u1", value=b'{"n": %d}' % i, headers=[])
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base_offset)
    if corrupt:
        for i in range(61, len(buf)):  # 61: the v2 batch header
            buf[i] ^= 0x5A
    if fix_crc:
        struct.pack_into(">I", buf, 17, crc32c(bytes(buf[21:])))
    return bytes(buf)


def read(records: bytes, fetch_offset: int = 0) -> tuple[list[int], SkippingPartitionRecords]:
    partition = SkippingPartitionRecords(TopicPartition("actions", 3), MemoryRecords(records), [], fetch_offset,
                                         None, None, True, 0)
    return [r.offset for r in partition], partition


def test_the_records_after_an_undecodable_batch_are_read_and_the_batch_is_recorded():
    UNDECODABLE.take()
    offsets, partition = read(record_batch(0, 5, corrupt=True) + record_batch(5, 4))
    assert offsets == [5, 6, 7, 8] and partition.next_fetch_offset == 9
    (skipped,) = UNDECODABLE.take()
    assert (skipped.topic, skipped.partition, skipped.first_offset, skipped.next_offset) == ("actions", 3, 0, 5)
    assert "lz4" in skipped.reason.lower() or "Decompression" in skipped.reason


def test_an_undecodable_last_batch_moves_the_fetch_position_past_it():
    """Otherwise the consumer would fetch the same bad batch forever."""
    UNDECODABLE.take()
    offsets, partition = read(record_batch(0, 3) + record_batch(3, 4, corrupt=True))
    assert offsets == [0, 1, 2] and partition.next_fetch_offset == 7
    assert [(b.first_offset, b.next_offset) for b in UNDECODABLE.take()] == [(3, 7)]


def test_a_batch_whose_crc_does_not_match_is_skipped_not_refetched_forever():
    UNDECODABLE.take()
    offsets, partition = read(record_batch(0, 2, corrupt=True, fix_crc=False) + record_batch(2, 2))
    assert offsets == [2, 3] and partition.next_fetch_offset == 4
    (skipped,) = UNDECODABLE.take()
    assert skipped.reason == "ValueError: CRC mismatch"


def test_batches_that_decode_are_read_unchanged():
    UNDECODABLE.take()
    offsets, partition = read(record_batch(10, 3) + record_batch(13, 2), fetch_offset=10)
    assert offsets == [10, 11, 12, 13, 14] and partition.next_fetch_offset == 15
    assert UNDECODABLE.take() == []


def test_a_failed_report_keeps_the_batches_ahead_of_newer_ones():
    UNDECODABLE.take()
    old, new = UndecodableBatch("a", 0, 0, 1, "x"), UndecodableBatch("a", 0, 1, 2, "y")
    UNDECODABLE.add(new)
    UNDECODABLE.put_back([old])
    assert UNDECODABLE.take() == [old, new]


def test_skipped_batches_travel_to_the_pipeline_process_in_a_frame():
    batches = [UndecodableBatch("actions", 1, 40, 45, "lz4: bad block")]
    request = decode_batch_request(encode_request([], None, undecodable=batches))
    assert request.values == [] and request.undecodable == batches


def test_the_pipeline_counts_each_skipped_batch_and_returns_its_dead_letter():
    before = metrics.UNDECODABLE_BATCHES.labels("actions")._value.get()
    letters = BatchPipeline.report_undecodable(pytest.importorskip("types").SimpleNamespace(gap_fill=None),
                                               [UndecodableBatch("actions", 1, 40, 45, "lz4: bad block")])
    assert metrics.UNDECODABLE_BATCHES.labels("actions")._value.get() == before + 1
    assert letters[0].reason.startswith("undecodable record batch: actions/1 offsets 40-44 (5 messages)")
