"""Deltas from the change log (exactly the rows changed, trimmed log, too-old cursors) and growth
without one-go copies (reserved row arrays, incremental rehash): every row stays readable."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import param_server.table as table_module
from param_server.config import EmbeddingConfig
from param_server.hash_index import HashIndex
from param_server.initializers import Uniform, Zeros
from param_server.optimizers import SGD
from param_server.table import EmbeddingTable

DIM = 2


def sgd_table(expire_after_s: float | None = None, **kwargs: object) -> EmbeddingTable:
    config = EmbeddingConfig("t", slot=1, dim=DIM, initializer=Uniform(0.1, seed=1), optimizer=SGD(lr=1.0),
                             expire_after_s=expire_after_s)
    return EmbeddingTable(config, **kwargs)  # type: ignore[arg-type]


def keys(values: np.ndarray | range) -> np.ndarray:
    return (np.asarray(values, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)


def push(table: EmbeddingTable, ids: np.ndarray, version: int, ts: float = 0.0, value: float = 1.0) -> None:
    table.push_many(ids, np.full((ids.size, DIM), value, np.float32), ts=ts, version=version)


def scanned(table: EmbeddingTable, since: int) -> np.ndarray:
    """What delta() returned before the change log: one pass over every row's version."""
    return np.flatnonzero(table.versions[: table._used] > since)


def test_a_delta_after_k_changed_rows_returns_exactly_those_rows_from_the_log() -> None:
    table = sgd_table()
    everything = keys(range(20_000))
    for version, lo in enumerate(range(0, everything.size, 4096), start=1):
        push(table, everything[lo: lo + 4096], version)
    since = version
    rng = np.random.default_rng(0)
    changed = rng.choice(everything, 1000, replace=False)
    push(table, changed[:600], since + 1)
    push(table, changed[300:], since + 2)  # 300 rows changed twice: each appears once

    rows = table._logged_rows(since)
    assert rows is not None, "a recent cursor is answered from the change log"
    np.testing.assert_array_equal(rows, scanned(table, since))
    delta = table.delta(since)
    assert not delta.full and delta.evicted.size == 0
    assert sorted(delta.ids.tolist()) == sorted(changed.tolist())
    np.testing.assert_array_equal(delta.rows, table.pull_many(delta.ids))
    assert sorted(table.delta(since + 1).ids.tolist()) == sorted(changed[300:].tolist())
    assert table.delta(since + 2).ids.size == 0


def test_the_change_log_is_trimmed_and_a_cursor_before_it_still_gets_exactly_what_changed() -> None:
    table = sgd_table(max_change_log=10)
    for version in range(1, 11):  # 4 distinct rows per push, 40 row entries in all
        push(table, keys(range(4 * version, 4 * version + 4)), version)
    assert table._change_logged() <= 10 and table.change_floor == 8
    assert table._logged_rows(7) is None  # predates the kept log: read every row's version
    for since in range(0, 11):
        delta = table.delta(since)
        assert not delta.full, "a trimmed change log never forces a full dump"
        expected = keys(range(4 * (since + 1), 44)) if since < 10 else np.empty(0, np.uint64)
        assert sorted(delta.ids.tolist()) == sorted(expected.tolist()), since
    assert table._logged_rows(9) is not None  # 4 rows changed since: the log answers


def test_a_cursor_before_the_trimmed_eviction_log_still_gets_a_full_dump() -> None:
    table = sgd_table(expire_after_s=1.0, max_evicted_log=1)
    push(table, keys([1]), 1, ts=0.0)
    table.expire(now=5.0, version=2)
    push(table, keys([2]), 3, ts=10.0)
    table.expire(now=15.0, version=4)
    push(table, keys([3]), 5, ts=20.0)
    assert table.delta_floor == 2
    full = table.delta(1)
    assert full.full and full.ids.tolist() == keys([3]).tolist()
    recent = table.delta(2)
    assert not recent.full and recent.evicted.tolist() == keys([2]).tolist()


def test_deltas_after_a_restore_read_the_versions_until_new_pushes() -> None:
    table = sgd_table()
    push(table, keys(range(100)), 1)
    push(table, keys(range(10)), 2)
    arrays, meta = table.export_state()
    restored = EmbeddingTable.from_state(table.config, arrays, meta)
    assert restored.change_floor == 2
    push(restored, keys(range(5)), 3)
    for since in range(4):
        np.testing.assert_array_equal(restored.changed_rows(since), scanned(restored, since))
    assert restored._logged_rows(2) is not None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.lists(st.integers(0, 60), min_size=1, max_size=20), st.floats(0.0, 3.0)),
        st.tuples(st.just("expire"), st.just([]), st.floats(0.0, 3.0)),
        st.tuples(st.just("out_of_order"), st.lists(st.integers(0, 60), min_size=1, max_size=5), st.just(0.0)),
    ),
    min_size=1, max_size=50,
)


@settings(max_examples=80, deadline=None)
@given(ops, st.integers(1, 30))
def test_deltas_equal_a_pass_over_every_rows_version(steps: list, max_change_log: int) -> None:
    table = sgd_table(expire_after_s=4.0, max_change_log=max_change_log, capacity=2)
    now, version = 0.0, 0
    for op, values, dt in steps:
        now += dt
        version += 1
        if op == "push":
            push(table, keys(values), version, ts=now)
        elif op == "expire":
            table.expire(now=now, version=version)
        else:  # a push stamped with an older version (the store never does; the table copes)
            push(table, keys(values), max(version - 3, 0), ts=now)
        for since in range(-1, version + 1):
            np.testing.assert_array_equal(table.changed_rows(since), scanned(table, since))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 40)), min_size=1, max_size=40), st.integers(1, 16))
def test_an_index_that_rehashes_a_slice_at_a_time_agrees_with_a_dict(rounds: list, step: int) -> None:
    index = HashIndex(capacity=4, migrate_step=step)
    live: dict[int, int] = {}
    rng = np.random.default_rng(step)
    next_row = 0
    for n_new, n_gone in rounds:
        candidates = rng.integers(0, 500, n_new).astype(np.uint64)
        new = np.setdiff1d(candidates, np.array(list(live), dtype=np.uint64))
        index.insert(new, np.arange(next_row, next_row + new.size))
        live.update(zip(new.tolist(), range(next_row, next_row + new.size)))
        next_row += new.size
        gone = np.array(list(live)[:n_gone], dtype=np.uint64)
        index.delete(np.concatenate([gone, gone[:1]]))  # a repeat and absent keys are ignored
        for key in gone.tolist():
            live.pop(key)
        probe = np.concatenate([np.array(list(live), dtype=np.uint64), gone, np.array([10**6], np.uint64)])
        expected = [live.get(k, -1) for k in probe.tolist()]
        assert index.lookup(probe).tolist() == expected
        assert len(index) == len(live)
        stored_keys, stored_rows = index.items()
        assert dict(zip(stored_keys.tolist(), stored_rows.tolist())) == live


def test_the_next_array_is_prepared_ahead_and_the_old_one_drained_a_slice_at_a_time() -> None:
    index = HashIndex(capacity=64, migrate_step=2)
    states = []
    for key in range(1, 200):
        index.insert(np.array([key], np.uint64), np.array([key]))
        states.append((index.capacity, index._next is not None, index.migrating))
        assert index.lookup(np.arange(1, key + 1, dtype=np.uint64)).tolist() == list(range(1, key + 1))
    # 64 entries at load 1/2 hold 32 keys: preparing from PREPARE_AT of that, draining after key 32
    assert (64, True, False) in states and (128, False, True) in states and (256, False, True) in states
    first_drain = next(n for n, state in enumerate(states) if state[2])
    assert states[first_drain - 1] == (64, True, False) and first_drain == 32


def test_growth_past_the_reservation_point_keeps_every_row_readable() -> None:
    table = sgd_table(expire_after_s=50.0, reserve_after=64, index=HashIndex(capacity=8, migrate_step=16))
    pushed: dict[int, float] = {}
    saw_migration = False
    for version in range(1, 60):
        batch = keys(range(97 * version, 97 * version + 97))
        push(table, batch, version, ts=float(version), value=float(version))
        pushed.update(dict.fromkeys(batch.tolist(), float(version)))
        saw_migration |= table.index.migrating
        if version % 7 == 0:  # old rows: some expire while the index is draining
            for key in table.expire(now=float(version), version=version).tolist():
                pushed.pop(key)
        ids = np.array(list(pushed), dtype=np.uint64)
        expected = Uniform(0.1, seed=1).values(ids, DIM) - np.array(list(pushed.values()), np.float32)[:, None]
        np.testing.assert_array_equal(table.pull_many(ids), expected)
        assert len(table) == len(pushed)
    assert table._reserved is not None and saw_migration
    assert table.capacity % table_module.GROW_STEP == 0
    assert table.nbytes < 2 * table.capacity * (8 + 4 * DIM + 8 + 4 + 8) + table.index.nbytes + 10**6


def test_a_refused_reservation_falls_back_to_doubling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "reserve_rows", lambda *args: None)
    table = EmbeddingTable(EmbeddingConfig("t", slot=1, dim=DIM, initializer=Zeros(), optimizer=SGD(lr=1.0)),
                           capacity=4, reserve_after=8)
    ids = keys(range(100))
    push(table, ids, 1)
    assert table._reserved is None and table.capacity == 128
    assert (table.pull_many(ids) == -1.0).all()


def test_growing_into_the_reservation_keeps_rows_and_deltas() -> None:
    table = sgd_table(capacity=64, reserve_after=100, reserve_rows=1 << 20)
    push(table, keys(range(90)), 1)
    before = table.pull_many(keys(range(90)))
    push(table, keys(range(90, 300)), 2)  # moves the rows into the reserved mapping
    assert table._reserved is not None and table.capacity == table_module.GROW_STEP
    np.testing.assert_array_equal(table.pull_many(keys(range(90))), before)
    assert sorted(table.delta(1).ids.tolist()) == sorted(keys(range(90, 300)).tolist())
    assert table.delta(0).ids.size == 300


def test_reserved_rows_are_written_ahead_of_use_at_staggered_leads() -> None:
    table = sgd_table(capacity=64, reserve_after=100)
    n = 2000
    for version in range(1, 50):
        push(table, keys(range(n * version, n * version + n)), version, value=float(version))
        ready = [table._ready.get(name, 0) for name in table_module._ROW_ARRAYS]
        assert table._reserved is not None and all(r >= table._used for r in ready)
    # Caught up: each array its own lead ahead, up to WRITE_AHEAD rows.
    leads = [r - table._used for r in ready]
    assert leads == [table_module.WRITE_AHEAD * (i + 1) // 6 for i in range(6)]
    ids = keys(range(n, 50 * n))
    expected = Uniform(0.1, seed=1).values(ids, DIM)[:, 0] - np.repeat(np.arange(1, 50), n)
    np.testing.assert_array_equal(table.pull_many(ids)[:, 0], expected.astype(np.float32))
