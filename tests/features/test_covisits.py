"""Co-visitation in the feature store, against a real Redis: the counts equal a brute-force recount
of the pairs, redelivery adds nothing, the sets stay bounded, and the ranking feature
``pair_log_covisits`` sums them over the user's last items."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict

import numpy as np
import pytest
import redis

from features import keys
from features.config import FeatureConfig
from features.reader import FeatureReader, UserRecall
from features.realtime import read_realtime, read_realtime_many
from features.writer import FeatureWriter
from rtrec.events import Event
from rtrec.recipe.model import REALTIME_FEATURES

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
COVISITS = REALTIME_FEATURES.index("pair_log_covisits")


@pytest.fixture
def store(feature_redis) -> tuple[FeatureWriter, FeatureReader, FeatureConfig]:
    config = feature_redis.config(covisit_window=3, covisit_query=2)
    client = feature_redis.client
    return FeatureWriter(client, config), FeatureReader(client, config), config


def clicks(pairs: list[tuple[str, str]], start: int = 0) -> list[Event]:
    return [Event(f"e{start + n}", u, i, "click", T0 + start + n) for n, (u, i) in enumerate(pairs)]


def brute_force(events: list[Event], window: int) -> dict[str, Counter]:
    """Each positive action pairs its item with the user's last ``window`` items, both ways."""
    history: dict[str, list[str]] = defaultdict(list)
    table: dict[str, Counter] = defaultdict(Counter)
    for e in events:
        for h in history[e.user_id][-window:]:
            if h != e.item_id:
                table[h][e.item_id] += 1
                table[e.item_id][h] += 1
        history[e.user_id].append(e.item_id)
    return table


def stored(reader: FeatureReader, item: str) -> Counter:
    """The item's co-visit counts, summed over the shards (each holds its users' part)."""
    out: Counter = Counter()
    for p in reader.config.layout.prefixes:
        rows = reader.client.zrange(keys.covisits(p, item), 0, -1, withscores=True)
        out.update({name.decode(): int(score) for name, score in rows})
    return out


def test_covisit_counts_equal_a_brute_force_recount_and_redelivery_adds_nothing(store) -> None:
    writer, reader, config = store
    rng = random.Random(3)
    events = clicks([(f"u{rng.randrange(6)}", f"i{rng.randrange(12)}") for _ in range(400)])
    for lo in range(0, len(events), 70):
        writer.write_many(events[lo:lo + 70], now=T0)
    writer.write_many(events[100:300], now=T0)  # redelivered: already applied
    expected = brute_force(events, config.covisit_window)
    assert expected, "the stream must produce pairs"
    for item in {e.item_id for e in events}:
        assert stored(reader, item) == expected[item], item


def test_the_ranking_feature_sums_covisits_with_the_users_last_items(store) -> None:
    writer, reader, _ = store
    writer.write_many(clicks([("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "x"), ("c", "y"),
                              ("d", "y"), ("d", "x"), ("e", "w"), ("e", "q"), ("e", "x")]), now=T0)
    # d's last 2 items (covisit_query) are x and y: z was co-visited with x once (b), y with x 3
    # times (a, c, d), q with x once (e); the user's own item counts only the others
    items = ["z", "x", "y", "q", "unknown"]
    dense = read_realtime(reader, ["d"], items).dense[:, COVISITS]
    assert dense.tolist() == pytest.approx(np.log1p([1.0, 3.0, 3.0, 1.0, 0.0]).tolist())
    # e's last 2 are x and q, not w (third): y scores through x only (3), and z through x (1);
    # a user with no items scores 0
    pairs = read_realtime(reader, ["e", "e", "new-user"], ["y", "z", "x"]).dense[:, COVISITS]
    assert pairs.tolist() == pytest.approx(np.log1p([3.0, 1.0, 0.0]).tolist())


def test_a_covisit_set_is_trimmed_to_its_most_covisited_items(feature_redis) -> None:
    config = feature_redis.config(covisit_window=1, covisit_keep=3)
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    # "hub" is co-visited with i0 five times, i1 four times, ..., i9 once (each user: hub then one item)
    pairs = [(f"u{k}-{n}", x) for k in range(10) for n in range(max(1, 5 - k))
             for x in ("hub", f"i{k}")]
    writer.write_many(clicks(pairs), now=T0)
    kept = stored(reader, "hub")
    for p in config.layout.prefixes:  # each shard trims its own part
        assert client.zcard(keys.covisits(p, "hub")) <= 2 * config.covisit_keep
    assert [name for name, _ in kept.most_common(3)] == ["i0", "i1", "i2"]


def test_recall_reads_recent_items_and_the_most_covisited_others_in_one_call(store) -> None:
    writer, reader, _ = store
    writer.write_many(clicks([("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "x"), ("c", "y"),
                              ("f", "q"), ("f", "z"), ("d", "q"), ("d", "x")]), now=T0)
    # d's last 2 items (covisit_query) are x and q. Through x: y 2 (a, c), z 1 (b); through q: z 1 (f).
    # d's own items are left out (serving blocks them); ties go by name; a new user gets nothing
    d, new = reader.recall_many(["d", "new-user"], top=5)
    assert d.recent == ["x", "q"]
    assert list(zip(d.covisited, d.covisit_sums)) == [("y", 2), ("z", 2)]
    assert (new.recent, new.covisited, new.covisit_sums) == ([], [], [])
    assert reader.recall_many(["d"], top=1)[0].covisited == ["y"]
    assert reader.recall_many(["d"], top=0)[0] == UserRecall(["x", "q"], [], [])
    assert reader.recall_many([], top=5) == []


def test_recall_equals_a_brute_force_sum_and_sort_over_random_streams(store) -> None:
    writer, reader, config = store
    rng = random.Random(7)
    events = clicks([(f"u{rng.randrange(6)}", f"i{rng.randrange(25)}") for _ in range(300)])
    writer.write_many(events, now=T0)
    for got in reader.recall_many([f"u{n}" for n in range(6)], top=8):
        sums: Counter = Counter()
        for h in got.recent[: config.covisit_query]:
            sums.update(stored(reader, h))
        expected = sorted(((-s, i) for i, s in sums.items() if i not in got.recent and s > 0))[:8]
        assert got.recent and list(zip(got.covisited, got.covisit_sums)) == [(i, -s) for s, i in expected]


def test_the_sums_a_recall_keeps_expire(store) -> None:
    writer, reader, config = store
    writer.write_many(clicks([("a", "x"), ("a", "y"), ("d", "x")]), now=T0)
    reader.recall_many(["d", "new-user"], top=5)
    ttls = [reader.client.pttl(keys.covisit_sums(p, "d")) for p in config.layout.prefixes]
    assert max(ttls) > 0 and all(ttl <= config.covisit_sums_ttl_ms for ttl in ttls)
    assert not any(reader.client.exists(keys.covisit_sums(p, "new-user")) for p in config.layout.prefixes)


def test_a_recalled_user_is_ranked_with_the_sums_its_recall_kept(store) -> None:
    writer, reader, _ = store
    writer.write_many(clicks([("a", "x"), ("a", "y"), ("d", "x")]), now=T0)
    recall = reader.recall_many(["d"], top=5)[0]
    assert list(zip(recall.covisited, recall.covisit_sums)) == [("y", 1)]
    writer.write_many(clicks([("b", "x"), ("b", "y"), ("b", "z")], start=10), now=T0)  # x's counts move on
    (kept,) = read_realtime_many(reader, [(["d"], ["y", "z"])], recalled={"d": recall.recent})
    (fresh,) = read_realtime_many(reader, [(["d"], ["y", "z"])])
    assert kept.dense[:, COVISITS].tolist() == pytest.approx(np.log1p([1.0, 0.0]).tolist())
    assert fresh.dense[:, COVISITS].tolist() == pytest.approx(np.log1p([2.0, 1.0]).tolist())


def test_kept_sums_equal_the_sums_over_each_recent_item_on_random_streams(store) -> None:
    writer, reader, _ = store
    rng = random.Random(11)
    writer.write_many(clicks([(f"u{rng.randrange(6)}", f"i{rng.randrange(25)}") for _ in range(300)]), now=T0)
    users, items = [f"u{n}" for n in range(7)], [f"i{n}" for n in range(26)]  # u6 and i25 never seen
    recalls = reader.recall_many(users, top=8)
    pairs = [([u], items) for u in users]
    kept = read_realtime_many(reader, pairs, recalled={u: r.recent for u, r in zip(users, recalls)})
    summed = read_realtime_many(reader, pairs)
    assert any(read.dense[:, COVISITS].any() for read in kept)
    for a, b in zip(kept, summed):  # the users' own items included: the term h == item is 0 in both
        assert a.dense[:, COVISITS].tolist() == b.dense[:, COVISITS].tolist()
