"""State and offsets together: the feature store records, in the script call that applies a batch,
the next Kafka offset to apply per partition. A redelivered batch is recognised by its offsets (no
per-event key), a store that lost its last writes refuses the next batch until the gap is
re-applied, and after the re-apply its features equal those of an uninterrupted run."""

from __future__ import annotations

import math
import random
import uuid

import pytest
import redis

from features.config import FeatureConfig
from features.store_state import same_item_vector, store_state
from features.windows import WindowSpec
from features.writer import EVENTS_PER_CALL, FeatureWriter, OffsetGap, _calls
from rtrec.events import Event, encode_event
from stream_workers.recovery import FeatureGapFill

pytestmark = pytest.mark.integration

WINDOWS = (WindowSpec("1m", 60, 6), WindowSpec("10m", 600, 10))
T0 = 1_700_000_000.0
TOPIC = "actions"


def make_writer(redis_url: str, **config) -> FeatureWriter:
    return FeatureWriter(redis.Redis.from_url(redis_url),
                         FeatureConfig(windows=WINDOWS, prefix=f"t{uuid.uuid4().hex[:8]}:", **config))


def log_of(n: int, partitions: int = 3, seed: int = 0) -> dict[int, list[tuple[int, Event]]]:
    """A Kafka log: per partition, (offset, event) in offset order; users keyed to partitions."""
    rng = random.Random(seed)
    out: dict[int, list[tuple[int, Event]]] = {p: [] for p in range(partitions)}
    for k in range(n):
        user = rng.randrange(12)
        e = Event(f"e{seed}-{k}", f"u{user}", f"i{rng.randrange(20)}", rng.choice(["impression", "click", "like"]),
                  T0 + k * 0.5, item={"category": f"c{rng.randrange(3)}"})
        p = user % partitions
        out[p].append((len(out[p]), e))
    return out


def batch(log: dict[int, list[tuple[int, Event]]], lo: int, hi: int):
    """Events of offsets [lo, hi) of every partition, with their positions and the batch's ranges."""
    events, positions, ranges = [], [], {}
    for p, records in log.items():
        part = [(o, e) for o, e in records if lo <= o < hi]
        if part:
            ranges[(TOPIC, p)] = (part[0][0], part[-1][0] + 1)
        events += [e for _, e in part]
        positions += [(TOPIC, p, o) for o, _ in part]
    return events, positions, ranges


def state(writer: FeatureWriter) -> dict[str, object]:
    """Every key of the store with its value (by type), the event_id marks too."""
    return store_state(writer.client, writer.config.prefix, marks=True)


def comparable(s: dict[str, object]) -> dict[str, object]:
    """The state without what depends on how events were grouped into calls: the catalogue's
    sequence numbers (compared as the set of items logged)."""
    out = dict(s)
    out.pop("items:seq", None)
    if "items:log" in out:
        out["items:log"] = sorted(m for m, _ in out["items:log"])  # type: ignore[attr-defined]
    return out


def test_a_redelivered_batch_is_a_duplicate_by_offset_and_creates_no_key(redis_url: str) -> None:
    writer = make_writer(redis_url, dedupe_window_s=0)  # offsets only: no event_id mark at all
    events, positions, ranges = batch(log_of(600), 0, 1000)
    first = writer.write_many(events, now=T0 + 1e4, offsets=positions, ranges=ranges)
    assert (first.applied, first.duplicates) == (600, 0)
    before = state(writer)
    assert not [k for k in before if k.startswith("seen:")]
    again = writer.write_many(events, now=T0 + 1e4, offsets=positions, ranges=ranges)
    assert (again.applied, again.duplicates) == (0, 600)
    assert state(writer) == before  # nothing changed, no key was added
    assert writer.applied_offsets() == {tp: hi for tp, (_, hi) in ranges.items()}


def test_a_batch_overlapping_the_applied_offsets_applies_only_what_is_new(redis_url: str) -> None:
    log = log_of(600)
    whole, parts = make_writer(redis_url), make_writer(redis_url)
    events, positions, _ = batch(log, 0, 150)
    whole.write_many(events, now=T0 + 1e4, offsets=positions)
    events, positions, _ = batch(log, 0, 100)
    parts.write_many(events, now=T0 + 1e4, offsets=positions)
    events, positions, _ = batch(log, 50, 150)  # redelivered from an older committed offset
    result = parts.write_many(events, now=T0 + 1e4, offsets=positions)
    assert result.duplicates == sum(1 for _, _, o in positions if o < 100) > 0
    assert same_features(parts, whole)


def test_an_event_sent_twice_by_a_producer_is_a_duplicate_within_the_window(redis_url: str) -> None:
    writer = make_writer(redis_url, dedupe_window_s=60)
    e = Event("same", "u", "i", "click", T0)
    assert writer.write_many([e], now=T0, offsets=[(TOPIC, 0, 7)]).applied == 1
    resent = writer.write_many([e], now=T0, offsets=[(TOPIC, 0, 8)])  # a new offset: offsets cannot tell
    assert (resent.applied, resent.duplicates) == (0, 1)
    ttl = writer.client.ttl(f"{writer.config.prefix}seen:same")
    assert 0 < ttl <= 60
    assert writer.applied_offsets() == {(TOPIC, 0): 9}


def test_the_applied_offsets_reach_the_end_of_the_batch_range_past_its_dead_letters(redis_url: str) -> None:
    writer = make_writer(redis_url)
    writer.write_many([Event("a", "u", "i", "click", T0)], now=T0, offsets=[(TOPIC, 2, 10)],
                      ranges={(TOPIC, 2): (10, 14), (TOPIC, 3): (5, 6)})  # offsets 11-13 and 3/5: dead letters
    assert writer.applied_offsets() == {(TOPIC, 2): 14, (TOPIC, 3): 6}
    assert writer.client.ttl(f"{writer.config.prefix}offsets") > 0


def test_a_store_that_lost_writes_refuses_the_next_batch_and_applies_nothing(redis_url: str) -> None:
    log = log_of(900)
    writer = make_writer(redis_url)
    events, positions, _ = batch(log, 0, 100)
    writer.write_many(events, now=T0 + 1e4, offsets=positions)
    before = state(writer)
    events, positions, ranges = batch(log, 150, 300)  # offsets 100-149 never reached the store
    with pytest.raises(OffsetGap) as gap:
        writer.write_many(events, now=T0 + 1e4, offsets=positions, ranges=ranges)
    assert gap.value.gaps == {tp: (100, 150) for tp in ranges}
    assert gap.value.partial.applied == 0
    assert state(writer) == before


class LogReader:
    """The reader interface of stream_workers.recovery over an in-memory log (values as Kafka holds them)."""

    def __init__(self, log: dict[int, list[tuple[int, Event]]]) -> None:
        self.log, self.reads = log, []

    def read_records(self, ranges):  # noqa: ANN001, ANN201
        self.reads.append(dict(ranges))
        return {(t, p): [(o, encode_event(e)) for o, e in self.log[p] if lo <= o < hi]
                for (t, p), (lo, hi) in ranges.items()}


def test_a_store_rewound_to_older_state_ends_as_an_uninterrupted_run_after_the_gap_is_reapplied(redis_url: str) -> None:
    """Redis restarted from an AOF/snapshot that lacks its last batches (simulated by restoring every key
    as it was after batch 2): the next batch re-applies the gap from Kafka first."""
    log = log_of(1500, seed=4)
    cuts = [0, 40, 90, 160, 230, 320, 400]
    now = T0 + 1e4
    uninterrupted, restarted = make_writer(redis_url), make_writer(redis_url)
    fill = FeatureGapFill(restarted, LogReader(log), chunk=30)  # the gap in several reads
    for lo, hi in zip(cuts, cuts[1:]):
        events, positions, ranges = batch(log, lo, hi)
        uninterrupted.write_many(events, now=now, offsets=positions, ranges=ranges)
    client = restarted.client
    for lo, hi in zip(cuts[:3], cuts[1:3]):
        fill.write_many(*batch(log, lo, hi))
    dumps = {k: client.dump(k) for k in client.scan_iter(match=restarted.config.prefix + "*")}
    for lo, hi in zip(cuts[2:5], cuts[3:5]):  # batches 3 and 4 are applied, then lost
        fill.write_many(*batch(log, lo, hi))
    client.delete(*client.scan_iter(match=restarted.config.prefix + "*"))
    for k, v in dumps.items():
        client.restore(k, 0, v)
    for lo, hi in zip(cuts[4:], cuts[5:]):  # the consumer goes on from its committed offsets
        fill.write_many(*batch(log, lo, hi))
    assert fill.gaps == len(log) and fill.reapplied == len(batch(log, 90, 230)[0])  # one gap per partition
    assert restarted.applied_offsets() == uninterrupted.applied_offsets()
    assert same_features(restarted, uninterrupted)


def same_features(one: FeatureWriter, other: FeatureWriter) -> bool:
    """Every key and value equal, but the catalogue's sequence numbers (they count calls) and ranking
    scores to 1e-12 relative (sums of decayed counts, added in another order when a gap is re-applied
    one partition after the other)."""
    a, b = comparable(state(one)), comparable(state(other))
    assert sorted(a) == sorted(b)
    vectors = [k for k in a if k.startswith("v:i:")]  # item ranking vectors: rings, then a trending score
    assert vectors
    assert [k for k in vectors if not same_item_vector(a.pop(k), b.pop(k))] == []
    for key in ("trending", "popular"):
        ra, rb = dict(a.pop(key)), dict(b.pop(key))
        assert ra and sorted(ra) == sorted(rb)
        assert all(math.isclose(ra[m], rb[m], rel_tol=1e-12) for m in ra), key
    assert {k: v for k, v in a.items() if v != b[k]} == {}
    return True


def test_the_calls_of_a_batch_cover_each_range_without_gap_or_overlap() -> None:
    n = 2 * EVENTS_PER_CALL + 10
    events = [Event(f"e{k}", "u", "i", "click", T0) for k in range(n)]
    positions = [(TOPIC, k % 2, 100 + k // 2) for k in range(n)]
    ranges = {(TOPIC, 0): (100, 300), (TOPIC, 1): (100, 300), (TOPIC, 5): (7, 9)}
    calls = list(_calls(events, positions, ranges))
    assert [len(rows) for rows, _ in calls] == [EVENTS_PER_CALL, EVENTS_PER_CALL, 10]
    for field, lo, hi in [("actions:0", 100, 300), ("actions:1", 100, 300), ("actions:5", 7, 9)]:
        cover = [(a, b) for _, rs in calls for f, a, b in rs if f == field]
        assert cover[0][0] == lo and cover[-1][1] == hi
        assert all(b == a2 for (_, b), (a2, _) in zip(cover, cover[1:]))
    assert calls[0][1] == [["actions:0", 100, 200], ["actions:1", 100, 200]]
