"""What a user acted on, kept beyond its recent items so serving never recommends it again, against
a real Redis (one shard, shards by user, a Redis Cluster)."""

from __future__ import annotations

import pytest

from features import keys
from features.reader import FeatureReader
from features.realtime import read_realtime_many
from features.writer import FeatureWriter
from rtrec.events import Event

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def events_of(pairs: list[tuple[str, str]], action: str = "click", start: int = 0) -> list[Event]:
    return [Event(f"e{action}{start + n}", u, i, action, T0 + start + n) for n, (u, i) in enumerate(pairs)]


def acted(reader: FeatureReader, user: str, items: list[str]) -> list[bool]:
    (read,) = read_realtime_many(reader, [([user], items)], acted=True)
    assert read.acted is not None
    return read.acted.tolist()


def test_every_positive_action_is_kept_beyond_the_recent_items(feature_redis) -> None:
    config = feature_redis.config(recent_items=2, acted_items=10)
    writer, reader = FeatureWriter(feature_redis.client, config), FeatureReader(feature_redis.client, config)
    writer.write_many(events_of([("u", f"i{n}") for n in range(7)]) + events_of([("u", "shown")], "impression", 10),
                      now=T0)
    assert reader.recent_items("u") == ["i6", "i5"]
    assert acted(reader, "u", [f"i{n}" for n in range(7)] + ["shown", "never"]) == [True] * 7 + [False, False]
    assert acted(reader, "someone-else", ["i0", "i6"]) == [False, False]
    (plain,) = read_realtime_many(reader, [(["u"], ["i0"])])
    assert plain.acted is None  # only asked for by serving's ranking read


def test_the_kept_items_are_trimmed_to_the_latest(feature_redis) -> None:
    config = feature_redis.config(recent_items=1, acted_items=2)
    writer, reader = FeatureWriter(feature_redis.client, config), FeatureReader(feature_redis.client, config)
    writer.write_many(events_of([("u", f"i{n}") for n in range(5)]), now=T0)  # 5 > 2 x 2: trimmed to 2
    assert acted(reader, "u", [f"i{n}" for n in range(5)]) == [False, False, False, True, True]
    writer.write_many(events_of([("u", "i0")], start=20), now=T0)  # acted on again: the latest now
    assert acted(reader, "u", ["i0", "i3", "i4"]) == [True, True, True]


def test_nothing_is_kept_with_acted_items_zero(feature_redis) -> None:
    config = feature_redis.config(acted_items=0)
    writer, reader = FeatureWriter(feature_redis.client, config), FeatureReader(feature_redis.client, config)
    writer.write_many(events_of([("u", "i0")]), now=T0)
    assert acted(reader, "u", ["i0"]) == [False]
    assert not any(feature_redis.client.exists(keys.acted(p, "u")) for p in config.layout.prefixes)


def test_every_process_takes_the_kept_count_from_the_settings() -> None:
    from features.config import FeatureConfig
    from rtrec.settings import load_settings

    assert FeatureConfig.from_settings(load_settings()).acted_items == 1000
    assert FeatureConfig.from_settings(load_settings(acted_items=0)).acted_items == 0
