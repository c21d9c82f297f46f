"""One suite of checks, run against every implementation of the store API.

The in-process ParamStore is the reference; the RPC client, the sharded client over in-process
shards and the sharded client over real servers must behave the same.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Iterator

import numpy as np
import pytest

from features.ids import feature_ids
from param_server.client import ParamServerClient
from param_server.config import EmbeddingConfig
from param_server.initializers import Uniform
from param_server.optimizers import FTRL, Adagrad
from param_server.server import ServerThread
from param_server.sharding import ShardedClient
from param_server.store import ParamStore

TABLES = (
    EmbeddingConfig("user_id", slot=1, dim=8, admit_after=2, expire_after_s=100.0),
    EmbeddingConfig("item_id", slot=2, dim=8, initializer=Uniform(0.1, seed=3), optimizer=FTRL()),
    EmbeddingConfig("category", slot=3, dim=4, optimizer=Adagrad(lr=0.3)),
)


@pytest.fixture(params=["in_process", "rpc", "sharded_in_process", "sharded_rpc"])
def api(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    with ExitStack() as stack:
        def server(shard: int, shards: int) -> ParamServerClient:
            store = ParamStore(TABLES, tmp_path / "snap", shard, shards)
            running = stack.enter_context(ServerThread(store))
            return stack.enter_context(ParamServerClient(running.host, running.port))

        if request.param == "in_process":
            yield ParamStore(TABLES, tmp_path / "snap")
        elif request.param == "rpc":
            yield server(0, 1)
        elif request.param == "sharded_in_process":
            yield ShardedClient([ParamStore(TABLES, tmp_path / "snap", s, 3) for s in range(3)])
        else:
            yield stack.enter_context(ShardedClient([server(s, 3) for s in range(3)]))


def workload(api: Any) -> np.ndarray:
    """A few pushes touching several slots, repeats, admission and expiry."""
    rng = np.random.default_rng(7)
    users = feature_ids(1, [f"u{i}" for i in range(50)])
    items = feature_ids(2, np.arange(200))
    for step in range(6):
        batch = np.concatenate([users[rng.integers(0, 50, 64)], users[:5]])
        api.push_many(batch, rng.standard_normal((batch.size, 8)).astype(np.float32), ts=40.0 * step)
        batch = items[rng.zipf(1.3, 128) % 200]
        api.push_many(batch, rng.standard_normal((batch.size, 8)).astype(np.float32),
                      ts=np.full(batch.size, 40.0 * step), offsets={"actions": {step % 2: 10 * step}})
    return np.concatenate([users, items])


def reference_after_workload() -> tuple[ParamStore, np.ndarray]:
    store = ParamStore(TABLES)
    return store, workload(store)


def test_every_implementation_reads_what_the_reference_reads(api: Any) -> None:
    everything = workload(api)
    reference, _ = reference_after_workload()
    np.testing.assert_array_equal(api.pull_many(everything), reference.pull_many(everything))
    shuffled = everything[np.random.default_rng(1).permutation(everything.size)]
    np.testing.assert_array_equal(api.pull_many(shuffled), reference.pull_many(shuffled))


def test_delta_from_zero_holds_every_live_row_and_every_eviction(api: Any) -> None:
    workload(api)
    reference, _ = reference_after_workload()
    got, want = api.delta(0), reference.delta(0)
    assert set(got.tables) == set(want.tables)
    for name, table_delta in want.tables.items():
        mine = got.tables[name]
        assert sorted(mine.ids.tolist()) == sorted(table_delta.ids.tolist()), name
        assert sorted(mine.evicted.tolist()) == sorted(table_delta.evicted.tolist()), name
        order_mine, order_ref = np.argsort(mine.ids), np.argsort(table_delta.ids)
        np.testing.assert_array_equal(mine.rows[order_mine], table_delta.rows[order_ref])
    assert sum(len(d.evicted) for d in want.tables.values()) > 0  # the workload did expire rows


def test_delta_since_a_cursor_returns_only_later_changes(api: Any) -> None:
    items = feature_ids(2, np.arange(10))
    api.push_many(items, np.ones((10, 8), dtype=np.float32), ts=1.0)
    cursor = api.delta(0).version
    assert all(d.ids.size == 0 and d.evicted.size == 0 for d in api.delta(cursor).tables.values())
    api.push_many(items[:3], np.ones((3, 8), dtype=np.float32), ts=2.0)
    changed = api.delta(cursor).tables["item_id"]
    assert sorted(changed.ids.tolist()) == sorted(items[:3].tolist())
    np.testing.assert_array_equal(changed.rows[np.argsort(changed.ids)], api.pull_many(np.sort(items[:3])))


def test_unknown_ids_read_as_zeros_and_mixed_dims_are_a_value_error(api: Any) -> None:
    assert api.pull_many(feature_ids(2, [123456])).tolist() == [[0.0] * 8]
    with pytest.raises(ValueError):
        api.pull_many(np.concatenate([feature_ids(2, [1]), feature_ids(3, [1])]))
    with pytest.raises(ValueError):
        api.push_many(feature_ids(2, [1]), np.ones((1, 5), dtype=np.float32))
    with pytest.raises(ValueError):
        api.pull_many(feature_ids(77, [1]))


def test_non_finite_pushes_are_refused_and_change_nothing(api: Any) -> None:
    ids = feature_ids(2, [1, 2])
    api.push_many(ids, np.ones((2, 8), dtype=np.float32), ts=1.0)
    before = api.pull_many(ids)
    for bad in (np.nan, np.inf):
        grads = np.ones((2, 8), dtype=np.float32)
        grads[1, 3] = bad
        with pytest.raises(ValueError, match="finite"):
            api.push_many(ids, grads, ts=2.0)
    with pytest.raises(ValueError, match="finite"):
        api.push_dense({"w": np.array([1e39])})  # beyond float32: would become infinity
    assert api.pull_many(ids).tolist() == before.tolist()


def test_dense_tensors_round_trip_with_a_bumped_version(api: Any) -> None:
    tensors = {"mlp.w0": np.arange(6, dtype=np.float32).reshape(2, 3), "mlp.b0": np.zeros(3, np.float32)}
    first = api.push_dense(tensors)
    pulled = api.pull_dense()
    assert set(pulled.tensors) == set(tensors) and pulled.version == first
    np.testing.assert_array_equal(pulled.tensors["mlp.w0"], tensors["mlp.w0"])
    second = api.push_dense({"mlp.b0": np.ones(3)})
    assert second > first
    assert api.pull_dense(["mlp.b0"]).tensors["mlp.b0"].tolist() == [1.0, 1.0, 1.0]


def test_snapshot_and_stats_report_offsets_and_rows(api: Any) -> None:
    everything = workload(api)
    paths = api.snapshot({"actions": {3: 99}})
    assert paths
    stats = api.stats()
    reference, _ = reference_after_workload()
    rows = stats["rows"] if "rows" in stats else {n: t["rows"] for n, t in stats["tables"].items()}
    assert rows == {n: t["rows"] for n, t in reference.stats()["tables"].items()}
    assert everything.size > 0
