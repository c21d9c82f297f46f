"""The collisionless table: rows per ID, admission, expiry with row reuse, deltas."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from param_server.config import EmbeddingConfig
from param_server.hash_index import HashIndex
from param_server.initializers import Uniform, Zeros
from param_server.optimizers import SGD
from param_server.table import EmbeddingTable

DIM = 4


def sgd_table(**overrides: object) -> EmbeddingTable:
    config = dict(name="item_id", slot=2, dim=DIM, initializer=Zeros(), optimizer=SGD(lr=1.0))
    config.update(overrides)
    return EmbeddingTable(EmbeddingConfig(**config), capacity=4)  # type: ignore[arg-type]


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def grads(n: int, value: float = 1.0) -> np.ndarray:
    return np.full((n, DIM), value, dtype=np.float32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=300, unique=True), st.integers(0, 2**32))
def test_distinct_ids_never_share_a_row_and_pull_returns_the_pushed_row(keys: list[int], seed: int) -> None:
    table = EmbeddingTable(EmbeddingConfig("t", slot=1, dim=3, initializer=Uniform(0.1, seed=seed % 7),
                                           optimizer=SGD(lr=0.5)), capacity=2)
    batch = np.array(keys, dtype=np.uint64)
    g = np.random.default_rng(seed).standard_normal((batch.size, 3)).astype(np.float32)
    table.push_many(batch, g, ts=1.0, version=1)
    rows = table.index.lookup(batch)
    assert (rows >= 0).all() and np.unique(rows).size == batch.size
    assert (table.keys[rows] == batch).all()
    expected = Uniform(0.1, seed=seed % 7).values(batch, 3) - np.float32(0.5) * g
    np.testing.assert_array_equal(table.pull_many(batch), expected)


def test_ids_differing_only_in_high_bits_get_their_own_rows() -> None:
    table = sgd_table()
    batch = (np.arange(64, dtype=np.uint64) << np.uint64(58)) | np.uint64(7)  # same low bits
    table.push_many(batch, grads(64), ts=0.0, version=1)
    assert len(table) == 64
    assert np.unique(table.index.lookup(batch)).size == 64


def test_duplicate_ids_in_a_batch_sum_their_gradients() -> None:
    table = sgd_table()
    table.push_many(ids(5, 5, 5, 6), grads(4), ts=0.0, version=1)
    assert table.pull_many(ids(5, 6))[:, 0].tolist() == [-3.0, -1.0]
    assert table.updates[table.index.lookup(ids(5))].tolist() == [3]


def test_unknown_ids_pull_as_zeros_and_pull_creates_no_row() -> None:
    table = sgd_table(initializer=Uniform(0.5))
    assert table.pull_many(ids(1, 2)).tolist() == [[0.0] * DIM] * 2
    assert len(table) == 0


def test_table_grows_by_doubling_and_keeps_rows() -> None:
    table = sgd_table()
    table.push_many(ids(*range(1, 4)), grads(3), ts=0.0, version=1)
    table.push_many(ids(*range(4, 20)), grads(16, 2.0), ts=0.0, version=2)
    assert table.capacity == 32 and len(table) == 19
    assert table.pull_many(ids(1, 19))[:, 0].tolist() == [-1.0, -2.0]


def test_admission_threshold_step_by_step() -> None:
    table = sgd_table(admit_after=3)
    for step in (1, 2):
        report = table.push_many(ids(9, 9 + step), grads(2), ts=0.0, version=step)
        assert (report.admitted, report.pending, len(table)) == (0, 2, 0)
        assert table.pull_many(ids(9)).tolist() == [[0.0] * DIM]
    report = table.push_many(ids(9), grads(1), ts=0.0, version=3)  # third sighting of 9
    assert (report.admitted, report.updated, len(table)) == (1, 1, 1)
    assert table.pull_many(ids(9, 10, 11))[:, 0].tolist() == [-1.0, 0.0, 0.0]
    assert table.admissions == 1


def test_repeats_within_one_batch_count_towards_admission() -> None:
    table = sgd_table(admit_after=3)
    assert table.push_many(ids(4, 4, 4, 8), grads(4), ts=0.0, version=1).admitted == 1
    assert table.pull_many(ids(4))[:, 0].tolist() == [-3.0]


def test_expiry_step_by_step_frees_rows_and_reuses_them() -> None:
    table = sgd_table(expire_after_s=10.0)
    table.push_many(ids(1, 2, 3), grads(3), ts=100.0, version=1)
    table.push_many(ids(2), grads(1), ts=105.0, version=2)
    row_of_1, row_of_3 = table.index.lookup(ids(1, 3)).tolist()

    assert table.expire(now=110.0, version=3).tolist() == []  # 110 - 10 = 100: not older
    assert sorted(table.expire(now=110.5, version=4).tolist()) == [1, 3]
    assert len(table) == 1 and table.evictions == 2
    assert table.pull_many(ids(1, 3)).tolist() == [[0.0] * DIM] * 2

    used_before = table._used
    table.push_many(ids(7, 8), grads(2, 2.0), ts=111.0, version=5)
    assert sorted(table.index.lookup(ids(7, 8)).tolist()) == sorted([row_of_1, row_of_3])
    assert table._used == used_before  # reused, not grown
    assert table.pull_many(ids(7, 8))[:, 0].tolist() == [-2.0, -2.0]  # fresh rows, not old values

    assert table.expire(now=115.5, version=6).tolist() == [2]
    assert len(table) == 2


def test_expired_id_comes_back_with_a_fresh_row() -> None:
    table = sgd_table(expire_after_s=1.0)
    table.push_many(ids(1), grads(1, 5.0), ts=0.0, version=1)
    table.expire(now=2.0, version=2)
    table.push_many(ids(1), grads(1), ts=3.0, version=3)
    assert table.pull_many(ids(1))[:, 0].tolist() == [-1.0]


def test_delta_returns_exactly_rows_changed_and_ids_evicted_since() -> None:
    table = sgd_table(expire_after_s=10.0)
    table.push_many(ids(1, 2), grads(2), ts=0.0, version=1)
    table.push_many(ids(3), grads(1), ts=5.0, version=2)
    table.push_many(ids(2), grads(1), ts=8.0, version=3)
    assert table.expire(now=10.5, version=4).tolist() == [1]
    table.push_many(ids(4), grads(1), ts=11.0, version=5)

    expectations = {0: ([2, 3, 4], [1]), 1: ([2, 3, 4], [1]), 2: ([2, 4], [1]), 3: ([4], [1]),
                    4: ([4], []), 5: ([], [])}
    for since, (changed, evicted) in expectations.items():
        delta = table.delta(since)
        assert sorted(delta.ids.tolist()) == changed, since
        assert delta.evicted.tolist() == evicted, since
        assert not delta.full
        np.testing.assert_array_equal(delta.rows, table.pull_many(delta.ids))


def test_delta_from_before_a_trimmed_eviction_log_is_a_full_dump() -> None:
    table = EmbeddingTable(EmbeddingConfig("t", 1, dim=DIM, initializer=Zeros(), optimizer=SGD(),
                                           expire_after_s=1.0), max_evicted_log=2)
    for version, key in enumerate([1, 2, 3], start=1):
        table.push_many(ids(key), grads(1), ts=float(10 * version), version=2 * version - 1)
        table.expire(now=10.0 * version + 5, version=2 * version)
    table.push_many(ids(9), grads(1), ts=100.0, version=7)
    assert table.delta_floor == 2
    full = table.delta(1)
    assert full.full and full.ids.tolist() == [9] and full.evicted.size == 0
    assert table.delta(2).evicted.tolist() == [2, 3]


def test_hash_index_survives_many_deletes_and_reinserts() -> None:
    index = HashIndex(capacity=16)
    rng = np.random.default_rng(0)
    live: dict[int, int] = {}
    for round_ in range(30):
        new = np.setdiff1d(rng.integers(0, 1000, 40).astype(np.uint64), np.array(list(live), dtype=np.uint64))
        index.insert(new, np.arange(new.size) + 1000 * round_)
        live.update({int(k): int(r) for k, r in zip(new, np.arange(new.size) + 1000 * round_)})
        gone = np.array(list(live)[: len(live) // 3], dtype=np.uint64)
        index.delete(gone)
        for key in gone.tolist():
            live.pop(key)
        keys = np.array(list(live), dtype=np.uint64)
        assert index.lookup(keys).tolist() == [live[k] for k in keys.tolist()]
        assert (index.lookup(gone) == -1).all() and len(index) == len(live)
