"""The mirror and the item index follow the parameter server through deltas."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from param_server.client import ParamServerClient
from param_server.server import ServerThread
from param_server.store import ParamStore
from rtrec.recipe.model import REALTIME_FEATURES
from param_server.table import TableDelta
from param_server.store import Delta
from serving.index import ItemIndex, as_faiss_ids
from serving.main import build_serving
from serving.mirror import ParamMirror
from serving_fixtures import T0, Trained, clicks_of, item_rows, train


def assert_mirror_equals_store(mirror: ParamMirror, store: ParamStore) -> None:
    for name, table in store.tables.items():
        ids = table.delta(0).ids
        assert len(mirror.table(name)) == len(table) == ids.size
        np.testing.assert_array_equal(mirror.pull_many(ids), store.pull_many(ids))


def test_mirror_after_sync_equals_store_rows(trained: Trained) -> None:
    mirror = ParamMirror()
    mirror.apply(trained.store.delta(mirror.version))
    assert_mirror_equals_store(mirror, trained.store)
    assert mirror.version == trained.store.version


def test_incremental_deltas_equal_a_full_copy(trained: Trained) -> None:
    mirror = ParamMirror()
    mirror.apply(trained.store.delta(0))
    train(trained.trainer, clicks_of("u1", ["i1", "i2", "i3"], T0 + 700))
    applied = mirror.apply(trained.store.delta(mirror.version))
    assert 0 < applied.rows < sum(len(t) for t in trained.store.tables.values())
    assert_mirror_equals_store(mirror, trained.store)


def test_evicted_rows_leave_the_mirror(trained: Trained) -> None:
    mirror = ParamMirror()
    mirror.apply(trained.store.delta(0))
    before = len(mirror.table("item_id"))
    evicted = trained.store.expire(now=T0 + 365 * 86400.0)
    applied = mirror.apply(trained.store.delta(mirror.version))
    assert evicted > 0 and len(mirror.table("item_id")) == 0 < before
    assert applied.removed["item_id"].size == before
    assert_mirror_equals_store(mirror, trained.store)


def test_full_delta_replaces_the_table() -> None:
    mirror = ParamMirror()
    ids = np.array([2 << 56 | 1, 2 << 56 | 2], dtype=np.uint64)
    rows = np.ones((2, 32), dtype=np.float32)
    empty = np.empty(0, dtype=np.uint64)
    mirror.apply(Delta(1, {"item_id": TableDelta(ids, rows, empty)}))
    applied = mirror.apply(Delta(2, {"item_id": TableDelta(ids[1:], 2 * rows[1:], empty, full=True)}))
    assert applied.removed["item_id"].tolist() == ids[:1].tolist()
    assert mirror.contains(ids).tolist() == [False, True]
    assert mirror.pull_many(ids)[1].tolist() == [2.0] * 32


def test_index_upsert_replaces_and_remove_forgets() -> None:
    index = ItemIndex(dim=2)
    ids = np.array([1, 2, 3], dtype=np.int64)
    index.upsert(ids, np.eye(3, 2, dtype=np.float32))
    index.upsert(np.array([1], dtype=np.int64), np.array([[0.0, -1.0]], dtype=np.float32))
    assert len(index) == 3
    scores, found = index.search(np.array([[0.0, -1.0]], dtype=np.float32), 1)
    assert found.tolist() == [[1]] and scores.tolist() == [[1.0]]
    index.remove(np.array([1, 9], dtype=np.int64))
    assert len(index) == 2 and 1 not in index.search(np.array([[0.0, -1.0]], dtype=np.float32), 3)[1]


def test_sync_indexes_named_items_and_evictions_remove_them(trained: Trained) -> None:
    serving = build_serving(trained.store, reader=None, registry=CollectorRegistry())
    sync = serving.sync
    names = sorted({e.item_id for e in trained.events})
    sync.catalog.learn(names, None)
    sync.sync_once()
    ids, _ = item_rows(trained.store)
    assert len(sync.index) == ids.size > 0
    vectors = serving.sync.holder.current.item_vectors(ids[:5], np.zeros(5, np.uint64), np.zeros(5, bool))
    _, found = sync.index.search(vectors, 1)
    assert found[:, 0].tolist() == as_faiss_ids(ids[:5]).tolist()

    trained.store.expire(now=T0 + 365 * 86400.0)
    sync.sync_once()
    assert len(sync.index) == 0
    assert sync.metrics.rows_evicted._value.get() >= ids.size


def test_serving_fast_paths_equal_the_scorer(trained: Trained) -> None:
    """score_candidates / item_vectors over the mirror give the Scorer's numbers over the store."""
    from rtrec.recipe.examples import ExampleBatch
    from rtrec.recipe.trainer import Scorer

    serving = build_serving(trained.store, None, CollectorRegistry(), dense_interval_s=0)
    serving.sync.sync_once()
    model = serving.sync.holder.current
    reference = Scorer(trained.store, model.model, model.scorer.slots)
    items, cats = ["i1", "i5", "i9", "nope"], ["c1", None, "c3", "c0"]
    recent, context = ["i2", "i3"], {"device": "ios"}
    dense = np.random.default_rng(0).random((4, len(REALTIME_FEATURES))).astype(np.float32)
    fast = model.score_candidates("u3", recent, context, serving.recommender.catalog.feature_ids(items), cats, dense)
    batch = ExampleBatch.for_scoring(["u3"] * 4, items, cats, [context] * 4, [recent] * 4, dense)
    np.testing.assert_allclose(fast, reference.rank_many(batch), rtol=1e-5, atol=1e-6)
    catalog = serving.recommender.catalog
    catalog.learn(items, cats)
    vectors = model.item_vectors(catalog.feature_ids(items), *catalog.category_ids(catalog.feature_ids(items)))
    np.testing.assert_allclose(vectors, reference.embed_items(items, cats), rtol=1e-5, atol=1e-6)
    side = model.user_side("u3", recent, context)
    np.testing.assert_allclose(side.vector.numpy(), reference.embed_users(["u3"], [recent], [context]),
                               rtol=1e-5, atol=1e-6)


def test_a_shard_restarted_from_its_snapshot_is_copied_whole(trained: Trained) -> None:
    """After a restart the shard's rows are the snapshot's again and its versions restart there:
    an incremental delta would keep rows the shard no longer has."""
    store = trained.store
    serving = build_serving(store, None, CollectorRegistry(), dense_interval_s=0)
    serving.sync.sync_once()
    arrays, meta = store.export_state()  # the snapshot
    items = next(iter(t for n, t in store.tables.items() if n == "item_id")).delta(0).ids[:20]
    for _ in range(3):  # trained after the snapshot, seen by serving, then lost with the crash
        store.push_many(items, np.ones((items.size, 32), dtype=np.float32), ts=T0 + 10**6)
    serving.sync.sync_once()
    restored = ParamStore.from_state(arrays, meta, store.configs)
    restored.push_many(items[:2], np.ones((2, 32), dtype=np.float32), ts=T0 + 10**6)  # the replay begins
    serving.sync.params = restored  # the same address, a new process
    serving.sync.sync_once()
    assert_mirror_equals_store(serving.sync.mirror, restored)


def test_the_sync_thread_applies_a_push_as_it_lands_not_on_its_timer(trained: Trained) -> None:
    """Serving long-polls the shard: with a 5 s sync interval a push shows in the mirror well
    within a second; syncs stay ``min_interval_s`` apart while nothing changes."""
    with ServerThread(trained.store) as shard, ParamServerClient(shard.host, shard.port) as poller, \
            ParamServerClient(shard.host, shard.port) as worker:
        serving = build_serving(poller, None, CollectorRegistry(), sync_interval_s=5.0, min_sync_interval_s=0.1)
        serving.sync.sync_once()
        serving.sync.start()
        try:
            time.sleep(0.5)  # the thread is long-polling now
            items = on_loop(shard, lambda: trained.store.tables["item_id"].delta(0).ids[:5])
            pushed = time.monotonic()
            worker.push_many(items, np.ones((items.size, 32), dtype=np.float32), ts=T0 + 10**6)
            expected = on_loop(shard, lambda: trained.store.pull_many(items))
            while not np.array_equal(serving.sync.mirror.pull_many(items), expected):
                assert time.monotonic() - pushed < 1.5, "the push did not reach the mirror"
                time.sleep(0.01)
        finally:
            serving.sync.stop()
        assert serving.sync.syncs <= 4  # the first, maybe one racing the push, the push's: no busy loop


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux")
def test_index_rebuilds_run_niced_while_sparse_syncs_keep_the_priority_of_requests(trained: Trained) -> None:
    with ServerThread(trained.store) as shard, ParamServerClient(shard.host, shard.port) as poller:
        serving = build_serving(poller, None, CollectorRegistry(), min_sync_interval_s=0.05)
        seen = rebuild_and_sync_niceness(serving.sync, trained)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == {"sync": base, "rebuild": min(19, base + 3)}


def rebuild_and_sync_niceness(sync: Any, trained: Trained) -> dict[str, int]:
    """The niceness of the thread of the first index rebuild and of the first applied delta
    after ``sync.start(nice=3)``."""
    sync.catalog.learn(sorted({e.item_id for e in trained.events}), None)
    seen: dict[str, int] = {}

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    rebuild, apply = sync._reindex_all, sync.mirror.apply

    def noted_rebuild() -> None:
        seen.setdefault("rebuild", niceness())
        rebuild()

    def noted_apply(delta: Any) -> Any:
        seen.setdefault("sync", niceness())
        return apply(delta)

    sync._reindex_all = noted_rebuild  # type: ignore[method-assign]
    sync.mirror.apply = noted_apply  # type: ignore[method-assign]
    sync.start(nice=3)
    try:
        deadline = time.monotonic() + 10
        while "rebuild" not in seen or len(sync.index) == 0:  # the first sync pulls dense weights: a rebuild
            assert time.monotonic() < deadline, "no index rebuild within 10 s"
            time.sleep(0.02)
    finally:
        sync.stop()
    return seen


def test_dense_weights_are_pulled_every_dense_interval_of_the_sync_clock(trained: Trained) -> None:
    now = [0.0]
    serving = build_serving(trained.store, None, CollectorRegistry(), dense_interval_s=10.0)
    serving.sync.clock = lambda: now[0]
    pulled = []
    load = serving.sync._load_dense
    serving.sync._load_dense = lambda: pulled.append(now[0]) or load()  # type: ignore[method-assign]
    for now[0] in (0.0, 4.0, 9.9, 10.0, 15.0, 20.5, 21.0):
        serving.sync.sync_once()
    assert pulled == [0.0, 10.0, 20.5]


def on_loop(shard: ServerThread, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on the shard's event loop (the store is not thread-safe)."""
    async def run() -> Any:
        return fn()
    return shard.call(run)
