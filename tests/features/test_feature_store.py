"""The Redis feature store against a real Redis: window counts equal a brute-force recount,
redelivery changes nothing, every key expires, and one reader call serves many entities."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import numpy as np
import pytest
import redis

from features.config import FeatureConfig
from features.reader import FeatureReader
from features.windows import WindowSpec
from features.writer import FeatureWriter
from rtrec.events import Event

pytestmark = pytest.mark.integration

WINDOWS = (WindowSpec("1m", 60, 6), WindowSpec("10m", 600, 10))


@pytest.fixture
def store(feature_redis) -> tuple[FeatureWriter, FeatureReader, FeatureConfig]:
    config = feature_redis.config(windows=WINDOWS, recent_items=5,
                           session_gap_s=100.0)
    client = feature_redis.client
    return FeatureWriter(client, config), FeatureReader(client, config), config


def random_events(n: int, seed: int, t0: float = 1_700_000_000.0, span: float = 1_500.0,
                  jitter: float = 30.0) -> list[Event]:
    """Events in rough time order with out-of-order arrivals of up to ``jitter`` seconds."""
    rng = random.Random(seed)
    events = []
    for k in range(n):
        ts = t0 + span * k / n + rng.uniform(-jitter, 0)
        events.append(Event(f"e{seed}-{k}", f"u{rng.randrange(5)}", f"i{rng.randrange(8)}",
                            rng.choice(["impression", "impression", "click", "like"]), ts,
                            item={"category": "c1"}))
    return events


def brute_force(events: list[Event], window: WindowSpec, kind: str, entity: str) -> Counter:
    """Counts per action of events in the live buckets at the final watermark."""
    first, last = window.live_range(max(e.ts for e in events))
    out: Counter = Counter()
    for e in events:
        owner = {"u": e.user_id, "i": e.item_id}[kind]
        if owner == entity and first <= window.bucket(e.ts) <= last:
            out[f"{e.action}_{window.name}"] += 1
    return out


def test_window_counts_equal_a_brute_force_recount(store) -> None:
    writer, reader, _ = store
    events = random_events(3_000, seed=1)
    for lo in range(0, len(events), 250):
        writer.write_many(events[lo:lo + 250])
    users = reader.users([f"u{k}" for k in range(5)])
    items = reader.items([f"i{k}" for k in range(8)])
    checked = 0
    for window in WINDOWS:
        for k, features in enumerate(users):
            expected = brute_force(events, window, "u", f"u{k}")
            got = {name: n for name, n in features["counts"].items() if name.endswith(f"_{window.name}") and n}
            assert got == dict(expected)
        for k, features in enumerate(items):
            expected = brute_force(events, window, "i", f"i{k}")
            got = {name: n for name, n in features["counts"].items() if name.endswith(f"_{window.name}") and n}
            assert got == dict(expected)
            checked += sum(expected.values())
        first, last = window.live_range(max(e.ts for e in events))
        stream_expected = Counter(f"{e.action}_{window.name}" for e in events if first <= window.bucket(e.ts) <= last)
        stream = {k: n for k, n in reader.stream()["counts"].items() if k.endswith(f"_{window.name}") and n}
        assert stream == dict(stream_expected)
    assert checked > 1_000  # the windows really hold events, including late ones


def test_redelivered_batch_changes_no_counter(store) -> None:
    writer, reader, config = store
    events = random_events(500, seed=2)
    first = writer.write_many(events)
    before = (reader.users(["u0", "u1"]), reader.items(["i0", "i3"]), reader.top("trending", 10))
    again = writer.write_many(events[100:300] + events[:50])
    after = (reader.users(["u0", "u1"]), reader.items(["i0", "i3"]), reader.top("trending", 10))
    assert (first.applied, first.duplicates) == (500, 0)
    assert (again.applied, again.duplicates) == (0, 250)
    assert before == after


def test_every_key_written_has_an_expiry(store) -> None:
    writer, _, config = store
    writer.write_many(random_events(300, seed=3))
    client = writer.client
    written = [k for p in config.layout.prefixes for k in client.scan_iter(match=f"{p}*", count=1000)]
    assert written
    no_ttl = [k for k in written if client.ttl(k) < 0]
    assert no_ttl == []  # the watermark too: no key lives on
    assert all(client.ttl(k) <= config.key_ttl_s for k in written)


def test_recent_items_are_newest_first_and_capped(store) -> None:
    writer, reader, _ = store
    t = 1_700_000_000.0
    events = [Event(f"r{k}", "alice", f"i{k}", "click", t + k) for k in range(8)]
    events.append(Event("imp", "alice", "seen-only", "impression", t + 9))
    writer.write_many(events)
    (alice,) = reader.users(["alice"])
    assert alice["recent_items"] == ["i7", "i6", "i5", "i4", "i3"]


def test_a_pause_longer_than_the_session_gap_starts_a_new_session(store) -> None:
    writer, reader, _ = store
    t = 1_700_000_000.0
    writer.write_many([Event("s1", "bob", "a", "click", t), Event("s2", "bob", "b", "like", t + 50)])
    assert reader.users(["bob"])[0]["session_items"] == ["a", "b"]
    writer.write_many([Event("s3", "bob", "c", "click", t + 50 + 101)])
    assert reader.users(["bob"])[0]["session_items"] == ["c"]


def test_ctr_is_smoothed_towards_the_stream_ctr(store) -> None:
    writer, reader, config = store
    t = 1_700_000_000.0
    events = [Event(f"i{k}", "u", "hot" if k < 10 else "cold", "impression", t) for k in range(20)]
    events += [Event(f"c{k}", "u", "hot", "click", t) for k in range(5)]
    writer.write_many(events)
    hot, cold, unknown = reader.items(["hot", "cold", "never-seen"])
    p0 = 5 / 20
    a = config.ctr_prior_strength
    assert hot["ctr_1m"] == pytest.approx((5 + a * p0) / (10 + a))
    assert cold["ctr_1m"] == pytest.approx((0 + a * p0) / (10 + a))
    assert unknown["ctr_1m"] == pytest.approx(p0) and unknown["counts"] == {}
    assert hot["category"] is None and unknown["trending"] == 0.0


def test_trending_ranks_recent_activity_above_old_activity(store) -> None:
    writer, reader, config = store
    t = 1_700_000_000.0
    old = [Event(f"o{k}", "u", "old-hit", "click", t + k) for k in range(10)]
    new = [Event(f"n{k}", "u", "new-hit", "click", t + 3 * config.trending_tau_s + k) for k in range(4)]
    writer.write_many(old + new)
    ranking = reader.top("trending", 2)
    assert [item for item, _ in ranking] == ["new-hit", "old-hit"]
    assert ranking[0][1] == pytest.approx(4.0, rel=0.01)  # decayed count at the watermark


def test_window_counts_summed_in_redis_equal_the_readers_counts(store) -> None:
    writer, reader, _ = store
    events = random_events(2_000, seed=4)
    writer.write_many(events)
    users = [f"u{k}" for k in range(5)] + ["nobody"]
    names = ["impression_1m", "click_10m", "like_10m"]
    fast = reader.window_counts("u", users, names)
    slow = reader.users(users)
    assert fast.tolist() == [[u["counts"].get(n, 0) for n in names] for u in slow]
    assert fast.sum() > 0
    stream = reader.window_counts("g", [], names)
    assert stream.tolist() == [[reader.stream()["counts"].get(n, 0) for n in names]]


def test_unknown_count_name_is_a_value_error(store) -> None:
    _, reader, _ = store
    with pytest.raises(ValueError, match="unknown count"):
        reader.window_counts("i", ["x"], ["click_3d"])


def test_realtime_features_follow_the_readers_smoothed_values(feature_redis) -> None:
    from features.realtime import log_lift, read_realtime_features
    from rtrec.recipe.model import REALTIME_FEATURES

    config = feature_redis.config()
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    t = 1_700_000_000.0
    events = [Event(f"i{k}", "ann", "hot" if k % 2 else "cold", "impression", t + k) for k in range(40)]
    events += [Event(f"c{k}", "ann", "hot", "click", t + 50 + k) for k in range(6)]
    writer.write_many(events)
    x = read_realtime_features(reader, ["ann"], ["hot", "cold", "unseen"])
    hot, cold, unseen = reader.items(["hot", "cold", "unseen"])
    col = {name: k for k, name in enumerate(REALTIME_FEATURES)}
    for row, item in enumerate((hot, cold, unseen)):
        stream_ctr = 6 / 40  # every impression and click of the stream is within both windows
        assert x[row, col["item_log_ctr_lift_1h"]] == pytest.approx(log_lift(item["ctr_1h"], stream_ctr), rel=1e-5)
        assert x[row, col["item_log_ctr_lift_24h"]] == pytest.approx(log_lift(item["ctr_24h"], stream_ctr), rel=1e-5)
        assert x[row, col["item_log_trending"]] == pytest.approx(np.log1p(item["trending"]), rel=1e-4)
        assert x[row, col["item_log_impressions_1h"]] == pytest.approx(np.log1p(item["counts"].get("impression_1h", 0)))
    assert x[:, col["user_log_clicks_1h"]].tolist() == pytest.approx([np.log1p(6)] * 3)
    assert x[0, col["item_log_clicks_1h"]] == pytest.approx(np.log1p(6)) and x[1, col["item_log_clicks_1h"]] == 0


def test_catalogue_returns_only_items_added_or_changed_since_the_cursor(store) -> None:
    writer, reader, _ = store
    t = 1_700_000_000.0
    writer.write_many([Event("a1", "u", "shoe", "impression", t, item={"category": "shoes"}),
                       Event("a2", "u", "mystery", "click", t + 1)])
    first, cursor = reader.catalog_since(0)
    assert sorted(first) == [("mystery", None), ("shoe", "shoes")]
    writer.write_many([Event("b1", "v", "shoe", "click", t + 2, item={"category": "shoes"}),
                       Event("b2", "v", "mystery", "click", t + 3)])
    assert reader.catalog_since(cursor) == ([], cursor)  # nothing new: same entries, same categories
    writer.write_many([Event("c1", "v", "mystery", "click", t + 4, item={"category": "toys"}),
                       Event("c2", "v", "hat", "impression", t + 5)])
    later, cursor2 = reader.catalog_since(cursor)
    assert sorted(later) == [("hat", None), ("mystery", "toys")] and cursor2 > cursor
    assert sorted(reader.catalog_since(0)[0]) == [("hat", None), ("mystery", "toys"), ("shoe", "shoes")]


def test_catalogue_keeps_the_most_recently_changed_items_within_its_size(feature_redis) -> None:
    config = feature_redis.config(windows=WINDOWS, catalog_size=3)
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    for k in range(5):
        writer.write_many([Event(f"e{k}", "u", f"i{k}", "impression", 1_700_000_000.0 + k)])
    assert sorted(name for name, _ in reader.catalog_since(0)[0]) == ["i2", "i3", "i4"]
    p = config.layout.prefix_of("u")  # one user: one shard's catalogue
    assert client.hlen(f"{p}items") == 3
    assert all(client.ttl(f"{p}{key}") > 0 for key in ("items", "items:log", "items:seq"))


def test_a_cursor_ahead_of_an_emptied_store_starts_over(store) -> None:
    _, reader, _ = store
    assert reader.catalog_since(1_000) == ([], 0)


def test_recent_items_are_newest_first(store) -> None:
    writer, reader, _ = store
    t = 1_700_000_000.0
    writer.write_many([Event(f"r{k}", "ann", f"i{k}", "click", t + k) for k in range(3)])
    assert reader.recent_items("ann") == ["i2", "i1", "i0"] and reader.recent_items("nobody") == []


def test_realtime_reads_bring_raw_item_counts_and_catalogue_categories(feature_redis) -> None:
    from features.realtime import ITEM_COUNTS, read_realtime

    config = feature_redis.config()
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    t = 1_700_000_000.0
    writer.write_many([Event(f"i{k}", "ann", "hot", "impression", t + k, item={"category": "hats"})
                       for k in range(3)] + [Event("c0", "ann", "hot", "click", t + 5)])
    reads = read_realtime(reader, ["ann"], ["hot", "unseen", "hot"], categories=True)
    assert reads.categories == ["hats", None, "hats"]
    assert reads.item_counts[:, ITEM_COUNTS.index("impression_1h")].tolist() == [3, 0, 3]
    assert reads.item_counts[:, ITEM_COUNTS.index("click_1h")].tolist() == [1, 0, 1]
    assert read_realtime(reader, ["ann"], ["hot"]).categories is None


def test_realtime_reads_survive_redis_losing_its_scripts(feature_redis) -> None:
    from features.realtime import read_realtime_features

    config = feature_redis.config()
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    writer.write_many([Event("e0", "ann", "hot", "impression", 1_700_000_000.0)])
    before = read_realtime_features(reader, ["ann"], ["hot"])
    client.script_flush()  # what a restarted Redis looks like to a reader
    assert read_realtime_features(reader, ["ann"], ["hot"]).tolist() == before.tolist()


def test_a_batch_of_realtime_reads_equals_each_read_alone(feature_redis) -> None:
    """Serving merges the reads of a batch of requests into one query; every request's rows must
    be what its own read gives (its user's counts, categories and co-visits, not a neighbour's)."""
    from features.realtime import read_realtime, read_realtime_many

    config = feature_redis.config()
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    rng = random.Random(5)
    t = 1_700_000_000.0
    writer.write_many([Event(f"e{k}", rng.choice(["ann", "bob", "cy"]), f"i{rng.randrange(12)}",
                             rng.choice(["impression", "impression", "click"]), t + k,
                             item={"category": f"c{k % 3}"}) for k in range(300)])
    pairs = [(["ann"], ["i1", "i2", "i3"]), (["bob"], []), (["cy", "ann"], ["i3", "i4"]), (["bob"], ["i1", "nope"])]
    batch = read_realtime_many(reader, pairs, categories=True)
    assert len(batch) == len(pairs)
    for (users, items), got in zip(pairs, batch):
        alone = read_realtime(reader, users, items, categories=True)
        np.testing.assert_array_equal(got.dense, alone.dense)
        np.testing.assert_array_equal(got.item_counts, alone.item_counts)
        assert got.categories == alone.categories and got.dense.shape == (len(items), alone.dense.shape[1])
    assert batch[0].dense[:, :5].any()  # the test reads real counts, not only zeros
    assert not (batch[0].dense == batch[3].dense[:1]).all()  # ann and bob differ on i1


def test_recent_items_of_many_users_keep_order_and_limit(store) -> None:
    writer, reader, _ = store
    t = 1_700_000_000.0
    writer.write_many([Event(f"r{k}", "ann", f"i{k}", "click", t + k) for k in range(4)]
                      + [Event("b0", "bob", "j0", "click", t)])
    assert reader.recent_items_many(["ann", "nobody", "bob", "ann"], limit=2) == [["i3", "i2"], [], ["j0"], ["i3", "i2"]]
    assert reader.recent_items_many(["bob", "ann"]) == [["j0"], ["i3", "i2", "i1", "i0"]]
    assert reader.recent_items_many(["ann"], limit=0) == [[]]


def test_non_ascii_ids_and_categories_round_trip_through_the_store(feature_redis) -> None:
    from features.realtime import ITEM_COUNTS, read_realtime

    config = feature_redis.config()
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    t = 1_700_000_000.0
    writer.write_many([Event("n0", "zoë", "café-☕", "impression", t, item={"category": "boissons é"}),
                       Event("n1", "zoë", "café-☕", "click", t + 1)])
    assert reader.recent_items("zoë") == ["café-☕"]
    reads = read_realtime(reader, ["zoë"], ["café-☕"], categories=True)
    assert reads.categories == ["boissons é"]
    assert reads.item_counts[0, ITEM_COUNTS.index("click_1h")] == 1


def test_a_redis_that_lost_the_write_script_applies_each_call_once(feature_redis) -> None:
    config = feature_redis.config(windows=WINDOWS, dedupe_window_s=0)  # no event_id marks to hide a double write
    writer, reader = FeatureWriter(feature_redis.client, config), FeatureReader(feature_redis.client, config)
    events = random_events(400, seed=7)
    writer.write_many(events[:200])
    client = feature_redis.client
    if feature_redis.name == "cluster":  # one master restarted: the others keep the script
        node = client.get_primaries()[0]
        redis.Redis(host=node.host, port=node.port).script_flush()
    else:
        client.script_flush()
    writer.write_many(events[200:])
    counted = sum(n for name, n in reader.stream()["counts"].items() if name.endswith("_10m"))
    first, last = WINDOWS[1].live_range(max(e.ts for e in events))
    assert counted == sum(first <= WINDOWS[1].bucket(e.ts) <= last for e in events)


def test_every_shard_knows_every_items_category(feature_redis) -> None:
    config = feature_redis.config()
    writer, reader = FeatureWriter(feature_redis.client, config), FeatureReader(feature_redis.client, config)
    users = [f"u{k}" for k in range(12)]  # users of every shard
    writer.write_many([Event(f"e{k}", u, f"i{k}", "impression", 1_700_000_000.0 + k, item={"category": f"c{k}"})
                       for k, u in enumerate(users)])
    writer.write_many([Event(f"l{k}", u, f"i{(k + 5) % 12}", "click", 1_700_000_100.0 + k)  # no category given
                       for k, u in enumerate(users)])
    for p in config.layout.prefixes:
        assert feature_redis.client.hlen(f"{p}items") == 12
    counts = reader.window_counts("uc", [(u, f"i{(k + 5) % 12}") for k, u in enumerate(users)], ["click_24h"])
    assert counts[:, 0].tolist() == [1] * 12  # each click counted in its category, known in the user's shard


def test_a_writer_notes_an_item_in_every_shard_once_until_its_category_changes(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    config = FeatureConfig(prefix=f"t{uuid.uuid4().hex[:8]}:", shards=3)
    writer = FeatureWriter(client, config)
    batch = [Event(f"a{k}", f"u{k}", "hot", "click", 1_700_000_000.0 + k, item={"category": "c1"}) for k in range(9)]
    writer.write_many(batch)
    catalogues = [f"{p}items" for p in config.layout.prefixes]
    assert [client.hget(c, "hot") for c in catalogues] == [b"c1"] * 3
    client.delete(*catalogues)  # were the item noted again with every batch, this would be refilled
    writer.write_many([Event("b0", "u0", "hot", "click", 1_700_000_100.0, item={"category": "c1"})])
    assert sum(client.hexists(c, "hot") for c in catalogues) == 1  # only the shard of u0's own event
    writer.write_many([Event("c0", "u0", "hot", "click", 1_700_000_200.0, item={"category": "c2"})])
    assert [client.hget(c, "hot") for c in catalogues] == [b"c2"] * 3  # a new category reaches every shard
