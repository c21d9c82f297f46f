"""A collisionless embedding table: 64-bit IDs to rows of a growing float32 array.

Every admitted ID owns one row; rows live in contiguous arrays that double when full, and rows
freed by expiry go to a free list and are handed out again before the arrays grow. Per row the
table keeps the key (8 bytes), the weights (4*dim), the optimizer state (4*state_width), the last
update's event time (8), the update count (4) and the version of its last change (8, -1 = free),
plus 24-48 bytes of hash index.

All batch operations are numpy passes over the whole batch; nothing loops over IDs in Python.

>>> from param_server.config import EmbeddingConfig
>>> from param_server.optimizers import SGD
>>> from param_server.initializers import Zeros
>>> table = EmbeddingTable(EmbeddingConfig("item_id", slot=2, dim=2, initializer=Zeros(), optimizer=SGD(lr=1.0)))
>>> ids = np.array([11, 12, 11], dtype=np.uint64)
>>> table.push_many(ids, np.ones((3, 2), dtype=np.float32), ts=100.0, version=1).admitted
2
>>> table.pull_many(np.array([11, 12, 13], dtype=np.uint64)).tolist()
[[-2.0, -2.0], [-1.0, -1.0], [0.0, 0.0]]
>>> sorted(table.delta(since=0).ids.tolist()), len(table)
([11, 12], 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from param_server.admission import CountMinSketch, threshold_filter
from param_server.config import EmbeddingConfig
from param_server.expiry import next_check, stale_rows
from param_server.hash_index import HashIndex

__all__ = ["EmbeddingTable", "TableDelta", "PushReport"]

FREE = -1  # version of a row that holds no ID


@dataclass(frozen=True)
class TableDelta:
    """What changed in one table since a version: apply ``evicted`` first, then upsert ``ids``/``rows``.

    ``full`` means the receiver must first drop everything it holds for this table.
    """

    ids: np.ndarray
    rows: np.ndarray
    evicted: np.ndarray
    full: bool = False


@dataclass(frozen=True)
class PushReport:
    """What a push did: IDs newly given a row, distinct IDs updated, IDs still waiting for admission."""

    admitted: int
    updated: int
    pending: int


def group_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort a batch once: (distinct ids, sort order, start of each group, size of each group).

    >>> [a.tolist() for a in group_ids(np.array([5, 3, 5], dtype=np.uint64))]
    [[3, 5], [1, 0, 2], [0, 1], [1, 2]]
    """
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = np.empty(sorted_ids.size, dtype=bool)
    first[:1] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, sorted_ids.size))
    return sorted_ids[starts], order, starts, counts


class EmbeddingTable:
    """The rows of one slot, with admission, optimizer, expiry and per-row versions."""

    def __init__(self, config: EmbeddingConfig, capacity: int = 1024,
                 max_evicted_log: int = 1 << 22) -> None:
        self.config = config
        self.dim = config.dim
        self.state_width = config.optimizer.state_width(config.dim)
        self.index = HashIndex()
        self.sketch = CountMinSketch() if config.admit_after > 1 else None
        self.max_evicted_log = max_evicted_log
        self.admissions = 0
        self.evictions = 0
        self.delta_floor = 0  # deltas since an older version must be full dumps (log trimmed)
        self.next_expiry_check = -np.inf
        self._used = 0  # rows ever handed out (high-water mark)
        self._free = np.empty(0, dtype=np.int64)
        self._evicted: list[tuple[int, np.ndarray]] = []  # (version, ids) per expiry pass
        self._allocate_arrays(capacity)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def capacity(self) -> int:
        return self.keys.size

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays, index and sketch (what a row really costs)."""
        arrays = (self.keys, self.weights, self.state, self.last_ts, self.updates, self.versions, self._free)
        sketch = self.sketch.nbytes if self.sketch is not None else 0
        return sum(a.nbytes for a in arrays) + self.index.nbytes + sketch

    # -- reads ---------------------------------------------------------------------------------

    def pull_many(self, ids: np.ndarray) -> np.ndarray:
        """The rows of ``ids`` (a copy, ``float32 (n, dim)``); IDs without a row read as zeros."""
        rows = self.index.lookup(ids)
        hit = rows >= 0
        if hit.all():
            return self.weights[rows]
        out = np.zeros((rows.size, self.dim), dtype=np.float32)
        out[hit] = self.weights[rows[hit]]
        return out

    def delta(self, since: int) -> TableDelta:
        """Rows changed and IDs evicted after version ``since`` (exactly those).

        A full dump (all live rows, nothing evicted) is returned when ``since`` predates the
        trimmed eviction log: the receiver must then drop what it holds for this table first.
        """
        versions = self.versions[: self._used]
        if since < self.delta_floor:
            rows = np.flatnonzero(versions != FREE)
            return TableDelta(self.keys[rows], self.weights[rows], np.empty(0, dtype=np.uint64), True)
        rows = np.flatnonzero(versions > since)
        evicted = [ids for version, ids in self._evicted if version > since]
        evicted_ids = np.concatenate(evicted) if evicted else np.empty(0, dtype=np.uint64)
        return TableDelta(self.keys[rows], self.weights[rows], evicted_ids)

    # -- writes --------------------------------------------------------------------------------

    def push_many(self, ids: np.ndarray, grads: np.ndarray, ts: float | np.ndarray,
                  version: int) -> PushReport:
        """Apply one batch of gradients: sum duplicates, admit new IDs, run the optimizer.

        ``ts`` is the event time of the batch (a scalar) or of each example (an array).
        """
        uniq, order, starts, counts = group_ids(ids)
        summed = grads[order] if uniq.size == ids.size else np.add.reduceat(grads[order], starts, axis=0)
        if np.ndim(ts):
            ts_uniq = np.maximum.reduceat(np.asarray(ts, dtype=np.float64)[order], starts)
        else:
            ts_uniq = np.full(uniq.size, float(ts))
        rows = self.index.lookup(uniq)
        missing = rows < 0
        admitted = 0
        if missing.any():
            rows[missing], admitted = self._admit(uniq[missing], counts[missing])
            ok = rows >= 0
            rows, summed, ts_uniq, counts = rows[ok], summed[ok], ts_uniq[ok], counts[ok]
        weights, state = self.weights[rows], self.state[rows]
        self.config.optimizer.apply(weights, state, summed)
        self.weights[rows] = weights
        self.state[rows] = state
        self.last_ts[rows] = np.maximum(self.last_ts[rows], ts_uniq)
        self.updates[rows] += counts.astype(np.uint32)
        self.versions[rows] = version
        return PushReport(admitted=admitted, updated=rows.size, pending=uniq.size - rows.size)

    def expire(self, now: float, version: int) -> np.ndarray:
        """Evict rows whose last update is older than the TTL at event time ``now``; returns their IDs."""
        ttl = self.config.expire_after_s
        self.next_expiry_check = next_check(now, ttl) if ttl else np.inf
        if ttl is None or self._used == 0:
            return np.empty(0, dtype=np.uint64)
        live = self.versions[: self._used] != FREE
        rows = np.flatnonzero(stale_rows(self.last_ts[: self._used], live, now, ttl))
        return self.evict_rows(rows, version)

    def evict_rows(self, rows: np.ndarray, version: int) -> np.ndarray:
        """Free ``rows`` (live rows): unindex their IDs, log them for deltas, reuse their memory."""
        ids = self.keys[rows].copy()
        if rows.size == 0:
            return ids
        self.index.delete(ids)
        self.versions[rows] = FREE
        self._free = np.concatenate([self._free, rows.astype(np.int64)])
        self.evictions += rows.size
        self._log_evicted(version, ids)
        return ids

    # -- snapshots -----------------------------------------------------------------------------

    def export_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Copies of the live rows (in row order), the eviction log and the sketch, plus scalars."""
        rows = np.flatnonzero(self.versions[: self._used] != FREE)
        arrays = {
            "keys": self.keys[rows], "weights": self.weights[rows], "state": self.state[rows],
            "last_ts": self.last_ts[rows], "updates": self.updates[rows], "versions": self.versions[rows],
            "evicted_ids": (np.concatenate([ids for _, ids in self._evicted])
                            if self._evicted else np.empty(0, dtype=np.uint64)),
            "evicted_versions": np.array([v for v, _ in self._evicted], dtype=np.int64),
            "evicted_sizes": np.array([ids.size for _, ids in self._evicted], dtype=np.int64),
        }
        if self.sketch is not None:
            arrays["sketch"] = self.sketch.counters.copy()
        meta = {"admissions": self.admissions, "evictions": self.evictions,
                "delta_floor": self.delta_floor, "next_expiry_check": (float(self.next_expiry_check)
                                      if np.isfinite(self.next_expiry_check) else None),
                "sketch_added": self.sketch.added if self.sketch is not None else 0}
        return arrays, meta

    @classmethod
    def from_state(cls, config: EmbeddingConfig, arrays: dict[str, np.ndarray], meta: dict) -> "EmbeddingTable":
        """Rebuild a table from :meth:`export_state`; reads, deltas and stats come back identical."""
        n = arrays["keys"].size
        table = cls(config, capacity=max(1024, 1 << max(n - 1, 0).bit_length()))
        if arrays["weights"].shape != (n, table.dim) or arrays["state"].shape != (n, table.state_width):
            raise ValueError(f"snapshot of {config.name} does not match its config (dim/optimizer)")
        rows = table._take_rows(n)
        for name in ("keys", "weights", "state", "last_ts", "updates", "versions"):
            getattr(table, name)[rows] = arrays[name]
        table.index.insert(arrays["keys"], rows)
        bounds = np.cumsum(arrays["evicted_sizes"])[:-1]
        chunks = np.split(arrays["evicted_ids"], bounds) if arrays["evicted_sizes"].size else []
        table._evicted = [(int(v), ids) for v, ids in zip(arrays["evicted_versions"], chunks)]
        if table.sketch is not None and "sketch" in arrays:
            table.sketch.counters[...] = arrays["sketch"]
            table.sketch.added = int(meta["sketch_added"])
        table.admissions, table.evictions = int(meta["admissions"]), int(meta["evictions"])
        table.delta_floor = int(meta["delta_floor"])
        check = meta["next_expiry_check"]
        table.next_expiry_check = -np.inf if check is None else float(check)
        return table

    # -- internals -----------------------------------------------------------------------------

    def _admit(self, new_ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, int]:
        """Rows for the new IDs that pass admission (-1 for those that must wait)."""
        rows = np.full(new_ids.size, -1, dtype=np.int64)
        if self.sketch is not None:
            admit = threshold_filter(self.sketch.add(new_ids, counts), self.config.admit_after)
        else:
            admit = np.ones(new_ids.size, dtype=bool)
        ids = new_ids[admit]
        if ids.size == 0:
            return rows, 0
        fresh = self._take_rows(ids.size)
        weights = self.config.initializer.values(ids, self.dim)
        self.keys[fresh] = ids
        self.weights[fresh] = weights
        self.state[fresh] = self.config.optimizer.init_state(weights)
        self.last_ts[fresh] = -np.inf
        self.updates[fresh] = 0
        self.index.insert(ids, fresh)
        self.admissions += ids.size
        rows[admit] = fresh
        return rows, int(ids.size)

    def _take_rows(self, n: int) -> np.ndarray:
        """``n`` free rows: reused ones from the free list first, then fresh ones (growing)."""
        reused = self._free[self._free.size - min(n, self._free.size):]
        self._free = self._free[: self._free.size - reused.size]
        extra = n - reused.size
        if self._used + extra > self.capacity:
            self._grow(self._used + extra)
        fresh = np.arange(self._used, self._used + extra, dtype=np.int64)
        self._used += extra
        return np.concatenate([reused, fresh]) if reused.size else fresh

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        old = (self.keys, self.weights, self.state, self.last_ts, self.updates, self.versions)
        self._allocate_arrays(capacity)
        for new, current in zip((self.keys, self.weights, self.state, self.last_ts, self.updates,
                                 self.versions), old):
            new[: self._used] = current[: self._used]

    def _allocate_arrays(self, capacity: int) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.weights = np.zeros((capacity, self.dim), dtype=np.float32)
        self.state = np.zeros((capacity, self.state_width), dtype=np.float32)
        self.last_ts = np.full(capacity, -np.inf, dtype=np.float64)
        self.updates = np.zeros(capacity, dtype=np.uint32)
        self.versions = np.full(capacity, FREE, dtype=np.int64)

    def _log_evicted(self, version: int, ids: np.ndarray) -> None:
        """Remember evictions for deltas; past ``max_evicted_log`` IDs, forget the oldest."""
        self._evicted.append((version, ids))
        total = sum(chunk.size for _, chunk in self._evicted)
        while total > self.max_evicted_log and len(self._evicted) > 1:
            dropped_version, dropped = self._evicted.pop(0)
            total -= dropped.size
            self.delta_floor = max(self.delta_floor, dropped_version)
