"""apply_events.lua reads what a call needs in bulk (catalogue entries, ring strings, ranking
scores) and writes the catalogue and rankings once per call: against a real Redis, a stream applied
in calls of many events leaves exactly the state of the same stream applied one event per call,
with few users and items so that a call sees each of them many times (categories that change or
are missing, positives, sessions, co-visits, out-of-order events)."""

from __future__ import annotations

import random
import uuid

import pytest
import redis

from features.config import FeatureConfig
from features.store_state import store_state
from features.windows import WindowSpec
from features.writer import FeatureWriter
from rtrec.events import Event

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def stream(n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    events = []
    for k in range(n):
        ts = T0 + 900.0 * k / n + rng.uniform(-40.0, 0.0)
        category = rng.choice(["", "", "c1", "c2", "c3"])  # "": the catalogue's, if it knows one
        events.append(Event(f"e{seed}-{k}", f"u{rng.randrange(4)}", f"i{rng.randrange(7)}",
                            rng.choice(["impression", "impression", "click", "like", "purchase"]), ts,
                            item={"category": category} if category else None))
    return events


def state(client: redis.Redis, prefix: str) -> dict:
    """Every key of ``prefix`` and its value, but the event_id marks and the catalogue's change
    log (its sequence numbers count calls)."""
    return {k: v for k, v in store_state(client, prefix).items() if k not in ("items:log", "items:seq")}


@pytest.mark.parametrize("seed", [1, 2])
def test_a_stream_applied_in_calls_of_many_events_equals_one_event_per_call(redis_url: str, seed: int) -> None:
    client = redis.Redis.from_url(redis_url)
    windows = (WindowSpec("1m", 60, 6), WindowSpec("10m", 600, 10))
    bulk, single = (FeatureConfig(windows=windows, prefix=f"t{uuid.uuid4().hex[:8]}:", recent_items=6,
                                  session_gap_s=60.0, covisit_window=3, user_category_window="10m")
                    for _ in range(2))
    events = stream(700, seed)
    FeatureWriter(client, bulk).write_many(events, now=T0 + 1_000)  # calls of 200 events
    one = FeatureWriter(client, single)
    for e in events:
        one.write_many([e], now=T0 + 1_000)
    got, expected = state(client, bulk.prefix), state(client, single.prefix)
    assert got.keys() == expected.keys()
    assert any(name.startswith("cov:") for name in got) and any(name.startswith("w:uc:") for name in got)
    for name in expected:
        assert got[name] == expected[name], name
    # the catalogue log holds the same items, whatever the sequence numbers
    log = [sorted(client.zrange(f"{c.prefix}items:log", 0, -1)) for c in (bulk, single)]
    assert log[0] == log[1]
