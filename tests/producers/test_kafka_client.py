"""What the producers' Kafka client needs installed to keep up."""

from __future__ import annotations

from kafka.record import util


def test_kafka_python_checksums_record_batches_in_c() -> None:
    # without the crc32c package kafka-python falls back to a pure-Python CRC-32C, which was 42 % of
    # the impression sender's CPU in benchmarks.serving
    assert util.crc32c_c is not None
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
