"""Each item's ranking vector (``{p}v:i:{item}``), which ranking reads with one MGET, holds what the
item's own rings and the trending ranking hold: against a real Redis (one shard, three shards, a
Redis Cluster), counts read from the vectors equal those read from the rings at the watermark, and
trending scores equal the ranking's."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from features import keys
from features.reader import FeatureReader, ItemVectorRead, merge_log_scores
from features.writer import FeatureWriter
from rtrec.events import Event

T0 = 1_700_000_000.0


def events_of(n: int, seed: int) -> list[Event]:
    """Impressions, clicks and likes of a few items over two days, a little out of order."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        ts = T0 + k * 150 + rng.uniform(-400, 0)
        out.append(Event(f"e{seed}-{k}", f"u{rng.randrange(7)}", f"i{rng.randrange(9)}",
                         rng.choice(["impression", "impression", "impression", "click", "like"]), ts,
                         item={"category": f"c{rng.randrange(3)}"}))
    return out


def read_vectors(reader: FeatureReader, items: list[str], names: list[str], categories: bool = False):
    read = ItemVectorRead(reader, items, names, categories)
    replies = reader.run_pipeline(lambda pipe: (reader.queue_watermarks(pipe), read.build(pipe)))
    shards = len(reader.layout.prefixes)
    return read.decode(replies[shards:], reader.watermark_of(replies[:shards]))


def test_counts_and_trending_read_from_item_vectors_equal_the_rings_and_the_ranking(feature_redis) -> None:
    config = feature_redis.config()
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    events = events_of(1_200, seed=3)
    for lo in range(0, len(events), 300):  # several calls: vectors are read back and updated
        writer.write_many(events[lo:lo + 300], now=T0 + 1e6)
    items = [f"i{k}" for k in range(9)] + ["unseen"]
    names = [f"{a}_{w.name}" for a in config.item_vector_actions for w in config.windows]
    counts, trending, categories = read_vectors(reader, items, names, categories=True)
    assert counts.tolist() == reader.window_counts("i", items, names).tolist()
    assert counts[:, names.index("click_24h")].sum() > 0 and counts[-1].tolist() == [0] * len(names)
    ranking = merge_log_scores([client.zmscore(keys.ranking(p, "trending"), items) for p in config.layout.prefixes])
    assert [math.isinf(s) for s in trending] == [s is None for s in ranking] == [False] * 9 + [True]
    assert trending[:9] == pytest.approx(ranking[:9], rel=1e-12)
    assert [c.decode() for c in categories[:9]] == [c.decode() for c in client.hmget(
        keys.catalog(config.layout.prefixes[0]), items[:9])] and categories[9] is None


def test_an_item_trimmed_from_the_trending_ranking_keeps_its_score_in_its_vector(feature_redis) -> None:
    config = feature_redis.config(ranking_size=1)
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    writer.write_many([Event("a", "u", "old", "click", T0), Event("b", "u", "new", "click", T0 + 60)])
    assert [item for item, _ in reader.top("trending", 5)] == ["new"]  # "old" left the ranking
    _, trending, _ = read_vectors(reader, ["old", "new"], ["click_1h"])
    assert trending.tolist() == pytest.approx([T0 / config.trending_tau_s, (T0 + 60) / config.trending_tau_s])


def test_a_store_configured_without_item_vectors_writes_none_and_refuses_to_read_them(feature_redis) -> None:
    config = feature_redis.config(item_vector_actions=())
    client = feature_redis.client
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    writer.write_many(events_of(50, seed=1), now=T0 + 1e6)
    assert client.exists(*[keys.item_vector(p, f"i{k}") for p in config.layout.prefixes for k in range(9)]) == 0
    assert reader.window_counts("i", ["i1"], ["impression_24h"]).sum() >= 0  # the rings are still there
    with pytest.raises(ValueError, match="item vector"):
        ItemVectorRead(reader, ["i1"], ["click_1h"])


def test_a_vector_of_another_layout_reads_as_empty() -> None:
    from features.config import FeatureConfig
    from features.windows import RingLayout, VectorLayout

    layout = VectorLayout(RingLayout(FeatureConfig().windows), ("impression", "click"))
    rings, trending = layout.decode([b"\x01" * 12, None])
    assert not rings.any() and np.isneginf(trending).all()
