"""A vectorised open-addressing hash index from 64-bit keys to row numbers.

Why not a dict: a Python dict costs one interpreter round trip per key (about 10 M keys/s at
best for lookups, far less once rows are gathered); here every operation is a handful of numpy
passes over the whole batch, one pass per probe step. Linear probing with the load kept at or
under one half keeps probe sequences short, so a batch needs a few passes, not one per key.

Keys are never folded into the table size by their raw bits: the slot of a key is
``mix64(key) & (capacity - 1)`` and the full key is compared on every probe, so two keys never
share an entry. Deleted entries become tombstones.

Growth is incremental. When live entries plus tombstones would pass the maximum load, a new
entry array (twice the size, or the same size to clean tombstones) becomes the one inserts go
to, and the old one is drained into it a slice at a time: each later insert moves a number of
old entries proportional to its own size (at least ``migrate_step`` positions), so no single
call rehashes millions of keys -- on a shard that is an event-loop stall of seconds at 10M keys.
While draining, a key lives in exactly one of the two arrays (a moved entry leaves a tombstone
behind, which keeps the old probe chains intact); lookups and deletes try the new array, then
the old one. An index no larger than ``migrate_step`` entries is rehashed in one go.

Entries hold ``row + 1`` so that 0 means empty: fresh arrays come zeroed from the kernel
(``np.zeros`` maps pages that are zeroed on first write) instead of from a pass writing a fill
value over them. The next array is allocated ahead and its pages written a slice per insert
(from ``PREPARE_AT`` of the maximum load), so the first inserts into it, whose random keys
land all over it, do not fault in hundreds of megabytes at once.

>>> index = HashIndex(capacity=8)
>>> index.insert(np.array([10, 20, 2**63], dtype=np.uint64), np.array([0, 1, 2]))
>>> index.lookup(np.array([20, 30, 2**63], dtype=np.uint64)).tolist()
[1, -1, 2]
>>> index.delete(np.array([20], dtype=np.uint64))
>>> index.lookup(np.array([20, 10], dtype=np.uint64)).tolist(), len(index)
([-1, 0], 2)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["HashIndex", "mix64", "EMPTY", "TOMBSTONE"]

EMPTY = 0  # an entry never used (entries hold row + 1)
TOMBSTONE = -1  # an entry whose key was deleted (or moved to the new array while draining)
MIGRATE_STEP = 1 << 14  # old positions drained per insert at least (~1 ms of work)
PREPARE_AT = 0.9  # of the maximum load: start writing the pages of the next array
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
    Transiently more: from ``PREPARE_AT`` of the maximum load the next array (twice the size) is
    written ahead, and while it drains the old one both are held (up to 3x the current array).
    """

    def __init__(self, capacity: int = 1024, max_load: float = 0.5, migrate_step: int = MIGRATE_STEP) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity}")
        if not 0.1 <= max_load <= 0.9:
            raise ValueError(f"max_load must be in [0.1, 0.9], got {max_load}")
        if migrate_step < 1:
            raise ValueError(f"migrate_step must be >= 1, got {migrate_step}")
        self.max_load = max_load
        self.migrate_step = migrate_step
        self._keys, self._slots = _allocate(capacity)
        self._live = 0  # live keys, both arrays
        self._tombstones = 0  # tombstones in the current array
        self._old: tuple[np.ndarray, np.ndarray] | None = None  # the array being drained
        self._old_live = 0  # live keys still in the old array
        self._cursor = 0  # old positions below this are drained
        self._per_key = 0.0  # old positions to drain per key inserted
        self._next: tuple[np.ndarray, np.ndarray] | None = None  # the array being prepared
        self._touched = 0  # positions of the next array already written
        self._touch_per_key = 0.0  # next-array positions to write per key inserted

    def __len__(self) -> int:
        return self._live

    @property
    def capacity(self) -> int:
        return self._slots.size

    @property
    def migrating(self) -> bool:
        """Whether an old array is still being drained into the current one."""
        return self._old is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the current array, the one draining and the written part of the one prepared."""
        old = sum(a.nbytes for a in self._old) if self._old is not None else 0
        prepared = self._touched * 12 if self._next is not None else 0
        return self._keys.nbytes + self._slots.nbytes + old + prepared

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The row of each key (``int64``), or -1 for keys not in the index."""
        keys = np.asarray(keys, dtype=np.uint64)
        rows = _rows_of(self._keys, self._slots, keys)
        if self._old is not None:
            miss = np.flatnonzero(rows < 0)
            if miss.size:
                rows[miss] = _rows_of(*self._old, keys[miss])
        return rows

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add keys that are distinct and not yet present, each pointing at its row."""
        keys = np.asarray(keys, dtype=np.uint64)
        rows = np.asarray(rows, dtype=np.int64)
        if keys.size == 0:
            return
        self._reserve(keys.size)
        self._tombstones -= _place(self._keys, self._slots, keys, (rows + 1).astype(np.int32))
        self._live += keys.size

    def delete(self, keys: np.ndarray) -> None:
        """Remove keys that are present (absent keys are ignored)."""
        keys = np.asarray(keys, dtype=np.uint64)
        pos = _find(self._keys, self._slots, keys)
        hit = np.unique(pos[pos >= 0])
        self._slots[hit] = TOMBSTONE
        self._live -= hit.size
        self._tombstones += hit.size
        if self._old is not None:
            old_keys, old_slots = self._old
            rest = keys[pos < 0]
            old_pos = _find(old_keys, old_slots, rest)
            old_hit = np.unique(old_pos[old_pos >= 0])
            old_slots[old_hit] = TOMBSTONE
            self._live -= old_hit.size
            self._old_live -= old_hit.size

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys, rows) currently stored, in no particular order."""
        parts = [(self._keys, self._slots)] + ([self._old] if self._old is not None else [])
        keys, rows = [], []
        for key_array, slot_array in parts:
            occupied = slot_array > 0
            keys.append(key_array[occupied])
            rows.append(slot_array[occupied].astype(np.int64) - 1)
        return np.concatenate(keys), np.concatenate(rows)

    def finish_migration(self) -> None:
        """Drain whatever is left of the old array now (one pass; a stall on a big index)."""
        if self._old is not None:
            self._drain(self._old[1].size - self._cursor)

    def _reserve(self, extra: int) -> None:
        """Make room for ``extra`` more keys under the max load: drain, prepare, grow or clean."""
        if self._old is not None:
            self._drain(max(self.migrate_step, math.ceil(extra * self._per_key)))
        # Every live key ends up in the current array (the old array's too): count them all.
        total = self._live + self._tombstones + extra
        limit = self.max_load * self.capacity
        if total <= limit:
            if self._old is None and total > PREPARE_AT * limit and self.capacity > self.migrate_step:
                self._prepare(extra, total, limit)
            return
        self.finish_migration()  # growing again before the drain ended (a burst): finish it first
        if self._live + self._tombstones + extra <= limit:
            return
        capacity = self._grown_capacity(self._live + extra)
        new, self._next = self._next, None
        if new is None or new[1].size < capacity:
            new = _allocate(capacity)
        else:
            _touch(new, self._touched, new[1].size)  # whatever the preparation did not reach
        self._old = (self._keys, self._slots)
        self._old_live, self._cursor = self._live, 0
        self._keys, self._slots = new
        self._tombstones = 0
        # Drain the old array before the new one fills: with ``room`` keys of headroom, moving
        # 2 * old_capacity / room positions per key inserted finishes with half the room to spare.
        room = self.max_load * self.capacity - self._live - extra
        self._per_key = 2.0 * self._old[1].size / max(room, 1.0)
        self._drain(max(self.migrate_step, math.ceil(extra * self._per_key)))

    def _grown_capacity(self, live: float) -> int:
        """The next array's size for ``live`` keys: the same (to clean tombstones) or doubled."""
        capacity = self.capacity
        # Clean tombstones (into a new array of the same size) only when that frees a real margin;
        # otherwise double, so a table hovering at the limit does not rehash on every batch.
        if live > 0.75 * self.max_load * capacity:
            capacity *= 2
        while live > self.max_load * capacity:
            capacity *= 2
        return capacity

    def _prepare(self, extra: int, total: int, limit: float) -> None:
        """Allocate the next array ahead of time and write its pages a slice per insert.

        A fresh array's pages are zeroed by the kernel on first write, and random keys write
        pages all over it: the first push of 16,384 new IDs into the 384 MB array that a table
        switches to at 8.4M rows took ~1 s (numpy's big arrays use 2 MiB huge pages; with 4 KiB
        pages the first pushes of 4096 IDs still took 35-49 ms of CPU each, against ~7 ms).
        Written ahead, from when the load passes ``PREPARE_AT`` of the maximum, at a pace that
        finishes with a third of the remaining headroom to spare, each insert pays a slice
        (~2.8 MB per 4096 keys at 10M keys: one or two huge-page faults).
        """
        if self._next is None:
            # If every key of the headroom arrived live, would this array still be worth keeping?
            self._next = _allocate(self._grown_capacity(self._live + (limit - total) + extra))
            self._touched = 0
            self._touch_per_key = 1.5 * self._next[1].size / max(limit - total, 1.0)
        size = self._next[1].size
        if self._touched < size:
            stop = min(size, self._touched + max(self.migrate_step, math.ceil(extra * self._touch_per_key)))
            _touch(self._next, self._touched, stop)
            self._touched = stop

    def _drain(self, positions: int) -> None:
        """Move the live entries of the next ``positions`` old positions into the current array."""
        if self._old is None:
            return
        old_keys, old_slots = self._old
        stop = min(self._cursor + positions, old_slots.size)
        span = old_slots[self._cursor: stop]
        occupied = np.flatnonzero(span > 0)
        if occupied.size:
            self._tombstones -= _place(self._keys, self._slots, old_keys[self._cursor: stop][occupied],
                                       span[occupied])
            span[occupied] = TOMBSTONE  # keeps the old probe chains of keys not yet moved
            self._old_live -= occupied.size
        self._cursor = stop
        if stop == old_slots.size:
            self._old, self._old_live, self._cursor, self._per_key = None, 0, 0, 0.0


def _allocate(capacity: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(capacity, dtype=np.uint64), np.zeros(capacity, dtype=np.int32)


def _touch(arrays: tuple[np.ndarray, np.ndarray], start: int, stop: int) -> None:
    """Write zeros over positions ``[start, stop)`` so the kernel backs them with memory now."""
    for array in arrays:
        array[start:stop] = 0


def _find(key_array: np.ndarray, slot_array: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The entry position of each key, or -1: one vectorised probe step per loop turn."""
    mask = np.int64(slot_array.size - 1)
    pos = (mix64(keys) & np.uint64(mask)).astype(np.int64)
    out = np.full(keys.size, -1, dtype=np.int64)
    pending = np.arange(keys.size)
    while pending.size:
        entry = slot_array[pos]
        hit = (entry > 0) & (key_array[pos] == keys[pending])
        out[pending[hit]] = pos[hit]
        go_on = (entry != EMPTY) & ~hit
        pending, pos = pending[go_on], (pos[go_on] + 1) & mask
    return out


def _rows_of(key_array: np.ndarray, slot_array: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = _find(key_array, slot_array, keys)
    rows = np.full(pos.size, -1, dtype=np.int64)
    found = pos >= 0
    rows[found] = slot_array[pos[found]].astype(np.int64) - 1
    return rows


def _place(key_array: np.ndarray, slot_array: np.ndarray, keys: np.ndarray, slots: np.ndarray) -> int:
    """Write distinct absent ``keys`` with their (distinct, > 0) ``slots``; returns tombstones reused."""
    mask = np.int64(slot_array.size - 1)
    pos = (mix64(keys) & np.uint64(mask)).astype(np.int64)
    pending = np.arange(keys.size)
    reused = 0
    while pending.size:
        free = slot_array[pos] <= 0
        cand, cand_pos = pending[free], pos[free]
        before = slot_array[cand_pos]
        # Several keys may race for one free entry: the last write wins, the rest probe on.
        slot_array[cand_pos] = slots[cand]
        won = slot_array[cand_pos] == slots[cand]
        key_array[cand_pos[won]] = keys[cand[won]]
        reused += int(np.count_nonzero(before[won] == TOMBSTONE))
        placed = np.zeros(pending.size, dtype=bool)
        placed[np.flatnonzero(free)[won]] = True
        pending, pos = pending[~placed], (pos[~placed] + 1) & mask
    return reused
