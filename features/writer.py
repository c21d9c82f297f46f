"""The one writer of real-time features: batches of events → Redis, each applied at most once.

Each batch is applied by a Lua script (``apply_events.lua``) that decides which events are new
and updates the windowed counters, recent/session lists and rankings in the same atomic step, so
a crash can never leave an event recorded but not counted, and a redelivered event changes
nothing. Chunks of a batch go out in one pipeline: one round trip per batch.

How an event is known to be applied already:

* an event read from Kafka (``offsets`` given): by its offset. The store keeps, per partition,
  the next offset to apply (``{p}offsets``), written by the same script call that applies the
  events, so state and offsets never disagree: an event below it is a redelivery. This costs no
  memory per event. The store also tells when it lost writes (Redis restarted from an AOF that
  lacked its last second): a batch that starts beyond a partition's applied offset raises
  :class:`OffsetGap` before anything is applied, and the caller re-applies the gap from Kafka
  (:class:`stream_workers.recovery.FeatureGapFill`);
* every event, and the only way for one without offsets (direct calls, ``rtrec eval``): by its
  ``event_id``, marked for ``config.dedupe_window_s`` (``RTREC_DEDUPE_WINDOW_S``). Offsets cannot
  tell a producer that sent the same event twice (two offsets); the window bounds that memory to
  rate x window (about 100 bytes a mark).

Events stamped more than ``config.max_event_ahead_s`` after the wall clock are refused (counted
and logged, never applied): validation dead-letters them first, and this second check keeps one
such event from moving the watermark, after which every window read would be empty.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Iterator, Mapping, Sequence

import orjson
import redis
from prometheus_client import Counter, Histogram

from features import keys
from features.config import FeatureConfig
from rtrec.errors import RtrecError
from rtrec.events import Event

log = logging.getLogger(__name__)

SCRIPT = resources.files("features").joinpath("apply_events.lua").read_text()
#: Events per script call: bounds how long one call holds Redis (it is single-threaded).
EVENTS_PER_CALL = 200
#: A sharded store's writer notes an item in every shard's catalogue again after this long, and
#: remembers at most this many noted items (FeatureWriter._notes).
NOTE_AGAIN_S = 300.0
NOTED_MAX = 200_000

EVENTS_APPLIED = Counter("rtrec_features_events_applied_total", "Events whose feature effects were applied.")
EVENTS_DUPLICATE = Counter("rtrec_features_events_duplicate_total", "Events skipped as already applied.")
EVENTS_REFUSED = Counter("rtrec_features_events_refused_total",
                         "Events not applied because their time is too far ahead of the wall clock.")
WRITE_SECONDS = Histogram("rtrec_features_redis_write_seconds", "Time to write one batch of events to Redis.",
                          buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))


TopicPartition = tuple[str, int]
#: One script call: (shard, events with their [range, offset], ranges, catalogue notes or None).
Call = tuple[int, list[tuple["Event", list]], list[list], "bytes | None"]
#: Where an event was read from: (topic, partition, offset).
LogPosition = tuple[str, int, int]


@dataclass(frozen=True)
class WriteResult:
    """What a batch did: events newly applied and events already seen before."""

    applied: int
    duplicates: int


class OffsetGap(RtrecError):
    """The store's applied offset of a partition lies before the batch's first offset: writes were
    lost (or the offsets between were never applied). ``gaps``: (topic, partition) -> (applied
    offset, first offset of the batch), the range to re-apply from Kafka (empty if only later
    calls of the batch were refused because an earlier one was); ``partial``: what the calls of
    the batch that had no gap applied (each call is all or nothing, and re-applying the batch after
    the gap is filled finds those as duplicates)."""

    def __init__(self, gaps: Mapping[TopicPartition, tuple[int, int]], partial: WriteResult) -> None:
        self.gaps, self.partial = dict(gaps), partial
        super().__init__("feature store lacks offsets " + ", ".join(
            f"{t}/{p} [{lo}, {hi})" for (t, p), (lo, hi) in sorted(self.gaps.items())))


def _window_number(config: FeatureConfig) -> int:
    """1-based position of the (user, category) counters' window among the windows; 0 = none
    (``user_category_window`` empty or not a configured window: no such counters are kept)."""
    names = [w.name for w in config.windows]
    return names.index(config.user_category_window) + 1 if config.user_category_window in names else 0


class FeatureWriter:
    """Applies events to the Redis feature store (see features/keys.py for the layout)."""

    def __init__(self, client: redis.Redis, config: FeatureConfig | None = None) -> None:
        self.client = client
        self.config = config or FeatureConfig()
        self._script = client.register_script(SCRIPT)
        c = self.config
        self._layout = c.layout
        self._noted: dict[str, tuple[str, float]] = {}  # item -> (category, when) noted in every shard
        self._head = [c.dedupe_window_s, c.key_ttl_s, c.recent_items, c.session_gap_s,
                      c.trending_tau_s, c.popular_tau_s, c.ranking_size, c.catalog_size, c.covisit_window,
                      c.covisit_keep, c.acted_items, _window_number(c), len(c.windows)]
        for w in c.windows:
            self._head += [w.name, w.bucket_s, w.slots]
        self._uc_actions = orjson.dumps(list(c.user_category_actions))
        self._vector_actions = orjson.dumps(list(c.item_vector_actions))

    def write_many(self, events: Sequence[Event], now: float | None = None, *,
                   offsets: Sequence[LogPosition] | None = None,
                   ranges: Mapping[TopicPartition, tuple[int, int]] | None = None) -> WriteResult:
        """Apply a batch of events; safe to call again with the same events (nothing changes).

        ``now`` (default: the wall clock) bounds event time: later events are refused.
        ``offsets[n]`` is where ``events[n]`` was read from Kafka, ascending per partition;
        ``ranges`` (topic, partition) -> [first, next) are the offsets the batch covers on each
        partition, dead letters included (default: from the events' offsets); the store's applied
        offsets move to their ends. Raises :class:`OffsetGap` if the store lacks offsets before a
        range (nothing of the calls that see it is applied).
        """
        if offsets is not None:
            if len(offsets) != len(events):
                raise ValueError(f"{len(offsets)} offsets for {len(events)} events")
            ranges = _ranges(offsets, ranges)
        now = time.time() if now is None else now
        kept = self._within_bound(events, now)
        events = [events[n] for n in kept] if len(kept) < len(events) else events
        positions = None if offsets is None else [offsets[n] for n in kept]
        if not events and not ranges:
            return WriteResult(0, 0)
        start = time.perf_counter()
        notes = self._notes(events) if self._layout.sharded else []
        encoded = orjson.dumps(notes) if self._layout.sharded else None
        calls = [(shard, chunk, chunk_ranges, encoded if k == 0 else None)  # notes go with a shard's first call
                 for shard, (shard_events, shard_positions) in enumerate(self._by_shard(events, positions))
                 for k, (chunk, chunk_ranges) in enumerate(_calls(shard_events, shard_positions, ranges or {}))]
        results = self._run(calls)
        gaps: dict[TopicPartition, tuple[int, int]] = {}
        refused = False
        for (_, _, chunk_ranges, _), r in zip(calls, results):
            refused = refused or len(r) > 2
            for k in range(2, len(r), 2):  # {0, 0, range, applied offset, ...}: nothing of this call applied
                field = chunk_ranges[int(r[k]) - 1][0]
                topic, _, partition = field.rpartition(":")
                tp = (topic, int(partition))
                mark = int(r[k + 1])
                if mark < ranges[tp][0]:  # else an earlier call of this batch was refused: no gap of its own
                    gaps[tp] = (min(mark, gaps.get(tp, (mark,))[0]), ranges[tp][0])
        applied = sum(int(r[0]) for r in results)
        duplicates = sum(int(r[1]) for r in results)
        WRITE_SECONDS.observe(time.perf_counter() - start)
        EVENTS_APPLIED.inc(applied)
        EVENTS_DUPLICATE.inc(duplicates)
        if refused:
            raise OffsetGap(gaps, WriteResult(applied, duplicates))
        now = time.monotonic()  # the notes are in every shard's catalogue
        for item, category in notes:
            self._noted[item] = (category or self._noted.get(item, ("", 0.0))[0], now)
        return WriteResult(applied, duplicates)

    def _run(self, calls: list[Call]) -> list:
        """One script call per (shard, events, ranges, catalogue notes), all in one pipeline (on a
        cluster, one per node). The calls a Redis refused for lack of the script (it restarted) run
        once more after loading it; only those, so no call is applied twice."""
        results = self._pipelined(calls)
        missing = [k for k, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            self.client.script_load(SCRIPT)
            for k, r in zip(missing, self._pipelined([calls[k] for k in missing])):
                results[k] = r
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    def _pipelined(self, calls: list[Call]) -> list:
        """The calls' replies, an exception object in place of each call that failed."""
        pipe = self.client.pipeline(transaction=False)
        for shard, chunk, chunk_ranges, notes in calls:
            pipe.evalsha(self._script.sha, 1, self._layout.route(shard), self._layout.prefixes[shard],
                         *self._head, self._encode(chunk), orjson.dumps(chunk_ranges), self._uc_actions,
                         self._vector_actions,
                         *([] if notes is None else [notes]))
        return pipe.execute(raise_on_error=False)

    def applied_offsets(self) -> dict[TopicPartition, int]:
        """The store's next offset to apply per (topic, partition) it has applied events of: the
        least over the shards (each shard applies every range, its own events in it)."""
        pipe = self.client.pipeline(transaction=False)
        for prefix in self._layout.prefixes:
            pipe.hgetall(keys.applied_offsets(prefix))
        out: dict[TopicPartition, int] = {}
        for raw in pipe.execute():
            for field, offset in raw.items():
                topic, _, partition = field.decode().rpartition(":")
                tp = (topic, int(partition))
                out[tp] = min(int(offset), out.get(tp, int(offset)))
        return out

    def _by_shard(self, events: Sequence[Event], positions: Sequence[LogPosition] | None
                  ) -> list[tuple[Sequence[Event], Sequence[LogPosition] | None]]:
        """The events (and their positions) of each shard, in order; every shard gets a part, even
        an empty one, so that each shard's applied offsets cover the whole batch."""
        if not self._layout.sharded:
            return [(events, positions)]
        parts: list[list[int]] = [[] for _ in self._layout.prefixes]
        for n, shard in enumerate(self._layout.of_users([e.user_id for e in events])):
            parts[shard].append(n)
        return [([events[n] for n in part], None if positions is None else [positions[n] for n in part])
                for part in parts]

    def _notes(self, events: Sequence[Event]) -> list[tuple[str, str]]:
        """The batch's items, ``[item, category ("" if none)]``, for every shard's catalogue
        (features/shards.py), less those this writer noted with the same category within
        ``NOTE_AGAIN_S``: hot items are not noted batch after batch, and a shard that lost its
        catalogue (Redis emptied) has them back within that time. Remembered once written."""
        now = time.monotonic()
        if len(self._noted) > NOTED_MAX:
            self._noted.clear()
        batch: dict[str, str] = {}
        for e in events:
            category = str((e.item or {}).get("category", ""))
            batch[e.item_id] = category or batch.get(e.item_id, "")
        notes = []
        for item, category in batch.items():
            seen = self._noted.get(item)
            if seen is None or (category and seen[0] != category) or now - seen[1] > NOTE_AGAIN_S:
                notes.append((item, category))
        return notes

    def _within_bound(self, events: Sequence[Event], now: float) -> Sequence[int]:
        """Indexes of the events no later than ``now + max_event_ahead_s``; the others are counted and logged."""
        horizon = now + self.config.max_event_ahead_s
        if all(e.ts <= horizon for e in events):  # the usual case: nothing to copy
            return range(len(events))
        kept = [n for n, e in enumerate(events) if e.ts <= horizon]
        refused = len(events) - len(kept)
        EVENTS_REFUSED.inc(refused)
        log.warning("refused %d events stamped more than %.0f s after the wall clock (latest ts %.0f)",
                    refused, self.config.max_event_ahead_s, max(e.ts for e in events))
        return kept

    def _encode(self, events: Sequence[tuple[Event, list]]) -> bytes:
        """The events as one JSON array for the script (see apply_events.lua); orjson writes 1,000 rows in
        0.15 ms (the stdlib in 2 ms), and raw UTF-8 where the stdlib escapes, which cjson reads alike."""
        positive = self.config.positive_actions
        rows = [  # building the rows is the only per-event Python work of a write
            (e.event_id, e.ts, e.user_id, e.item_id, e.action, int(e.action in positive),
             str((e.item or {}).get("category", "")), *where)
            for e, where in events
        ]
        return orjson.dumps(rows)


def _ranges(offsets: Sequence[LogPosition],
            ranges: Mapping[TopicPartition, tuple[int, int]] | None) -> dict[TopicPartition, tuple[int, int]]:
    """The batch's range per partition: ``ranges`` checked against the events' offsets, or derived
    from them; ValueError for offsets not ascending per partition or outside their range."""
    out = {tp: (int(lo), int(hi)) for tp, (lo, hi) in (ranges or {}).items()}
    last: dict[TopicPartition, int] = {}
    for topic, partition, offset in offsets:
        tp = (topic, partition)
        if offset <= last.get(tp, -1):
            raise ValueError(f"offsets of {topic}/{partition} not ascending: {offset} after {last[tp]}")
        last[tp] = offset
        if ranges is None:
            lo, hi = out.get(tp, (offset, offset + 1))
            out[tp] = (min(lo, offset), max(hi, offset + 1))
        elif tp not in out or not out[tp][0] <= offset < out[tp][1]:
            raise ValueError(f"offset {offset} of {topic}/{partition} outside the batch's range {out.get(tp)}")
    return out


def _calls(events: Sequence[Event], positions: Sequence[LogPosition] | None,
           ranges: Mapping[TopicPartition, tuple[int, int]]) -> Iterator[tuple[list[tuple[Event, list]], list[list]]]:
    """The script calls of a batch: (events with their [range, offset], ranges) per chunk.

    A partition's range is cut where its events are: each call covers its partitions' offsets from
    where the previous call stopped up to its last event; the last call covers every partition up
    to the end of its range. So the calls cover each range without gap or overlap, and a call whose
    predecessor was not applied finds a gap and applies nothing.
    """
    cursor = {tp: lo for tp, (lo, _) in ranges.items()}
    n = len(events)
    starts = list(range(0, n, EVENTS_PER_CALL)) or [0]
    for lo in starts:
        hi = min(lo + EVENTS_PER_CALL, n)
        index: dict[TopicPartition, int] = {}
        chunk_ranges: list[list] = []
        rows: list[tuple[Event, list]] = []
        ends: dict[TopicPartition, int] = {}
        for k in range(lo, hi):
            if positions is None:
                rows.append((events[k], []))
                continue
            topic, partition, offset = positions[k]
            tp = (topic, partition)
            if tp not in index:
                index[tp] = len(chunk_ranges) + 1
                chunk_ranges.append([f"{topic}:{partition}", cursor[tp], None])
            ends[tp] = offset + 1
            rows.append((events[k], [index[tp], offset]))
        last = hi >= n
        for tp, r in index.items():
            chunk_ranges[r - 1][2] = ranges[tp][1] if last else ends[tp]
            cursor[tp] = chunk_ranges[r - 1][2]
        if last:
            for tp, (_, end) in ranges.items():
                if tp not in index:
                    chunk_ranges.append([f"{tp[0]}:{tp[1]}", cursor[tp], end])
        yield rows, chunk_ranges
