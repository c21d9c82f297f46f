"""Recovery: retrain what a restarted parameter-server shard lost, re-prime a restarted worker, and
re-apply to the feature store what a restarted Redis lost.

A shard restores its latest snapshot on start, and the snapshot records per partition the Kafka
offset its state reaches (``restored_offsets``). What the shard learned after that is gone, while
the workers have consumed further. Every shard instance has an ``epoch`` (an id new at each
start). Before each batch a worker asks every shard for its epoch (one ping each); when one
changed, it reads its partitions' events from the shard's restored offsets up to the end of the
current batch straight from Kafka (a consumer without group: no rebalance, no Faust seek) and
trains them again, pushing to the restored shards only -- the other shards already have them --
and the current batch then pushes only to the others. So every event after the snapshot is
trained into the restored shard once more (at-least-once), and the rest stay as they were.

The joiner's pending impressions are in no snapshot. A replay therefore primes a fresh joiner with
up to ``prime_events`` events per partition before its start (the examples they complete are
dropped: the snapshot has them), so an impression from before the snapshot whose click came after
it is still joined. A restarted worker primes its live joiner the same way from before its first
batch (what was pending died with the old process), and if a shard's offsets lag behind that first
batch (the shard restored an older snapshot while no worker ran, or the old worker died during a
replay), replays the gap into it. Both happen per partition, when this worker first consumes it:
a first batch may hold a few partitions only, and a rebalance may bring others later.

The feature store keeps, per partition, the offset its state reaches (``{p}offsets``, written by
the script that applies the events). Redis restarted from an AOF that lacked its last second (or an
older snapshot) is behind the offsets the workers have consumed and committed: the next batch's
write finds its first offset beyond the store's and applies nothing (``OffsetGap``), and
:class:`FeatureGapFill` reads the gap from Kafka and applies its events to the features only
(training already had them), then the batch. This check happens at each batch, so it covers a
worker's first batch after a start or a rebalance (which begins at the group's committed offset)
and a Redis that restarted under a running worker alike.

Limits: impressions older than the priming reach are not re-joined; a worker replays the
partitions it has consumed since it started, so after a rebalance a partition may be replayed by
two workers (trained twice, never lost).
"""

from __future__ import annotations

import heapq
import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
from prometheus_client import Counter

from features.writer import FeatureWriter, LogPosition, OffsetGap, WriteResult
from param_server.sharding import shard_of
from rtrec.events import Event
from rtrec.recipe.joiner import Joiner
from stream_workers.validation import split_batch, split_tagged

__all__ = ["Recovery", "ShardSubset", "KafkaRangeReader", "FeatureGapFill", "shards_of"]

log = logging.getLogger(__name__)

Offsets = dict[str, dict[int, int]]
TopicPartition = tuple[str, int]

#: Events per replayed training batch (the worker's default micro-batch).
REPLAY_BATCH = 1000

REPLAYS = Counter("rtrec_worker_recovery_replays", "Replays for parameter-server shards that restarted.")
REPLAYED_EVENTS = Counter("rtrec_worker_recovery_replayed_events",
                          "Events read again from Kafka and retrained into restarted shards.")
FEATURE_GAPS = Counter("rtrec_worker_recovery_feature_gaps",
                       "Partition ranges the feature store had lost (Redis restarted behind the consumed offsets), "
                       "re-applied from Kafka.")
FEATURE_GAP_EVENTS = Counter("rtrec_worker_recovery_feature_events",
                             "Events read again from Kafka and re-applied to the feature store after it lost them.")


class RangeReader(Protocol):
    """Reads ``[start, end)`` offset ranges of partitions; returns each partition's message values."""

    def read(self, ranges: Mapping[TopicPartition, tuple[int, int]]) -> dict[TopicPartition, list[bytes | None]]: ...


class RecordReader(Protocol):
    """Reads ``[start, end)`` offset ranges of partitions; returns each partition's (offset, value) pairs."""

    def read_records(self, ranges: Mapping[TopicPartition, tuple[int, int]]
                     ) -> dict[TopicPartition, list[tuple[int, bytes | None]]]: ...


def shards_of(params: Any) -> list[Any]:
    """The shards behind ``params``: a ShardedClient's, or ``params`` itself as the only shard."""
    return list(getattr(params, "shards", [params]))


class ShardSubset:
    """The parameter-server API of ``params`` with pushes going only to the shards in ``keep``.

    Reads (rows, dense weights) come from every shard; dense pushes are not sharded and pass.
    """

    def __init__(self, params: Any, keep: frozenset[int]) -> None:
        self.params, self.keep = params, keep
        self.num_shards = len(shards_of(params))

    def pull_many(self, ids: np.ndarray) -> np.ndarray:
        return self.params.pull_many(ids)

    def push_many(self, ids: np.ndarray, grads: np.ndarray, ts: float | np.ndarray | None = None,
                  offsets: Mapping[str, Mapping[int, int]] | None = None) -> Any:
        ids = np.asarray(ids, dtype=np.uint64)
        if self.num_shards > 1:
            mask = np.isin(shard_of(ids, self.num_shards), np.fromiter(self.keep, dtype=np.int64))
        else:
            mask = np.full(ids.size, 0 in self.keep)
        if not mask.any():
            return None
        if ts is not None and np.ndim(ts):
            ts = np.asarray(ts)[mask]
        return self.params.push_many(ids[mask], np.asarray(grads)[mask], ts, offsets)

    def pull_dense(self, names: Sequence[str] | None = None) -> Any:
        return self.params.pull_dense(names)

    def push_dense(self, tensors: Mapping[str, np.ndarray]) -> Any:
        return self.params.push_dense(tensors)


class KafkaRangeReader:
    """Reads offset ranges with a kafka-python consumer that joins no group (assign + seek)."""

    def __init__(self, bootstrap: str, timeout_s: float = 120.0) -> None:
        self.bootstrap, self.timeout_s = bootstrap, timeout_s

    def read(self, ranges: Mapping[TopicPartition, tuple[int, int]]) -> dict[TopicPartition, list[bytes | None]]:
        return {tp: [value for _, value in records] for tp, records in self.read_records(ranges).items()}

    def read_records(self, ranges: Mapping[TopicPartition, tuple[int, int]]
                     ) -> dict[TopicPartition, list[tuple[int, bytes | None]]]:
        """Each partition's (offset, value) pairs of its range, in log order."""
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTP

        out: dict[TopicPartition, list[tuple[int, bytes | None]]] = {tp: [] for tp in ranges}
        todo = {KafkaTP(t, p): (lo, hi) for (t, p), (lo, hi) in ranges.items() if hi > lo}
        if not todo:
            return out
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap.split(","), group_id=None,
                                 enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
        try:
            consumer.assign(list(todo))
            first = consumer.beginning_offsets(list(todo))
            for tp, (lo, hi) in list(todo.items()):
                start = max(lo, first.get(tp, 0))
                if start >= hi:
                    del todo[tp]
                    continue
                consumer.seek(tp, start)
            deadline = time.monotonic() + self.timeout_s
            while todo:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replay could not read {sorted(str(tp) for tp in todo)} in {self.timeout_s} s")
                for tp, records in consumer.poll(timeout_ms=500, max_records=20_000).items():
                    if tp in todo:
                        out[(tp.topic, tp.partition)] += [(r.offset, r.value) for r in records if r.offset < todo[tp][1]]
                for tp in [tp for tp, (_, hi) in todo.items() if consumer.position(tp) >= hi]:
                    del todo[tp]  # by position, not by the last record: offsets may have gaps
                    consumer.pause(tp)
        finally:
            consumer.close()
        return out


class FeatureGapFill:
    """Writes a batch's features; when the store lost offsets before it (:class:`OffsetGap`), reads
    the gap from Kafka and applies it to the features first, then the batch.

    The gap is read and applied ``chunk`` offsets per partition at a time (a Redis restored from an
    hour-old snapshot lacks an hour of events). A range Kafka no longer holds (retention) or cannot
    decode (a corrupt record batch, which the consumer skipped too) is passed over with an error
    logged: its events are lost to the features, as they were to the live consumer.
    """

    def __init__(self, writer: FeatureWriter, reader: RecordReader, chunk: int = 20_000,
                 max_ahead_s: float | None = None) -> None:
        self.writer, self.reader, self.chunk = writer, reader, chunk
        self.max_ahead_s = writer.config.max_event_ahead_s if max_ahead_s is None else max_ahead_s
        self.gaps = 0
        self.reapplied = 0
        #: Record batches the live consumer skipped as undecodable: (topic, partition) -> [(first, next)]
        self.undecodable: dict[TopicPartition, list[tuple[int, int]]] = {}

    def skip(self, tp: TopicPartition, first: int, next_offset: int) -> None:
        """Offsets ``[first, next_offset)`` of ``tp`` cannot be decoded: a fill passes over them."""
        ranges = self.undecodable.setdefault(tp, [])
        ranges.append((first, next_offset))
        del ranges[:-100]  # the latest ones: a gap is never older than the store's last write

    def write_many(self, events: Sequence[Event], offsets: Sequence[LogPosition],
                   ranges: Mapping[TopicPartition, tuple[int, int]]) -> WriteResult:
        """:meth:`FeatureWriter.write_many` of the batch, with any gap before it filled first."""
        applied = duplicates = 0
        last: OffsetGap | None = None
        for _ in range(3):  # a gap, its fill, the batch; a second gap only if Redis lost writes again meanwhile
            try:
                result = self.writer.write_many(events, offsets=offsets, ranges=ranges)
                return WriteResult(applied + result.applied, duplicates + result.duplicates)
            except OffsetGap as gap:
                last = gap
                applied, duplicates = applied + gap.partial.applied, duplicates + gap.partial.duplicates
                for tp, (lo, hi) in sorted(gap.gaps.items()):
                    self.fill(tp, lo, hi)
        assert last is not None
        raise OffsetGap(last.gaps, WriteResult(applied, duplicates))

    def fill(self, tp: TopicPartition, lo: int, hi: int) -> None:
        """Apply the events of offsets ``[lo, hi)`` of ``tp`` to the features (not to training)."""
        from kafka.errors import CorruptRecordError, UnsupportedCodecError

        started, events_in_gap = time.perf_counter(), 0
        for a, b, readable in _pieces(lo, hi, self.undecodable.get(tp, []), self.chunk):
            records: list[tuple[int, bytes | None]] = []
            if readable:
                try:
                    records = self.reader.read_records({tp: (a, b)})[tp]
                except (CorruptRecordError, UnsupportedCodecError) as exc:
                    log.error("feature gap %s/%d [%d, %d) cannot be read from Kafka (%r): passed over, its "
                              "events are missing from the features", tp[0], tp[1], a, b, exc)
            events, positions, _ = split_tagged([v for _, v in records], [(tp[0], tp[1], o) for o, _ in records],
                                                max_ahead_s=self.max_ahead_s)
            self.writer.write_many(events, offsets=positions, ranges={tp: (a, b)})
            events_in_gap += len(events)
        self.gaps += 1
        self.reapplied += events_in_gap
        FEATURE_GAPS.inc()
        FEATURE_GAP_EVENTS.inc(events_in_gap)
        log.warning("feature store lacked %s/%d offsets [%d, %d) (Redis restarted behind the consumer?): "
                    "re-applied %d events from Kafka in %.1f s", tp[0], tp[1], lo, hi, events_in_gap,
                    time.perf_counter() - started)


class Recovery:
    """Watches the shards' epochs before each batch and replays what a restarted shard lost.

    ``step`` is the worker's :class:`~rtrec.recipe.training.TrainingStep` and ``joiner`` its live
    joiner; ``reader`` reads Kafka ranges.
    """

    def __init__(self, step: Any, joiner: Joiner, reader: RangeReader, prime_events: int = 5000) -> None:
        self.step, self.joiner, self.reader, self.prime_events = step, joiner, reader, prime_events
        self.position: dict[TopicPartition, int] = {}  # next offset of every partition consumed here
        self._epochs: list[str] | None = None
        self.replays = 0
        self.replayed_events = 0

    @property
    def params(self) -> Any:
        return self.step.trainer.params

    def before_batch(self, ends: Mapping[str, Mapping[int, int]] | None,
                     starts: Mapping[str, Mapping[int, int]] | None) -> frozenset[int]:
        """Check the shards before a batch; returns the shards the batch must not push to (replayed)."""
        ends_tp = _flatten(ends)
        starts_tp = _flatten(starts)
        shards = shards_of(self.params)
        epochs = [str(s.epoch()) for s in shards]
        restored: frozenset[int] = frozenset()
        if self._epochs is not None:
            changed = [k for k, (old, new) in enumerate(zip(self._epochs, epochs)) if old != new]
            if changed:
                lost = {k: _flatten(shards[k].stats()["restored_offsets"]) for k in changed}
                restored = self._replay(lost, starts_tp, ends_tp)
        # Partitions consumed here for the first time (all of the first batch's, and any that come
        # later or with a rebalance): prime the joiner from before them, and replay into every shard
        # whose offsets lag behind where consuming them starts (the shard restored an older
        # snapshot while no worker ran, or a worker died during a replay). Checked per partition:
        # a first batch may hold a few partitions only, and the others start later.
        new = {tp: start for tp, start in starts_tp.items() if tp not in self.position}
        if new:
            self._prime_live_joiner(new)
            lagging = {k: o for k, o in ((k, _flatten(s.stats()["offsets"])) for k, s in enumerate(shards)
                                         if k not in restored)
                       if any(o.get(tp, 0) < start for tp, start in new.items())}
            if lagging:
                restored = restored | self._replay(lagging, starts_tp, ends_tp)
        self._epochs = epochs  # only now: a replay that failed is tried again with the batch
        for tp, end in ends_tp.items():
            self.position[tp] = max(self.position.get(tp, 0), end)
        return restored

    @contextmanager
    def pushing_to_all_but(self, skip: frozenset[int]) -> Iterator[None]:
        """Within the block the trainer pushes only to the shards not in ``skip``."""
        if not skip:
            yield
            return
        trainer = self.step.trainer
        params = trainer.params
        trainer.params = ShardSubset(params, frozenset(range(len(shards_of(params)))) - skip)
        try:
            yield
        finally:
            trainer.params = params

    # -- internals -----------------------------------------------------------------------------

    def _prime_live_joiner(self, starts: dict[TopicPartition, int]) -> None:
        """Feed the live joiner the events just before the first batch (their examples are dropped)."""
        if self.prime_events <= 0 or not starts:
            return
        ranges = {tp: (max(0, s - self.prime_events), s) for tp, s in starts.items()}
        events, partitions = _events(self.reader.read(ranges))
        self.joiner.add_many(events, partitions, self.step.snapshot(events))
        log.info("primed the joiner with %d events before the first batch; %d impressions pending",
                 len(events), self.joiner.pending)

    def _replay(self, lost: dict[int, dict[TopicPartition, int]], starts: dict[TopicPartition, int],
                ends: dict[TopicPartition, int]) -> frozenset[int]:
        """Retrain, into the shards of ``lost`` only, every event from their offsets to the batch end."""
        restored = frozenset(lost)
        owned = {**self.position, **starts}
        end_of = {tp: ends.get(tp, owned[tp]) for tp in owned}
        begin = {tp: min(offsets.get(tp, 0) for offsets in lost.values()) for tp in end_of}
        train_ranges = {tp: (begin[tp], end_of[tp]) for tp in end_of if begin[tp] < end_of[tp]}
        if not train_ranges:
            return frozenset()  # the shards already hold everything: the batch goes to all of them
        started = time.perf_counter()
        prime, prime_partitions = _events(self.reader.read({tp: (max(0, lo - self.prime_events), lo)
                                                            for tp, (lo, _) in train_ranges.items()}))
        events, partitions = _events(self.reader.read(train_ranges))
        from rtrec.recipe.training import TrainingStep

        joiner = Joiner(window_s=self.joiner.window_s, max_pending=self.joiner.max_pending,
                        label_actions=self.joiner.label_actions,
                        positive_only_actions=self.joiner.positive_only_actions)
        step = TrainingStep(self.step.trainer, self.step.negatives_per_positive, sampler=self.step.sampler,
                            reader=self.step.reader, replay_batches=self.step.replay_batches)
        joiner.add_many(prime, prime_partitions, step.snapshot(prime))  # the snapshot holds what these completed
        trained = 0
        progress = {tp: lo for tp, (lo, _) in train_ranges.items()}
        with self.pushing_to_all_but(frozenset(range(len(shards_of(self.params)))) - restored):
            for chunk in range(0, len(events), REPLAY_BATCH):
                part = events[chunk:chunk + REPLAY_BATCH]
                batch = step.prepare(joiner.add_many(part, partitions[chunk:chunk + REPLAY_BATCH], step.snapshot(part)))
                if batch is not None:
                    step.fit(batch, _offsets_after(progress, train_ranges, chunk + len(part), len(events)))
                    trained += len(batch)
        self.replays += 1
        self.replayed_events += len(events)
        REPLAYS.inc()
        REPLAYED_EVENTS.inc(len(events))
        log.warning("shards %s restarted: replayed %d events (%s) into them, %d examples, in %.1f s",
                    sorted(restored), len(events),
                    {f"{t}/{p}": r for (t, p), r in sorted(train_ranges.items())}, trained,
                    time.perf_counter() - started)
        if 0 in restored:  # the restored dense weights are older than ours: publish ours
            trainer = self.step.trainer
            trainer._pushed_dense_version = trainer.params.push_dense(trainer.model.dense_arrays())
        return restored


def _pieces(lo: int, hi: int, skipped: Sequence[tuple[int, int]], chunk: int) -> list[tuple[int, int, bool]]:
    """``[lo, hi)`` cut into ascending pieces ``(a, b, readable)``: the ``skipped`` ranges unreadable,
    the rest readable in pieces of at most ``chunk`` offsets.

    >>> _pieces(0, 10, [(3, 5)], 4)
    [(0, 3, True), (3, 5, False), (5, 9, True), (9, 10, True)]
    """
    out: list[tuple[int, int, bool]] = []
    at = lo
    for s_lo, s_hi in sorted(skipped) + [(hi, hi)]:
        s_lo, s_hi = max(s_lo, at), min(s_hi, hi)
        if s_hi <= at and s_lo < hi:
            continue
        for a in range(at, min(s_lo, hi), chunk):
            out.append((a, min(a + chunk, s_lo, hi), True))
        if s_lo < s_hi:
            out.append((s_lo, s_hi, False))
        at = max(at, s_hi)
        if at >= hi:
            break
    return out


def _flatten(offsets: Mapping[str, Mapping[Any, int]] | None) -> dict[TopicPartition, int]:
    return {(str(t), int(p)): int(o) for t, parts in (offsets or {}).items() for p, o in parts.items()}


def _events(values: Mapping[TopicPartition, list[bytes | None]]) -> tuple[list[Event], list[int]]:
    """Valid events of all partitions, interleaved by event time (as a live consumer roughly sees
    them) but each partition's in its log order, as the live joiner saw them, and each one's
    partition (the joiner keeps a watermark per partition, as it did live)."""
    per_partition = [[(event, int(partition)) for event in split_batch(part)[0]]
                     for (_topic, partition), part in values.items()]
    pairs = list(heapq.merge(*per_partition, key=lambda pair: pair[0].ts))
    return [event for event, _ in pairs], [partition for _, partition in pairs]


def _offsets_after(progress: dict[TopicPartition, int], ranges: dict[TopicPartition, tuple[int, int]],
                   done: int, total: int) -> Offsets:
    """Offsets a replayed chunk brings the shard to: the range ends once the replay is complete.

    Events of several partitions are interleaved by time, so until the last chunk the start
    offsets are the honest lower bound.
    """
    source = {tp: hi for tp, (_, hi) in ranges.items()} if done >= total else progress
    out: Offsets = {}
    for (topic, partition), offset in source.items():
        out.setdefault(topic, {})[partition] = offset
    return out
