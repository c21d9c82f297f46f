"""The Faust app: wiring only. Consumes topic ``actions`` in micro-batches and hands each batch to
the pipeline (:class:`stream_workers.pipeline.BatchPipeline`, or the same in a child process:
:class:`stream_workers.pipeline_process.PipelineProcess`); dead letters go to ``actions.dlq``.

Delivery is at-least-once: ``stream.take_events`` acknowledges a batch's messages only after the
pipeline returned, so a crash re-delivers the batch, and feature updates are idempotent by
event_id. The pipeline call runs in a thread so the event loop keeps fetching meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Mapping, Protocol, Sequence

import faust
import redis

from rtrec.errors import RtrecError
from rtrec.settings import Settings
from stream_workers import metrics
from stream_workers.pipeline import BatchResult

#: Seconds between retries of a batch whose processing failed (Redis down, parameter server away).
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)

log = logging.getLogger(__name__)


def broker_urls(bootstrap: str) -> list[str]:
    """``"h1:9092,h2:9092"`` → ``["rtrec://h1:9092", "rtrec://h2:9092"]``: Kafka through the
    aiokafka driver with a short fetch wait (:mod:`stream_workers.transport`)."""
    return [f"rtrec://{b.strip()}" for b in bootstrap.split(",") if b.strip()]


class Pipeline(Protocol):
    def process(self, values: Sequence[bytes | None],
                offsets: Mapping[str, Mapping[int, int]] | None = None,
                starts: Mapping[str, Mapping[int, int]] | None = None,
                partitions: Sequence[int] | None = None) -> BatchResult: ...


def create_app(settings: Settings, pipeline: Pipeline) -> faust.App:
    """A Faust app whose one agent runs ``pipeline`` over micro-batches of raw messages."""
    app = faust.App(
        settings.worker_group,
        broker=broker_urls(settings.kafka),
        store="memory://",
        datadir=str(settings.data_dir),
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        topic_allow_declare=False,  # rtrec creates its topics; a worker never reshapes them
        consumer_auto_offset_reset="earliest",
        broker_commit_every=settings.worker_batch_size,
        broker_commit_interval=1.0,
        producer_acks=1,
        broker_rebalance_timeout=5.0,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
    )
    actions = app.topic(settings.actions_topic, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")

    @app.agent(actions, name="process")
    async def process(stream: faust.Stream) -> None:
        async for batch in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_within_s):
            values = [event.message.value for event in batch]
            partitions = [event.message.partition for event in batch]
            result = await _process_with_retry(pipeline, values, next_offsets(batch), first_offsets(batch), partitions)
            for letter in result.dead_letters:
                await dlq.send(value=letter.to_json())
            if result.dead_letters:
                log.warning("dead-lettered %d of %d messages; first reason: %s",
                            len(result.dead_letters), len(values), result.dead_letters[0].reason)

    return app


def next_offsets(batch: list) -> dict[str, dict[int, int]]:
    """Topic → partition → the offset after the last message of ``batch`` (Kafka's commit convention)."""
    out: dict[str, dict[int, int]] = {}
    for event in batch:
        message = event.message
        partitions = out.setdefault(message.topic, {})
        partitions[message.partition] = max(partitions.get(message.partition, 0), message.offset + 1)
    return out


def first_offsets(batch: list) -> dict[str, dict[int, int]]:
    """Topic → partition → the offset of the first message of ``batch`` (where recovery replays up to)."""
    out: dict[str, dict[int, int]] = {}
    for event in batch:
        message = event.message
        partitions = out.setdefault(message.topic, {})
        partitions[message.partition] = min(partitions.get(message.partition, message.offset), message.offset)
    return out


async def _process_with_retry(pipeline: Pipeline, values: list, offsets: dict, starts: dict,
                              partitions: list[int]) -> BatchResult:
    """Run the pipeline until it succeeds: the batch stays unacknowledged (not lost) meanwhile."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(pipeline.process, values, offsets, starts, partitions)
        except (redis.RedisError, OSError, RtrecError) as exc:
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            metrics.BATCH_RETRIES.inc()
            log.error("batch of %d failed (%r); retrying in %.1f s", len(values), exc, delay)
            attempt += 1
            await asyncio.sleep(delay)
