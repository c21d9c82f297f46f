"""The ``hashed`` variant's folding: one function, applied by the parameter store and serving's mirror."""

from __future__ import annotations

import numpy as np

from evaluation.system import hashed_tables
from features.ids import feature_ids, is_hashed
from param_server.hashing import fold_ids
from param_server.store import ParamStore
from serving.mirror import ParamMirror


def test_folded_ids_keep_their_slot_and_never_read_as_raw_integers() -> None:
    folded = fold_ids(feature_ids(2, np.arange(100)), 8)
    assert np.unique(folded).size == 8 and bool(is_hashed(folded).all())


def test_store_with_hash_buckets_keeps_at_most_that_many_rows_and_mirror_reads_the_same() -> None:
    tables = hashed_tables(5)
    store, mirror = ParamStore(tables), ParamMirror(tables)
    items = feature_ids(2, [str(n) for n in range(50)])
    store.push_many(items, np.ones((50, 32), dtype=np.float32), ts=1.0)
    assert len(store.tables["item_id"].index) <= 5
    mirror.apply(store.delta(mirror.version))
    assert mirror.contains(items).all()
    assert np.array_equal(mirror.pull_many(items), store.pull_many(items))


def test_unhashed_tables_are_untouched() -> None:
    store = ParamStore()
    items = feature_ids(2, [str(n) for n in range(50)])
    store.push_many(items, np.ones((50, 32), dtype=np.float32), ts=1.0)
    assert len(store.tables["item_id"].index) == 50
