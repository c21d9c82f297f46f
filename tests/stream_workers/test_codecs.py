"""Every Kafka compression codec decodes in both Kafka clients rtrec consumes with: aiokafka (the
worker's Faust transport) and kafka-python (recovery replays, the demo, tools). Without them a
batch from a producer with ``compression.type`` lz4, zstd or snappy crashes the consumer."""

from __future__ import annotations

import aiokafka.codec
import kafka.codec
import pytest

PAYLOAD = b'{"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "click"}' * 20


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_aiokafka_decodes_every_codec(codec: str):
    assert getattr(aiokafka.codec, f"has_{codec}")(), f"aiokafka cannot decode {codec}"
    encode, decode = getattr(aiokafka.codec, f"{codec}_encode"), getattr(aiokafka.codec, f"{codec}_decode")
    assert bytes(decode(encode(PAYLOAD))) == PAYLOAD


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kafka_python_decodes_every_codec(codec: str):
    assert getattr(kafka.codec, f"has_{codec}")(), f"kafka-python cannot decode {codec}"
    encode, decode = getattr(kafka.codec, f"{codec}_encode"), getattr(kafka.codec, f"{codec}_decode")
    assert bytes(decode(encode(PAYLOAD))) == PAYLOAD
