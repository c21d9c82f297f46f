"""One micro-batch through the worker: validate → features → join → train.

Plain synchronous code with no Kafka in it, so it is tested without a broker; the Faust app
(``stream_workers/app.py``) only feeds it batches and ships the dead letters.

The trainer's example batch (with the point-in-time inputs read before this batch is applied,
:mod:`rtrec.recipe.training`) is prepared first; then the Redis write runs in a helper thread
while the trainer works: the feature script executes inside Redis (another process, another
core), so the two overlap instead of adding up.

A batch that fails (Redis or a parameter-server shard away) is retried by the caller. The joiner
and the point-in-time reads change state, so they run once per batch: the pipeline keeps the
batch's examples until the batch succeeds, and a retry of the same batch (same offsets, or the
same bytes) trains on exactly those examples, skips a training step that already succeeded, and
re-applies the feature write (idempotent by ``event_id``). A retried batch therefore yields
exactly the examples of a batch that succeeds at once. The caller numbers its attempts, and
retries are counted here (``rtrec_worker_batch_retries_total``), in the process that serves the
worker's metrics.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from contextlib import nullcontext
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

from features.writer import FeatureWriter, WriteResult
from rtrec.events import Event, action_label
from rtrec.recipe.joiner import Joiner, LabelledExample
from rtrec.settings import DEFAULT_MAX_EVENT_AHEAD_S
from stream_workers import metrics
from stream_workers.validation import DeadLetter, UndecodableBatch, split_batch

log = logging.getLogger(__name__)

class Trainer(Protocol):
    """What the pipeline trains with (:class:`rtrec.recipe.training.TrainingStep`)."""

    def snapshot(self, events: list[Event]) -> list[Any]: ...

    def prepare(self, examples: list[LabelledExample]) -> Any: ...

    def fit(self, batch: Any, offsets: Mapping[str, Mapping[int, int]] | None) -> object: ...


@dataclass
class _Attempt:
    """A batch's joined examples and training batch, kept until the batch succeeds (retries)."""

    key: object
    examples: list[LabelledExample]
    batch: Any
    trained: bool = False


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    events: int
    dead_letters: list[DeadLetter]
    features: WriteResult
    examples: int


class BatchPipeline:
    """Processes consumed message values; ``train`` receives the examples the joiner completed."""

    def __init__(self, writer: FeatureWriter, joiner: Joiner, train: Trainer | None = None,
                 recovery: Any | None = None, max_event_ahead_s: float = DEFAULT_MAX_EVENT_AHEAD_S) -> None:
        self.writer = writer
        self.max_event_ahead_s = max_event_ahead_s  # later events are dead-lettered (RTREC_MAX_EVENT_AHEAD_S)
        self.joiner = joiner
        self.train = train
        self.recovery = recovery  # stream_workers.recovery.Recovery: replays what a restarted shard lost
        self._redis_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-writer")
        self._attempt: _Attempt | None = None
        #: Called with each batch's consumer assignment (the worker's lag monitor takes it).
        self.on_assignment: Callable[[Collection[tuple[str, int]]], None] | None = None

    def process(self, values: Sequence[bytes | None],
                offsets: Mapping[str, Mapping[int, int]] | None = None,
                starts: Mapping[str, Mapping[int, int]] | None = None,
                partitions: Sequence[int] | None = None, *, attempt: int = 0,
                assignment: Collection[tuple[str, int]] | None = None) -> BatchResult:
        """Apply a batch; raises only if Redis or training fail (then the batch is not committed).

        ``offsets`` (topic → partition → next offset) are what this batch brings the consumer to;
        they travel with the gradient push so parameter-server snapshots record them. ``starts``
        (the batch's first offsets) tell recovery where a replay for a restarted shard ends.
        ``partitions[n]`` is the Kafka partition of ``values[n]`` (the joiner keeps a watermark per
        partition); None means one partition. ``attempt`` numbers the caller's tries at this batch
        (0 = first; later ones count as retries here, where the worker's metrics are served).
        ``assignment`` (the ``(topic, partition)`` pairs the consumer owns now) goes to
        :attr:`on_assignment` before the batch runs, so a failing batch still reports it.
        """
        if assignment is not None:
            self.assign(assignment)
        if attempt > 0:
            metrics.BATCH_RETRIES.inc()
        start = time.perf_counter()
        events, event_partitions, dead = _split(values, partitions, self.max_event_ahead_s)
        counts = _count_actions(events)
        for action, n in counts.items():
            metrics.EVENTS_CONSUMED.labels(action).inc(n)
        try:
            return self._process(values, events, event_partitions, dead, counts, offsets, starts, start)
        except Exception:
            metrics.BATCH_FAILURES.inc()  # the caller logs it and retries the batch
            raise

    def report_undecodable(self, batches: Sequence[UndecodableBatch]) -> list[DeadLetter]:
        """Count record batches the consumer skipped; their dead letters, for the caller to send."""
        for batch in batches:
            metrics.UNDECODABLE_BATCHES.labels(batch.topic).inc()
        return [batch.dead_letter() for batch in batches]

    def assign(self, assignment: Collection[tuple[str, int]]) -> None:
        """The ``(topic, partition)`` pairs the consumer owns now, also between batches (a worker
        that gets no message still owns partitions, and their lag must show)."""
        if self.on_assignment is not None:
            self.on_assignment(assignment)

    def _process(self, values: Sequence[bytes | None], events: list[Event], partitions: list[int],
                 dead: list[DeadLetter], counts: Mapping[str, int], offsets: Mapping[str, Mapping[int, int]] | None,
                 starts: Mapping[str, Mapping[int, int]] | None, start: float) -> BatchResult:
        replayed = self.recovery.before_batch(offsets, starts) if self.recovery is not None else frozenset()
        attempt = self._join(_batch_key(values, starts), events, partitions)
        writing = self._redis_thread.submit(self.writer.write_many, events)
        try:
            if attempt.batch is not None and not attempt.trained:
                with self.recovery.pushing_to_all_but(replayed) if replayed else nullcontext():
                    self.train.fit(attempt.batch, offsets)  # type: ignore[union-attr]
                attempt.trained = True
        finally:
            written = writing.result()  # re-raises a Redis error: the batch is then retried
        self._attempt = None
        self._observe(events, counts, dead, attempt.examples, time.perf_counter() - start, len(values))
        metrics.JOINER_PENDING.set(self.joiner.pending)
        return BatchResult(len(events), dead, written, len(attempt.examples))

    def _join(self, key: object, events: list[Event], partitions: list[int]) -> _Attempt:
        """The batch's examples: joined now, or kept from a failed attempt at the same batch."""
        if self._attempt is not None and self._attempt.key == key:
            log.info("retrying a batch of %d events with the examples of its first attempt (trained: %s)",
                     len(events), self._attempt.trained)
            return self._attempt
        if self._attempt is not None:
            log.warning("a failed batch was not retried (another batch came instead): its %d examples are dropped",
                        len(self._attempt.examples))
        inputs = self.train.snapshot(events) if self.train is not None else None  # before the batch is applied
        examples = self.joiner.add_many(events, partitions, inputs)
        batch = self.train.prepare(examples) if self.train is not None else None
        self._attempt = _Attempt(key, examples, batch)
        return self._attempt

    @staticmethod
    def _observe(events: list[Event], counts: Mapping[str, int], dead: list[DeadLetter],
                 examples: list[LabelledExample], seconds: float, size: int) -> None:
        for action, n in counts.items():
            metrics.EVENTS_PROCESSED.labels(action).inc(n)
        for letter in dead:  # dead letters are rare: a second look at each is cheap
            metrics.EVENTS_DEAD_LETTERED.labels(metrics.dead_letter_action(letter.raw)).inc()
        # one count per labelled impression or action: a "final" example is the second of an
        # impression already counted by its click
        kinds = [x.kind for x in examples]
        metrics.EXAMPLES.labels("positive").inc(kinds.count("click") + kinds.count("positive_only"))
        metrics.EXAMPLES.labels("negative").inc(kinds.count("negative"))
        metrics.BATCH_SIZE.observe(size)
        metrics.BATCH_SECONDS.observe(seconds)
        if events:
            metrics.EVENT_LAG.set(time.time() - max(e.ts for e in events))


def _count_actions(events: Sequence[Event]) -> dict[str, int]:
    """Events per action label (bounded: unknown actions count as ``other``)."""
    counts: dict[str, int] = {}
    for e in events:  # one dict update per event; the JSON parse before it costs far more
        label = action_label(e.action)
        counts[label] = counts.get(label, 0) + 1
    return counts


def _split(values: Sequence[bytes | None], partitions: Sequence[int] | None,
           max_ahead_s: float) -> tuple[list[Event], list[int], list[DeadLetter]]:
    """Valid events with their partitions, and dead letters; events keep their order per partition."""
    now = time.time()  # the worker's clock, once per batch
    if partitions is None:
        events, dead = split_batch(values, now, max_ahead_s)
        return events, [0] * len(events), dead
    if len(partitions) != len(values):
        raise ValueError(f"{len(partitions)} partitions for {len(values)} messages")
    by_partition: dict[int, list[bytes | None]] = {}
    for value, partition in zip(values, partitions):
        by_partition.setdefault(int(partition), []).append(value)
    events, event_partitions, dead = [], [], []
    for partition, part in by_partition.items():
        valid, invalid = split_batch(part, now, max_ahead_s)
        events += valid
        event_partitions += [partition] * len(valid)
        dead += invalid
    return events, event_partitions, dead


def _batch_key(values: Sequence[bytes | None], starts: Mapping[str, Mapping[int, int]] | None) -> object:
    """What identifies a batch across retries: its first offsets, else its bytes."""
    if starts:
        return tuple(sorted((t, p, o) for t, parts in starts.items() for p, o in parts.items()))
    return hash(tuple(values))
