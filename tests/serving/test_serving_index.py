"""The retrieval index: exact below the size threshold, IVF above it, with measured recall and
updates by ID in both kinds."""

from __future__ import annotations

import numpy as np
import torch

from rtrec.recipe.model import RecModel
from serving.index import IndexPlan, ItemIndex, recall_at

PLAN = IndexPlan(ivf_min_items=5_000, nprobe=32)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_catalogue_size_picks_the_index_kind() -> None:
    small = ItemIndex.build(8, np.arange(100), unit_vectors(100, 8, 0), PLAN)
    large = ItemIndex.build(8, np.arange(6_000), unit_vectors(6_000, 8, 1), PLAN)
    assert (small.kind, large.kind) == ("flat", "ivf")
    assert recall_at(small, np.arange(100), unit_vectors(100, 8, 0), unit_vectors(20, 8, 2), 10) == 1.0


def tower_vectors(n_items: int, n_users: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Item and user vectors of the (untrained) model's towers over random sparse rows."""
    model, rng = RecModel(), np.random.default_rng(seed)
    rows = lambda *shape: torch.from_numpy(rng.normal(0, 0.1, shape).astype(np.float32))  # noqa: E731
    with torch.no_grad():
        items = model.item_vectors(rows(n_items, 32), rows(n_items, 32)).numpy()
        users = model.user_vectors(rows(n_users, 32), rows(n_users, 5, 32), torch.ones(n_users, 5),
                                   rows(n_users, 1, 32), torch.ones(n_users, 1)).numpy()
    return items, users


def test_ivf_recall_against_exact_search_on_model_vectors() -> None:
    items, users = tower_vectors(20_000, 200, seed=3)
    ids = np.arange(items.shape[0])
    index = ItemIndex.build(items.shape[1], ids, items, IndexPlan(ivf_min_items=10_000))
    assert index.kind == "ivf"
    assert recall_at(index, ids, items, users, 50) >= 0.95


def test_ivf_items_are_replaced_and_removed_by_id() -> None:
    ids, vectors = np.arange(6_000), unit_vectors(6_000, 8, 5)
    index = ItemIndex.build(8, ids, vectors, PLAN)
    target = unit_vectors(1, 8, 6)
    index.upsert(np.array([42]), target)  # item 42 now points exactly at the query
    assert index.search(target, 1)[1][0, 0] == 42 and len(index) == 6_000
    index.remove(np.array([42, 43]))
    assert 42 not in index.search(target, 50)[1][0] and len(index) == 5_998


def test_a_rebuild_is_due_when_the_catalogue_outgrows_its_index() -> None:
    index = ItemIndex(8, PLAN)
    index.upsert(np.arange(4_000), unit_vectors(4_000, 8, 7))
    assert not index.wants_rebuild()
    index.upsert(np.arange(4_000, 6_000), unit_vectors(2_000, 8, 8))
    assert index.wants_rebuild()  # flat, but past the IVF threshold
    ivf = ItemIndex.build(8, np.arange(6_000), unit_vectors(6_000, 8, 9), PLAN)
    assert not ivf.wants_rebuild()
    ivf.upsert(np.arange(6_000, 30_000), unit_vectors(24_000, 8, 10))
    assert ivf.wants_rebuild()  # 5 times the items it was trained with


def test_a_rebuild_starts_k_means_from_the_old_centroids_and_keeps_recall() -> None:
    items, users = tower_vectors(20_000, 200, seed=11)
    ids, plan = np.arange(items.shape[0]), IndexPlan(ivf_min_items=10_000)
    old = ItemIndex.build(items.shape[1], ids, items, plan)
    frozen = ItemIndex.build(items.shape[1], ids, items, IndexPlan(ivf_min_items=10_000, warm_iterations=0),
                             previous=old)
    np.testing.assert_allclose(frozen.centroids(), old.centroids(), atol=1e-6)  # no iteration: the old lists
    drifted = items + np.random.default_rng(12).normal(0, 0.02, items.shape).astype(np.float32)
    drifted /= np.linalg.norm(drifted, axis=1, keepdims=True)  # a dense sync moves every vector a little
    warm = ItemIndex.build(items.shape[1], ids, drifted, IndexPlan(ivf_min_items=10_000, recluster_every=1),
                           previous=old)
    cold = ItemIndex.build(items.shape[1], ids, drifted, plan)
    assert not np.array_equal(warm.centroids(), old.centroids())  # it did iterate
    assert recall_at(warm, ids, drifted, users, 50) >= min(0.95, recall_at(cold, ids, drifted, users, 50) - 0.01)
    assert ItemIndex(8).centroids() is None


def test_only_every_fifth_rebuild_runs_k_means_and_kept_centroids_keep_recall() -> None:
    items, users = tower_vectors(20_000, 200, seed=13)
    ids, plan = np.arange(items.shape[0]), IndexPlan(ivf_min_items=10_000)
    rng = np.random.default_rng(14)
    index = ItemIndex.build(items.shape[1], ids, items, plan)
    moved = []
    for sync in range(6):  # six dense syncs, each moving every vector a little
        items = items + rng.normal(0, 0.02, items.shape).astype(np.float32)
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        rebuilt = ItemIndex.build(items.shape[1], ids, items, plan, previous=index)
        moved.append(not np.array_equal(rebuilt.centroids(), index.centroids()))
        index = rebuilt
        if sync == 3:  # the stalest lists: four syncs of drift on the first build's centroids
            cold = ItemIndex.build(items.shape[1], ids, items, plan)
            # measured: 0.936 against a cold build's 0.960 (after the 5th, warm k-means: 0.936 against 0.947)
            assert recall_at(index, ids, items, users, 50) >= min(0.95, recall_at(cold, ids, items, users, 50) - 0.03)
    assert moved == [False, False, False, False, True, False]  # k-means on the 5th rebuild only
