"""One micro-batch through the worker: validate → features → join → train.

A call may also only *stage* its events (``train=False``): they are validated, their
point-in-time inputs read, joined and written to the feature store at once, and their examples
kept for the next call that trains. The worker stages small slices as they arrive (features
fresh within tens of milliseconds) and trains once per training window
(:func:`stream_workers.batching.run_slices`), so fresher features cost no extra training steps.

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
re-applies the feature write (idempotent: by Kafka offset when the batch brings its messages'
offsets, else by ``event_id``). With offsets, a feature store that lost writes (Redis restarted
behind the consumer) gets the gap re-applied from Kafka first (:class:`stream_workers.recovery.FeatureGapFill`). A retried batch therefore yields
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

from features.writer import FeatureWriter, LogPosition, WriteResult
from rtrec.events import Event, action_label
from rtrec.recipe.joiner import Joiner, LabelledExample
from rtrec.settings import DEFAULT_MAX_EVENT_AHEAD_S
from stream_workers import metrics
from stream_workers.validation import DeadLetter, UndecodableBatch, split_batch, split_tagged

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
    batch: Any = None
    prepared: bool = False
    trained: bool = False


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    events: int
    dead_letters: list[DeadLetter]
    features: WriteResult
    examples: int
    #: this call trained every example staged so far (False: they wait for a call that trains)
    trained: bool = True


class BatchPipeline:
    """Processes consumed message values; ``train`` receives the examples the joiner completed."""

    def __init__(self, writer: FeatureWriter, joiner: Joiner, train: Trainer | None = None,
                 recovery: Any | None = None, max_event_ahead_s: float = DEFAULT_MAX_EVENT_AHEAD_S,
                 gap_fill: Any | None = None) -> None:
        self.writer = writer
        #: stream_workers.recovery.FeatureGapFill: writes batches with offsets, re-applying what the store lost
        self.gap_fill = gap_fill
        self.max_event_ahead_s = max_event_ahead_s  # later events are dead-lettered (RTREC_MAX_EVENT_AHEAD_S)
        self.joiner = joiner
        self.train = train
        self.recovery = recovery  # stream_workers.recovery.Recovery: replays what a restarted shard lost
        self._redis_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-writer")
        self._attempt: _Attempt | None = None
        #: examples of the calls that only staged, and the offsets they bring the consumer to
        self._staged: list[LabelledExample] = []
        self._staged_ends: dict[str, dict[int, int]] = {}
        #: next offset per (topic, partition) of the batches whose features were written here
        self.consumed: dict[tuple[str, int], int] = {}
        #: Called with each batch's consumer assignment (the worker's lag monitor takes it).
        self.on_assignment: Callable[[Collection[tuple[str, int]]], None] | None = None

    def process(self, values: Sequence[bytes | None],
                offsets: Mapping[str, Mapping[int, int]] | None = None,
                starts: Mapping[str, Mapping[int, int]] | None = None,
                partitions: Sequence[int] | None = None, *, attempt: int = 0,
                assignment: Collection[tuple[str, int]] | None = None,
                message_offsets: Sequence[int] | None = None, train: bool = True) -> BatchResult:
        """Apply a batch; raises only if Redis or training fail (then the batch is not committed).

        ``offsets`` (topic → partition → next offset) are what this batch brings the consumer to;
        they travel with the gradient push so parameter-server snapshots record them. ``starts``
        (the batch's first offsets) tell recovery where a replay for a restarted shard ends.
        ``partitions[n]`` is the Kafka partition of ``values[n]`` (the joiner keeps a watermark per
        partition); None means one partition. ``attempt`` numbers the caller's tries at this batch
        (0 = first; later ones count as retries here, where the worker's metrics are served).
        ``assignment`` (the ``(topic, partition)`` pairs the consumer owns now) goes to
        :attr:`on_assignment` before the batch runs, so a failing batch still reports it.
        ``message_offsets[n]`` is the Kafka offset of ``values[n]`` (with ``partitions``, and the one
        topic of ``offsets``): the feature store then deduplicates by offset and records how far it
        applied each partition; without them it deduplicates by ``event_id`` only.
        ``train=False`` only stages the batch: its features are written and its examples kept
        for the next call that trains (which may have no messages). A call trains anyway when
        recovery replayed the events so far into a restarted shard (the result says
        ``trained``); the caller commits staged messages only once a call has trained them.
        """
        if assignment is not None:
            self.assign(assignment)
        if attempt > 0:
            metrics.BATCH_RETRIES.inc()
        start = time.perf_counter()
        positions = _positions(partitions, message_offsets, offsets, starts, len(values))
        events, event_positions, dead = _split(values, positions, self.max_event_ahead_s)
        event_partitions = [p for _, p, _ in event_positions] if partitions is not None else [0] * len(events)
        log_write = None
        if message_offsets is not None:
            log_write = ([tuple(p) for p in event_positions], _ranges(starts, offsets))
        counts = _count_actions(events)
        for action, n in counts.items():
            metrics.EVENTS_CONSUMED.labels(action).inc(n)
        try:
            return self._process(values, events, event_partitions, dead, counts, offsets, starts, start, log_write,
                                 train)
        except Exception:
            metrics.BATCH_FAILURES.inc()  # the caller logs it and retries the batch
            raise

    def report_undecodable(self, batches: Sequence[UndecodableBatch]) -> list[DeadLetter]:
        """Count record batches the consumer skipped; their dead letters, for the caller to send."""
        for batch in batches:
            metrics.UNDECODABLE_BATCHES.labels(batch.topic).inc()
            if self.gap_fill is not None:  # a feature-gap fill must pass over them too
                self.gap_fill.skip((batch.topic, batch.partition), batch.first_offset, batch.next_offset)
        return [batch.dead_letter() for batch in batches]

    def assign(self, assignment: Collection[tuple[str, int]]) -> None:
        """The ``(topic, partition)`` pairs the consumer owns now, also between batches (a worker
        that gets no message still owns partitions, and their lag must show)."""
        if self.on_assignment is not None:
            self.on_assignment(assignment)

    def _process(self, values: Sequence[bytes | None], events: list[Event], partitions: list[int],
                 dead: list[DeadLetter], counts: Mapping[str, int], offsets: Mapping[str, Mapping[int, int]] | None,
                 starts: Mapping[str, Mapping[int, int]] | None, start: float,
                 log_write: tuple[list[LogPosition], dict[tuple[str, int], tuple[int, int]]] | None = None,
                 train: bool = True) -> BatchResult:
        replayed = self.recovery.before_batch(offsets, starts) if self.recovery is not None else frozenset()
        train = train or bool(replayed)  # the replay covered the staged events: they train now, with it
        attempt = self._join(_batch_key(values, starts), events, partitions)
        train = train or attempt.prepared  # a retry of a call that was to train (after a replay) still trains
        ends = _merged(self._staged_ends, offsets)
        if train and not attempt.prepared and self.train is not None:
            attempt.batch = self.train.prepare(self._staged + attempt.examples)  # before this write
            attempt.prepared = True
        writing = self._redis_thread.submit(self._write_features, events, log_write)
        try:
            if train and attempt.batch is not None and not attempt.trained:
                with self.recovery.pushing_to_all_but(replayed) if replayed else nullcontext():
                    self.train.fit(attempt.batch, ends or None)  # type: ignore[union-attr]
                attempt.trained = True
        finally:
            written = writing.result()  # re-raises a Redis error: the batch is then retried
        self._attempt = None
        if train:
            self._staged, self._staged_ends = [], {}
        else:
            self._staged += attempt.examples
            self._staged_ends = ends
        self._observe(events, counts, dead, attempt.examples, time.perf_counter() - start, len(values))
        metrics.JOINER_PENDING.set(self.joiner.pending)
        return BatchResult(len(events), dead, written, len(attempt.examples), train)

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
        self._attempt = _Attempt(key, self.joiner.add_many(events, partitions, inputs))
        return self._attempt

    def _write_features(self, events: list[Event],
                        log_write: tuple[list[LogPosition], dict[tuple[str, int], tuple[int, int]]] | None
                        ) -> WriteResult:
        """The batch's feature write: by offset (re-applying a gap the store lost first) when the
        batch brought its offsets, else by ``event_id``."""
        if log_write is None:
            return self.writer.write_many(events)
        positions, ranges = log_write
        if self.gap_fill is not None:
            result = self.gap_fill.write_many(events, positions, ranges)
        else:
            result = self.writer.write_many(events, offsets=positions, ranges=ranges)
        for tp, (_, end) in ranges.items():
            self.consumed[tp] = max(self.consumed.get(tp, 0), end)
        return result

    def reapply_lost(self, assignment: Collection[tuple[str, int]] | None = None) -> int:
        """Between batches: re-apply from Kafka what the feature store lost of the partitions this
        worker consumed (and owns, if ``assignment`` is given), up to where it consumed them: a
        batch finds such a gap itself, but a partition that gets no message would wait for one.
        Returns the number of partitions re-applied."""
        if self.gap_fill is None or not self.consumed:
            return 0
        applied = self.writer.applied_offsets()
        owned = set(assignment) if assignment is not None else set(self.consumed)
        lost = {tp: (applied[tp], end) for tp, end in self.consumed.items()
                if tp in owned and tp in applied and applied[tp] < end}
        for tp, (lo, hi) in sorted(lost.items()):
            self.gap_fill.fill(tp, lo, hi)
        return len(lost)

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


def _positions(partitions: Sequence[int] | None, message_offsets: Sequence[int] | None,
               offsets: Mapping[str, Mapping[int, int]] | None, starts: Mapping[str, Mapping[int, int]] | None,
               n: int) -> list[tuple[str, int, int]] | None:
    """Each message's (topic, partition, offset) where known (its offset needs its partition and the
    batch's one topic), else its partition alone as ("", partition, -1); None without partitions."""
    if partitions is None:
        if message_offsets is not None:
            raise ValueError("message offsets without partitions")
        return None
    if len(partitions) != n:
        raise ValueError(f"{len(partitions)} partitions for {n} messages")
    if message_offsets is None:
        return [("", int(p), -1) for p in partitions]
    if len(message_offsets) != n:
        raise ValueError(f"{len(message_offsets)} offsets for {n} messages")
    topics = set(offsets or {}) | set(starts or {})
    if len(topics) != 1:
        raise ValueError(f"message offsets need a batch of one topic, got {sorted(topics)}")
    (topic,) = topics
    return [(topic, int(p), int(o)) for p, o in zip(partitions, message_offsets)]


def _merged(ends: Mapping[str, Mapping[int, int]], more: Mapping[str, Mapping[int, int]] | None
            ) -> dict[str, dict[int, int]]:
    """Topic → partition → the furthest next offset of either."""
    out = {t: dict(parts) for t, parts in ends.items()}
    for t, parts in (more or {}).items():
        mine = out.setdefault(t, {})
        for p, o in parts.items():
            mine[p] = max(mine.get(p, o), o)
    return out


def _ranges(starts: Mapping[str, Mapping[int, int]] | None,
            ends: Mapping[str, Mapping[int, int]] | None) -> dict[tuple[str, int], tuple[int, int]]:
    """The batch's [first, next) offsets per (topic, partition)."""
    return {(t, int(p)): (int(lo), int((ends or {}).get(t, {}).get(p, lo)))
            for t, parts in (starts or {}).items() for p, lo in parts.items()}


def _split(values: Sequence[bytes | None], positions: Sequence[tuple[str, int, int]] | None,
           max_ahead_s: float) -> tuple[list[Event], list[tuple[str, int, int]], list[DeadLetter]]:
    """Valid events with their positions, and dead letters; events keep their order per partition."""
    now = time.time()  # the worker's clock, once per batch
    if positions is None:
        events, dead = split_batch(values, now, max_ahead_s)
        return events, [("", 0, -1)] * len(events), dead
    by_partition: dict[int, tuple[list[bytes | None], list[tuple[str, int, int]]]] = {}
    for value, position in zip(values, positions):
        part = by_partition.setdefault(position[1], ([], []))
        part[0].append(value)
        part[1].append(position)
    events, event_positions, dead = [], [], []
    for part_values, part_positions in by_partition.values():
        valid, kept, invalid = split_tagged(part_values, part_positions, now, max_ahead_s)
        events += valid
        event_positions += kept
        dead += invalid
    return events, event_positions, dead


def _batch_key(values: Sequence[bytes | None], starts: Mapping[str, Mapping[int, int]] | None) -> object:
    """What identifies a batch across retries: its first offsets, else its bytes."""
    if starts:
        return tuple(sorted((t, p, o) for t, parts in starts.items() for p, o in parts.items()))
    return hash(tuple(values))
