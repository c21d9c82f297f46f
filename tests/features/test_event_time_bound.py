"""The feature store against a far-future event: the watermark expires and is never poisoned.

The writer is the last door before Redis: an event stamped far ahead of the wall clock (which
validation should already have dead-lettered) must not move the watermark, or every window read
afterwards would be empty; and the watermark key, like every key, has an expiry.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from features import keys
from features.config import FeatureConfig
from features.reader import FeatureReader
from features.windows import WindowSpec
from features.writer import FeatureWriter
from rtrec.events import Event

pytestmark = pytest.mark.integration

WINDOWS = (WindowSpec("1m", 60, 6), WindowSpec("10m", 600, 10))
TEN_YEARS_S = 10 * 365 * 86_400.0


@pytest.fixture
def store(feature_redis) -> tuple[FeatureWriter, FeatureReader, FeatureConfig, redis.Redis]:
    config = feature_redis.config(windows=WINDOWS)
    client = feature_redis.client
    return FeatureWriter(client, config), FeatureReader(client, config), config, client


def clicks(ts: float, n: int, user: str = "u1", item: str = "i1", tag: str = "e") -> list[Event]:
    return [Event(f"{tag}{k}", user, item, "click", ts) for k in range(n)]


def test_the_watermark_key_expires(store) -> None:
    writer, _, config, client = store
    writer.write_many(clicks(time.time(), 3))
    ttl = client.ttl(keys.watermark(config.layout.prefix_of("u1")))
    assert 0 < ttl <= config.key_ttl_s


def test_a_far_future_event_does_not_zero_the_windows(store) -> None:
    writer, reader, config, client = store
    now = time.time()
    writer.write_many(clicks(now, 3))
    assert reader.users(["u1"])[0]["counts"]["click_1m"] == 3
    writer.write_many(clicks(now + TEN_YEARS_S, 1, user="u2", item="i2", tag="future"))
    assert reader.users(["u1"])[0]["counts"]["click_1m"] == 3
    assert reader.items(["i1"])[0]["counts"]["click_10m"] == 3
    assert reader.stream()["counts"]["click_1m"] == 3  # the future event is counted nowhere
    p = config.layout.prefix_of("u2")
    assert not client.exists(keys.ring(p, "u", "u2", "click"), keys.user_state(p, "u2"))
    assert reader.watermark() <= time.time() + config.max_event_ahead_s


def test_old_events_are_applied_whatever_the_wall_clock(store) -> None:
    writer, reader, _, _ = store
    result = writer.write_many(clicks(880_000_000.0, 2))  # MovieLens-100K is from 1997
    assert result.applied == 2
    assert reader.watermark() == pytest.approx(880_000_000.0)
    assert reader.users(["u1"])[0]["counts"]["click_1m"] == 2
