"""Invariants of a table under any sequence of pushes and expiries (growth, eviction, row reuse):
live IDs never share a row, and a copy kept in sync by deltas always equals the table."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from param_server.config import EmbeddingConfig
from param_server.initializers import Uniform
from param_server.optimizers import SGD
from param_server.table import EmbeddingTable

DIM = 2
ID_POOL = st.integers(0, 40).map(lambda k: (k * 0x9E3779B97F4A7C15) % 2**64)  # few IDs: many repeats

ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.lists(ID_POOL, min_size=1, max_size=12), st.floats(0.0, 5.0)),
        st.tuples(st.just("expire"), st.just([]), st.floats(0.0, 5.0)),
        st.tuples(st.just("sync"), st.just([]), st.just(0.0)),
    ),
    min_size=1, max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(ops)
def test_live_ids_never_share_a_row_and_deltas_replay_to_the_same_state(steps: list) -> None:
    table = EmbeddingTable(EmbeddingConfig("t", slot=1, dim=DIM, initializer=Uniform(0.1, seed=3),
                                           optimizer=SGD(lr=0.1), expire_after_s=6.0), capacity=2)
    copy: dict[int, np.ndarray] = {}  # what a serving replica holds
    synced, now, version = 0, 0.0, 0
    for op, keys, dt in steps:
        now += dt
        version += 1
        if op == "push":
            batch = np.array(keys, dtype=np.uint64)
            table.push_many(batch, np.ones((batch.size, DIM), np.float32), ts=now, version=version)
        elif op == "expire":
            table.expire(now=now, version=version)
        else:
            delta = table.delta(synced)
            if delta.full:
                copy.clear()
            for key in delta.evicted.tolist():
                copy.pop(key, None)
            copy.update(zip(delta.ids.tolist(), delta.rows.copy()))
            synced = version
            live = np.array(sorted(copy), dtype=np.uint64)
            rows = table.index.lookup(live) if live.size else np.zeros(0, np.int64)
            assert (rows >= 0).all(), "the copy holds an ID the table no longer has"
            assert np.unique(rows).size == rows.size, "two live IDs share a row"
            assert live.size == len(table.index)
            if live.size:
                np.testing.assert_array_equal(np.stack([copy[k] for k in live.tolist()]), table.pull_many(live))
