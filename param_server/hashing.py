"""Folding feature IDs into a fixed number of buckets per slot (the "hashed embeddings" baseline).

A table with ``hash_buckets`` set (:class:`param_server.config.EmbeddingConfig`) keeps at most
that many rows: every ID of its slot is mapped to one of ``hash_buckets`` bucket IDs, so distinct
users or items share rows (collisions) instead of the table growing. The parameter server folds on
pull and push and serving's mirror folds on read with this one function, so both always agree on
which row an ID reads.

A folded ID keeps its slot and has the ``hashed`` bit set (:mod:`features.ids`), so it can never be
mistaken for an exactly-decodable raw ID (serving decodes item names from such IDs).

>>> from features.ids import feature_ids, is_hashed, slot_of
>>> ids = feature_ids(2, np.arange(1000))
>>> folded = fold_ids(ids, 10)
>>> len(set(folded.tolist())), bool((slot_of(folded) == 2).all()), bool(is_hashed(folded).all())
(10, True, True)
>>> fold_by_slot(np.concatenate([ids[:3], feature_ids(1, [5])]), {2: 1}).tolist() == \\
...     [int(fold_ids(ids[:1], 1)[0])] * 3 + [int(feature_ids(1, [5])[0])]
True
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from features.ids import slot_of
from param_server.hash_index import mix64

__all__ = ["fold_ids", "fold_by_slot", "buckets_by_slot"]

_SLOT_MASK = np.uint64(0xFF << 56)
_HASHED_BIT = np.uint64(1 << 55)
_SEED = 0x9E37


def fold_ids(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Each feature ID hashed into one of ``buckets`` bucket IDs of its own slot."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    ids = np.asarray(ids, dtype=np.uint64)
    return (ids & _SLOT_MASK) | _HASHED_BIT | (mix64(ids, _SEED) % np.uint64(buckets))


def fold_by_slot(ids: np.ndarray, buckets: Mapping[int, int]) -> np.ndarray:
    """``ids`` with those of the slots in ``buckets`` folded (no copy when ``buckets`` is empty)."""
    ids = np.asarray(ids, dtype=np.uint64)
    if not buckets or ids.size == 0:
        return ids
    slots = slot_of(ids)
    out = ids.copy()
    for slot, n in buckets.items():
        where = slots == slot
        if where.any():
            out[where] = fold_ids(ids[where], n)
    return out


def buckets_by_slot(tables: object) -> dict[int, int]:
    """``{slot: hash_buckets}`` of the tables (``EmbeddingConfig`` s) that fold their IDs."""
    return {t.slot: t.hash_buckets for t in tables if getattr(t, "hash_buckets", None)}  # type: ignore[attr-defined]
