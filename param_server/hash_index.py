"""A vectorised open-addressing hash index from 64-bit keys to row numbers.

Why not a dict: a Python dict costs one interpreter round trip per key (about 10 M keys/s at
best for lookups, far less once rows are gathered); here every operation is a handful of numpy
passes over the whole batch, one pass per probe step. Linear probing with the load kept at or
under one half keeps probe sequences short, so a batch needs a few passes, not one per key.

Keys are never folded into the table size by their raw bits: the slot of a key is
``mix64(key) & (capacity - 1)`` and the full key is compared on every probe, so two keys never
share an entry. Deleted entries become tombstones; the index rehashes when live entries plus
tombstones pass the maximum load.

>>> index = HashIndex(capacity=8)
>>> index.insert(np.array([10, 20, 2**63], dtype=np.uint64), np.array([0, 1, 2]))
>>> index.lookup(np.array([20, 30, 2**63], dtype=np.uint64)).tolist()
[1, -1, 2]
>>> index.delete(np.array([20], dtype=np.uint64))
>>> index.lookup(np.array([20, 10], dtype=np.uint64)).tolist(), len(index)
([-1, 0], 2)
"""

from __future__ import annotations

import numpy as np

__all__ = ["HashIndex", "mix64", "EMPTY", "TOMBSTONE"]

EMPTY = -1
TOMBSTONE = -2
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """The splitmix64 finaliser of ``keys ^ seed``: a bijection that spreads every input bit.

    Structured IDs (a slot in the high bits, small integers in the low bits) would pile into a
    few buckets if used raw; after mixing, any subset of the output bits is close to uniform.

    >>> mix64(np.array([1, 2], dtype=np.uint64)).tolist() != [1, 2]
    True
    """
    x = np.asarray(keys, dtype=np.uint64) ^ np.uint64(seed)
    x = x ^ (x >> _S30)
    x *= _C1
    x ^= x >> _S27
    x *= _C2
    x ^= x >> _S31
    return x


class HashIndex:
    """Keys (``uint64``) to rows (``int32`` >= 0) with batch lookup, insert and delete.

    Memory: 12 bytes per entry (key + row) at a load of 1/4 to 1/2, so 24 to 48 bytes per key.
    """

    def __init__(self, capacity: int = 1024, max_load: float = 0.5) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity}")
        if not 0.1 <= max_load <= 0.9:
            raise ValueError(f"max_load must be in [0.1, 0.9], got {max_load}")
        self.max_load = max_load
        self._allocate(capacity)

    def __len__(self) -> int:
        return self._live

    @property
    def capacity(self) -> int:
        return self._rows.size

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._rows.nbytes

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The row of each key (``int64``), or -1 for keys not in the index."""
        pos = self._find(keys)
        rows = np.full(pos.size, -1, dtype=np.int64)
        found = pos >= 0
        rows[found] = self._rows[pos[found]]
        return rows

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add keys that are distinct and not yet present, each pointing at its row."""
        keys = np.asarray(keys, dtype=np.uint64)
        rows = np.asarray(rows, dtype=np.int32)
        self._reserve(keys.size)
        mask = np.int64(self.capacity - 1)
        pos = (mix64(keys) & np.uint64(mask)).astype(np.int64)
        pending = np.arange(keys.size)
        while pending.size:
            free = self._rows[pos] < 0
            cand, cand_pos = pending[free], pos[free]
            before = self._rows[cand_pos]
            # Several keys may race for one free entry: the last write wins, the rest probe on.
            self._rows[cand_pos] = rows[cand]
            won = self._rows[cand_pos] == rows[cand]
            self._keys[cand_pos[won]] = keys[cand[won]]
            self._tombstones -= int(np.count_nonzero(before[won] == TOMBSTONE))
            placed = np.zeros(pending.size, dtype=bool)
            placed[np.flatnonzero(free)[won]] = True
            pending, pos = pending[~placed], (pos[~placed] + 1) & mask
        self._live += keys.size

    def delete(self, keys: np.ndarray) -> None:
        """Remove keys that are present (absent keys are ignored)."""
        pos = self._find(keys)
        pos = np.unique(pos[pos >= 0])
        self._rows[pos] = TOMBSTONE
        self._live -= pos.size
        self._tombstones += pos.size

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys, rows) currently stored, in no particular order."""
        occupied = self._rows >= 0
        return self._keys[occupied], self._rows[occupied].astype(np.int64)

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """The entry position of each key, or -1: one vectorised probe step per loop turn."""
        keys = np.asarray(keys, dtype=np.uint64)
        mask = np.int64(self.capacity - 1)
        pos = (mix64(keys) & np.uint64(mask)).astype(np.int64)
        out = np.full(keys.size, -1, dtype=np.int64)
        pending = np.arange(keys.size)
        while pending.size:
            entry = self._rows[pos]
            hit = (entry >= 0) & (self._keys[pos] == keys[pending])
            out[pending[hit]] = pos[hit]
            go_on = (entry != EMPTY) & ~hit
            pending, pos = pending[go_on], (pos[go_on] + 1) & mask
        return out

    def _reserve(self, extra: int) -> None:
        """Grow (doubling) or clean tombstones so ``extra`` more keys fit under the max load."""
        if self._live + self._tombstones + extra <= self.max_load * self.capacity:
            return
        capacity = self.capacity
        # Clean tombstones in place only when that frees a real margin; otherwise double, so a
        # table hovering at the limit does not rehash on every batch.
        if self._live + extra > 0.75 * self.max_load * capacity:
            capacity *= 2
        while self._live + extra > self.max_load * capacity:
            capacity *= 2
        keys, rows = self.items()
        self._allocate(capacity)
        if keys.size:
            self.insert(keys, rows)

    def _allocate(self, capacity: int) -> None:
        self._keys = np.zeros(capacity, dtype=np.uint64)
        self._rows = np.full(capacity, EMPTY, dtype=np.int32)
        self._live = 0
        self._tombstones = 0
