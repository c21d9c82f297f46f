"""The parameter store's event clock, which drives expiry, cannot be pushed into the future.

Expiry runs on event time (the ``ts`` of pushes) so a replay expires rows as the live stream did;
one push stamped far ahead of the wall clock must not make every row look stale.
"""

from __future__ import annotations

import time

import numpy as np

from features.ids import feature_ids
from param_server.config import EmbeddingConfig
from param_server.optimizers import SGD
from param_server.store import ParamStore

DAY_S = 86_400.0
TABLES = (EmbeddingConfig("user_id", slot=1, dim=4, optimizer=SGD(lr=0.1), expire_after_s=DAY_S),)
TEN_YEARS_S = 10 * 365 * 86_400.0


def grads(n: int) -> np.ndarray:
    return np.ones((n, 4), dtype=np.float32)


def test_a_push_far_in_the_future_evicts_no_row() -> None:
    store = ParamStore(TABLES)
    users = feature_ids(1, [f"u{k}" for k in range(10)])
    now = time.time()
    store.push_many(users, grads(10), ts=now)
    stranger = feature_ids(1, ["from-the-future"])
    store.push_many(stranger, grads(1), ts=now + TEN_YEARS_S)
    assert len(store.tables["user_id"]) == 11
    assert np.abs(store.pull_many(users)).sum() > 0
    assert store.event_clock <= time.time() + store.max_event_ahead_s
    assert store.stats()["future_ts_clamped"] == 1


def test_per_row_times_are_clamped_too() -> None:
    store = ParamStore(TABLES, max_event_ahead_s=60.0)
    now = time.time()
    users = feature_ids(1, ["a", "b"])
    store.push_many(users, grads(2), ts=np.array([now, now + TEN_YEARS_S]))
    assert now <= store.event_clock <= time.time() + 60.0
    assert store.stats()["future_ts_clamped"] == 1
    store.expire(now=now + DAY_S + 120.0)  # both rows are stale a day after the clamped clock
    assert len(store.tables["user_id"]) == 0


def test_replayed_old_event_times_drive_expiry_unchanged() -> None:
    store = ParamStore(TABLES)
    old, later = feature_ids(1, ["old"]), feature_ids(1, ["later"])
    store.push_many(old, grads(1), ts=880_000_000.0)  # MovieLens-100K is from 1997
    store.push_many(later, grads(1), ts=880_000_000.0 + 2 * DAY_S)
    assert store.event_clock == 880_000_000.0 + 2 * DAY_S
    assert len(store.tables["user_id"]) == 1  # "old" expired a day of event time later
    assert store.stats()["future_ts_clamped"] == 0


def test_a_snapshot_with_a_clock_in_the_future_is_restored_with_a_clamped_clock() -> None:
    """Snapshots written before the bound existed may carry a poisoned clock: restoring it must not evict."""
    store = ParamStore(TABLES)
    users = feature_ids(1, [f"u{k}" for k in range(10)])
    now = time.time()
    store.push_many(users, grads(10), ts=now)
    store.event_clock = now + TEN_YEARS_S  # what a pre-bound store could have saved
    for table in store.tables.values():
        table.next_expiry_check = now + TEN_YEARS_S
    restored = ParamStore.from_state(*store.export_state(), tables=TABLES)
    assert restored.event_clock <= time.time() + restored.max_event_ahead_s
    restored.push_many(feature_ids(1, ["next"]), grads(1), ts=now + 1.0)
    assert len(restored.tables["user_id"]) == 11
    next_check = restored.tables["user_id"].next_expiry_check
    assert next_check <= restored.event_clock + DAY_S  # expiry runs again on the clamped clock
