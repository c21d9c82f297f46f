"""The Faust app: wiring only. Consumes topic ``actions`` in micro-batches and hands each batch to
the pipeline (:class:`stream_workers.pipeline.BatchPipeline`, or the same in a child process:
:class:`stream_workers.pipeline_process.PipelineProcess`); dead letters go to ``actions.dlq``.

The stream is cut into slices whose features are written at once and training batches
(:func:`stream_workers.batching.run_slices`). Delivery is at-least-once: messages are
acknowledged only after the pipeline call that trained them returned, so a crash re-delivers
them, and feature updates are idempotent (each message's offset travels with it: the feature
store records how far it applied each partition). The pipeline call runs in a thread so the event
loop keeps fetching meanwhile.

Each call carries the attempt number (the pipeline counts retries where the worker's metrics are
served) and the consumer's current assignment (each worker reports the lag of its own partitions);
a timer also sends the assignment between batches, so a worker that gets no message (stuck, or
left without partitions by a rebalance) still reports the right partitions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Collection, Iterable, Mapping, Protocol, Sequence

import faust
import redis
from faust.exceptions import ConsumerNotStarted

from rtrec.errors import RtrecError
from rtrec.settings import Settings
from stream_workers.batching import run_slices
from stream_workers.pipeline import BatchResult
from stream_workers.transport import UNDECODABLE
from stream_workers.validation import DeadLetter, UndecodableBatch

#: Seconds between retries of a batch whose processing failed (Redis down, parameter server away).
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
#: Seconds between reports of the consumer's assignment to the pipeline (the lag monitor reads every 5 s).
ASSIGNMENT_REPORT_S = 5.0

log = logging.getLogger(__name__)


def broker_urls(bootstrap: str) -> list[str]:
    """``"h1:9092,h2:9092"`` → ``["rtrec://h1:9092", "rtrec://h2:9092"]``: Kafka through the
    aiokafka driver with a short fetch wait (:mod:`stream_workers.transport`)."""
    return [f"rtrec://{b.strip()}" for b in bootstrap.split(",") if b.strip()]


class Pipeline(Protocol):
    def process(self, values: Sequence[bytes | None],
                offsets: Mapping[str, Mapping[int, int]] | None = None,
                starts: Mapping[str, Mapping[int, int]] | None = None,
                partitions: Sequence[int] | None = None, *, attempt: int = 0,
                assignment: Collection[tuple[str, int]] | None = None,
                message_offsets: Sequence[int] | None = None, train: bool = True) -> BatchResult: ...

    def assign(self, assignment: Collection[tuple[str, int]]) -> None: ...

    def report_undecodable(self, batches: Sequence[UndecodableBatch]) -> list[DeadLetter]: ...


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
        async def handle(batch: list, close: bool) -> bool:
            values = [event.message.value for event in batch]
            partitions = [event.message.partition for event in batch] or None  # None: a call that only trains
            await send_undecodable(pipeline, dlq)  # first: a feature-gap fill must know what the consumer skipped
            result = await _process_with_retry(pipeline, values, next_offsets(batch), first_offsets(batch), partitions,
                                               lambda: assigned_partitions(app.consumer.assignment()),
                                               [event.message.offset for event in batch] or None, train=close)
            for letter in result.dead_letters:
                await dlq.send(value=letter.to_json())
            if result.dead_letters:
                log.warning("dead-lettered %d of %d messages; first reason: %s",
                            len(result.dead_letters), len(values), result.dead_letters[0].reason)
            await send_undecodable(pipeline, dlq)
            return result.trained

        manual = stream.noack()  # acknowledged by run_slices once trained
        await run_slices(manual.events(), manual.ack, handle, settings.worker_batch_size,
                         settings.worker_batch_within_s, settings.worker_slice_s)

    @app.timer(ASSIGNMENT_REPORT_S)
    async def report_assignment() -> None:
        await send_assignment(pipeline, lambda: assigned_partitions(app.consumer.assignment()))
        await send_undecodable(pipeline, dlq)  # also when nothing decodable arrives

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


def assigned_partitions(assignment: Iterable) -> list[tuple[str, int]]:
    """The consumer's assignment (Faust ``TP`` tuples) as sorted ``(topic, partition)`` pairs.

    >>> from faust.types import TP
    >>> assigned_partitions({TP("actions", 3), TP("actions", 1)})
    [('actions', 1), ('actions', 3)]
    """
    return sorted((tp.topic, tp.partition) for tp in assignment)


async def send_assignment(pipeline: Pipeline, assignment: Callable[[], list[tuple[str, int]]]) -> None:
    """Hand the current assignment to the pipeline; a failure is logged and left to the next report."""
    try:
        await asyncio.to_thread(pipeline.assign, assignment())
    except (OSError, RtrecError, ConsumerNotStarted) as exc:
        log.warning("could not report the partition assignment to the pipeline (%r); next try in %.0f s",
                    exc, ASSIGNMENT_REPORT_S)


async def send_undecodable(pipeline: Pipeline, dlq: faust.TopicT) -> None:
    """Dead-letter the record batches the consumer skipped (:data:`stream_workers.transport.UNDECODABLE`),
    counted by the pipeline; on failure they wait for the next report."""
    batches = UNDECODABLE.take()
    if not batches:
        return
    try:
        letters = await asyncio.to_thread(pipeline.report_undecodable, batches)
    except (OSError, RtrecError) as exc:
        UNDECODABLE.put_back(batches)
        log.warning("could not report %d undecodable record batches (%r); next try in %.0f s",
                    len(batches), exc, ASSIGNMENT_REPORT_S)
        return
    for letter in letters:
        await dlq.send(value=letter.to_json())


async def _process_with_retry(pipeline: Pipeline, values: list, offsets: dict, starts: dict,
                              partitions: list[int] | None,
                              assignment: Callable[[], list[tuple[str, int]]],
                              message_offsets: list[int] | None = None, train: bool = True) -> BatchResult:
    """Run the pipeline until it succeeds: the batch stays unacknowledged (not lost) meanwhile.

    Every attempt says which one it is (the pipeline counts the retries) and carries the
    assignment read just before it (a rebalance may land during a long outage)."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(pipeline.process, values, offsets, starts, partitions,
                                           attempt=attempt, assignment=assignment(), message_offsets=message_offsets,
                                           train=train)
        except (redis.RedisError, OSError, RtrecError) as exc:
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            log.error("batch of %d failed (%r); retrying in %.1f s", len(values), exc, delay)
            attempt += 1
            await asyncio.sleep(delay)
