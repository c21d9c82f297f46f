"""The raw names and categories of the items serving can recommend, keyed by item feature ID.

The parameter server knows items only by 64-bit feature ID, and string IDs are hashed into it
(``features.ids``), so a synced row cannot be turned back into ``"i42"``. Serving learns names
from what it sees: integer-like IDs (``"1193"``) decode exactly from their feature ID; other
names come from the feature store (the trending/popular rankings, read every sync, with their
categories) and from requests (``/score`` item IDs, users' recent items). Only named items enter
the retrieval index; a category learned later re-embeds the item (the item tower reads it).
Each category is also kept as its feature ID in arrays behind a vectorised hash index
(:meth:`ItemCatalog.category_ids`), so re-embedding 100,000 items after a dense sync looks their
categories up in a few numpy calls instead of 100,000 dictionary reads and string hashes.

>>> from features.ids import feature_ids
>>> catalog = ItemCatalog(item_slot=2, category_slot=3)
>>> fids = feature_ids(2, ["i1", "7"])
>>> catalog.learn(["i1"], ["shoes"]).tolist() == fids[:1].tolist()
True
>>> catalog.names(fids), catalog.categories(fids)
(['i1', '7'], ['shoes', None])
>>> ids, known = catalog.category_ids(fids)
>>> known.tolist(), bool(ids[0] == feature_ids(3, ["shoes"])[0])
([True, False], True)
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from features.ids import VALUE_BITS, feature_ids, is_hashed
from param_server.hash_index import HashIndex

__all__ = ["ItemCatalog"]

_VALUE_MASK = np.uint64((1 << VALUE_BITS) - 1)


class ItemCatalog:
    """Item feature ID <-> raw item ID, plus the last known category of each item."""

    def __init__(self, item_slot: int, category_slot: int) -> None:
        self.item_slot, self.category_slot = item_slot, category_slot
        self._names: dict[int, str] = {}
        self._categories: dict[int, str] = {}
        self._rows = HashIndex()  # item feature ID -> row below; only items with a known category
        self._category_ids = np.zeros(0, dtype=np.uint64)  # the category's feature ID (category_slot)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._names)

    def learn(self, names: Sequence[str], categories: Sequence[str | None] | None = None) -> np.ndarray:
        """Remember names (and categories, where given); returns the feature IDs whose entry changed."""
        if not names:
            return np.empty(0, dtype=np.uint64)
        fids = feature_ids(self.item_slot, list(names))
        cats = categories if categories is not None else [None] * len(names)
        changed = []
        recategorised: dict[int, str] = {}
        with self._lock:
            for fid, name, cat in zip(fids.tolist(), names, cats):  # per name: dict updates
                if fid not in self._names:
                    self._names[fid] = name
                    changed.append(fid)
                if cat and self._categories.get(fid) != cat:
                    self._categories[fid] = cat
                    recategorised[fid] = cat
                    changed.append(fid)
            if recategorised:
                self._set_category_ids(np.fromiter(recategorised, dtype=np.uint64, count=len(recategorised)),
                                       feature_ids(self.category_slot, list(recategorised.values())))
        return np.unique(np.asarray(changed, dtype=np.uint64))

    def category_ids(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The feature ID of each item's last known category (``category_slot``), and whether it is
        known: what the item tower reads, vectorised (0 and False where unknown)."""
        fids = np.asarray(fids, dtype=np.uint64)
        with self._lock:
            rows = self._rows.lookup(fids)
            known = rows >= 0
            ids = np.zeros(fids.size, dtype=np.uint64)
            ids[known] = self._category_ids[rows[known]]
        return ids, known

    def _set_category_ids(self, fids: np.ndarray, category_ids: np.ndarray) -> None:
        """Store the category feature IDs of distinct items (the caller holds the lock)."""
        rows = self._rows.lookup(fids)
        new = rows < 0
        if new.any():
            start = len(self._rows)
            rows[new] = np.arange(start, start + int(new.sum()))
            self._rows.insert(fids[new], rows[new])
            if len(self._rows) > self._category_ids.size:
                grown = np.zeros(max(1024, 2 * len(self._rows)), dtype=np.uint64)
                grown[:self._category_ids.size] = self._category_ids
                self._category_ids = grown
        self._category_ids[rows] = category_ids

    def learned(self, fids: np.ndarray) -> np.ndarray:
        """Whether each feature ID was learned (by name; exactly decodable IDs may not be)."""
        with self._lock:
            return np.fromiter((f in self._names for f in np.asarray(fids, dtype=np.uint64).tolist()),
                               dtype=bool, count=np.size(fids))

    def learned_ids(self) -> np.ndarray:
        """Feature IDs of every learned name (sorted)."""
        with self._lock:
            return np.sort(np.fromiter(self._names, dtype=np.uint64, count=len(self._names)))

    def known(self, fids: np.ndarray) -> np.ndarray:
        """Whether each feature ID has a name (learned, or an exactly decodable integer)."""
        return self.learned(fids) | ~is_hashed(np.asarray(fids, dtype=np.uint64))

    def names(self, fids: np.ndarray) -> list[str | None]:
        """The raw ID of each feature ID (None when unknown)."""
        fids = np.asarray(fids, dtype=np.uint64)
        exact = ~is_hashed(fids)
        values = (fids & _VALUE_MASK).tolist()
        with self._lock:
            return [self._names.get(f) or (str(v) if e else None)
                    for f, v, e in zip(fids.tolist(), values, exact.tolist())]

    def categories(self, fids: np.ndarray) -> list[str | None]:
        """The last known category of each item (None when unknown)."""
        with self._lock:
            return [self._categories.get(f) for f in np.asarray(fids, dtype=np.uint64).tolist()]

    def feature_ids(self, names: Sequence[str]) -> np.ndarray:
        """Feature IDs of raw item IDs (no lookup; names need not be known)."""
        return feature_ids(self.item_slot, list(names))
