"""A collisionless embedding table: 64-bit IDs to rows of a growing float32 array.

Every admitted ID owns one row; rows live in contiguous arrays, and rows freed by expiry go to a
free list and are handed out again before the arrays grow. Per row the table keeps the key (8
bytes), the weights (4*dim), the optimizer state (4*state_width), the last update's event time
(8), the update count (4) and the version of its last change (8, -1 = free), plus 24-48 bytes of
hash index and up to 2 bytes of change log.

Growth never copies a big table. Small arrays double (with a copy) as usual; past
``reserve_after`` rows the arrays move once into anonymous mappings reserved for ``reserve_rows``
rows (:mod:`param_server.memory`: address space only, memory is taken page by page as rows are
written, a little ahead of use), and from then on growing is re-slicing a longer view of the same
memory, in steps of ``GROW_STEP`` rows. The hash index rehashes incrementally
(:mod:`param_server.hash_index`). So a push that admits new IDs costs about the same at 10M rows
as at 100K: on a shard, whose event loop serves one request at a time, the one-go doubling at
8.4M rows (arrays copied, index rehashed) made one push take 6.8 s on a 2-core host. Where the
mapping is refused (``vm.overcommit_memory = 2``, a small ``ulimit -v``) the arrays keep doubling
with a copy, as before.

Deltas read a change log: the rows each push touched, with its version, kept up to
``max_change_log`` row entries (default: half the rows in use, at least 65,536). ``delta(since)``
gathers the entries newer than ``since`` and checks each row's version, so it costs what changed,
not the table's size; when ``since`` predates the kept log (``change_floor``), or when so much
changed that a pass over every row's version is cheaper, it does that pass instead -- the same
answer either way. Only a ``since`` older than the trimmed *eviction* log (``delta_floor``) gets a
full dump, as before.

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

import bisect
import logging
import sys
from dataclasses import dataclass

import numpy as np

from param_server.admission import CountMinSketch, threshold_filter
from param_server.config import EmbeddingConfig
from param_server.expiry import next_check, stale_rows
from param_server.hash_index import HashIndex
from param_server.memory import reserve_rows

__all__ = ["EmbeddingTable", "TableDelta", "PushReport"]

log = logging.getLogger(__name__)

FREE = -1  # version of a row that holds no ID
RESERVE_AFTER = 1 << 16  # rows: beyond this the arrays live in reserved mappings, grown in place
RESERVE_ROWS = 1 << 27  # rows of address space reserved per array (no memory until written)
GROW_STEP = 1 << 16  # rows added at a time once reserved
WRITE_AHEAD = 1 << 16  # rows of reserved arrays written ahead of use (see _write_ahead)
MIN_CHANGE_LOG = 1 << 16  # row entries the change log may always keep
SCAN_RATIO = 8  # a delta over more than 1/8 of the rows reads every row's version instead
_ROW_ARRAYS = ("keys", "weights", "state", "last_ts", "updates", "versions")


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
                 max_evicted_log: int = 1 << 22, max_change_log: int | None = None,
                 reserve_after: int = RESERVE_AFTER, reserve_rows: int = RESERVE_ROWS,
                 index: HashIndex | None = None) -> None:
        """``max_change_log``: row entries of change log kept (None: half the rows in use, at
        least ``MIN_CHANGE_LOG``); ``reserve_after``/``reserve_rows``: see the module doc."""
        self.config = config
        self.dim = config.dim
        self.state_width = config.optimizer.state_width(config.dim)
        self.index = index if index is not None else HashIndex()
        self.sketch = CountMinSketch() if config.admit_after > 1 else None
        self.max_evicted_log = max_evicted_log
        self.max_change_log = max_change_log
        self.reserve_after, self.reserve_rows = reserve_after, reserve_rows
        self.admissions = 0
        self.evictions = 0
        self.delta_floor = 0  # deltas since an older version must be full dumps (log trimmed)
        self.change_floor = 0  # deltas since an older version scan every row's version
        self.next_expiry_check = -np.inf
        self._used = 0  # rows ever handed out (high-water mark)
        self._free = np.empty(0, dtype=np.int64)
        self._evicted: list[tuple[int, np.ndarray]] = []  # (version, ids) per expiry pass
        # The change log: per push, its version, the rows it changed and the running total of
        # row entries logged (ever) up to it; _change_base is that total before the first kept.
        self._change_versions: list[int] = []
        self._change_rows: list[np.ndarray] = []
        self._change_ends: list[int] = []
        self._change_base = 0
        self._reserved: dict[str, np.ndarray] | None = None  # full-length views of the mappings
        self._reserve_refused = False  # the platform refused a reservation: grow by copies
        self._ready: dict[str, int] = {}  # per reserved array, rows below this have been written
        self._allocate_arrays(capacity)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def capacity(self) -> int:
        return self.keys.size

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays, index, change log and sketch (what a row really costs).

        Reserved arrays count up to their capacity (the rows in use, rounded up to ``GROW_STEP``):
        the rest of the reservation is address space that holds no memory.
        """
        arrays = (self.keys, self.weights, self.state, self.last_ts, self.updates, self.versions, self._free)
        sketch = self.sketch.nbytes if self.sketch is not None else 0
        changes = sum(sys.getsizeof(rows) for rows in self._change_rows)  # data + array headers
        return sum(a.nbytes for a in arrays) + self.index.nbytes + changes + sketch

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
        """Rows changed and IDs evicted after version ``since`` (exactly those), in row order.

        A full dump (all live rows, nothing evicted) is returned when ``since`` predates the
        trimmed eviction log: the receiver must then drop what it holds for this table first.
        """
        if since < self.delta_floor:
            rows = np.flatnonzero(self.versions[: self._used] != FREE)
            return TableDelta(self.keys[rows], self.weights[rows], np.empty(0, dtype=np.uint64), True)
        rows = self.changed_rows(since)
        evicted = [ids for version, ids in self._evicted if version > since]
        evicted_ids = np.concatenate(evicted) if evicted else np.empty(0, dtype=np.uint64)
        return TableDelta(self.keys[rows], self.weights[rows], evicted_ids)

    def changed_rows(self, since: int) -> np.ndarray:
        """The live rows whose last change is after version ``since``, ascending.

        From the change log when it reaches back to ``since`` and what changed is under
        1/``SCAN_RATIO`` of the rows; otherwise one pass over every row's version.
        """
        rows = self._logged_rows(since)
        return rows if rows is not None else np.flatnonzero(self.versions[: self._used] > since)

    def _logged_rows(self, since: int) -> np.ndarray | None:
        """:meth:`changed_rows` from the change log, or None where a pass over the versions must do."""
        if since < self.change_floor:
            return None
        start = bisect.bisect_right(self._change_versions, since)
        before = self._change_ends[start - 1] if start else self._change_base
        logged = (self._change_ends[-1] if self._change_ends else self._change_base) - before
        if logged == 0:
            return np.empty(0, dtype=np.int64)
        if logged * SCAN_RATIO > self._used:
            return None
        parts = self._change_rows[start:]
        rows = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        rows.sort()  # np.unique is a hash table in numpy 2.x: ~20x slower than sort + mask here
        distinct = np.ones(rows.size, dtype=bool)
        np.not_equal(rows[1:], rows[:-1], out=distinct[1:])
        rows = rows[distinct].astype(np.int64)
        return rows[self.versions[rows] > since]  # changed again out of order, or freed: not live

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
        if rows.size:
            self._log_changes(version, rows)
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
        """Rebuild a table from :meth:`export_state`; reads, deltas and stats come back identical.

        The change log starts empty: a delta since a version older than the newest restored row
        reads every row's version (``change_floor``).
        """
        n = arrays["keys"].size
        table = cls(config)
        if arrays["weights"].shape != (n, table.dim) or arrays["state"].shape != (n, table.state_width):
            raise ValueError(f"snapshot of {config.name} does not match its config (dim/optimizer)")
        rows = table._take_rows(n)
        for name in _ROW_ARRAYS:
            getattr(table, name)[rows] = arrays[name]
        table.index.insert(arrays["keys"], rows)
        table.index.finish_migration()
        table.change_floor = int(arrays["versions"].max()) if n else 0
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
        self.last_ts[self._used: self._used + extra] = -np.inf  # reserved memory starts as zeros
        self.versions[self._used: self._used + extra] = FREE
        self._used += extra
        if extra and self._reserved is not None:
            self._write_ahead(extra)
        return np.concatenate([reused, fresh]) if reused.size else fresh

    def _write_ahead(self, extra: int) -> None:
        """Write the pages of unused reserved rows ahead of use, each array at its own lead.

        First writes fault pages in (huge pages: 2 MiB each, zeroed, sometimes after compacting
        memory, ~10 ms apiece on a busy host). Rows taken in order would hit a page boundary of
        every array at the same push (every 524,288 rows, all six at once: a 60 ms push); array
        ``i`` is kept ``(i + 1) / 6 * WRITE_AHEAD`` rows ahead instead, catching up by at most
        twice the rows just taken, so the faults fall on different pushes.
        """
        assert self._reserved is not None
        for i, name in enumerate(_ROW_ARRAYS):
            array = self._reserved[name]
            start = max(self._ready.get(name, 0), self._used)
            target = min(self._used + WRITE_AHEAD * (i + 1) // len(_ROW_ARRAYS), start + 2 * extra, len(array))
            if target > start:
                array[start:target] = 0
                self._ready[name] = target

    def _grow(self, needed: int) -> None:
        """Room for ``needed`` rows: a longer view of the reservation, or doubled arrays (a copy)."""
        if needed > self.reserve_after and not self._reserve_refused:
            if self._reserved is None or needed > self._reserved["keys"].shape[0]:
                self._move_to_reservation(max(self.reserve_rows, 2 * needed))
            if self._reserved is not None:
                limit = self._reserved["keys"].shape[0]
                capacity = min(-(-needed // GROW_STEP) * GROW_STEP, limit)
                self._view_reserved(capacity)
                return
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        old = tuple(getattr(self, name) for name in _ROW_ARRAYS)
        self._reserved = None
        self._allocate_arrays(capacity)
        for name, current in zip(_ROW_ARRAYS, old):
            getattr(self, name)[: self._used] = current[: self._used]

    def _move_to_reservation(self, rows: int) -> None:
        """Copy the rows in use into fresh reserved mappings of ``rows`` rows (once per table,
        or again with a copy if the table outgrows them); on failure keep the current arrays."""
        if self._reserved is not None:
            log.warning("table %s outgrew its reservation of %d rows: moving %d rows (one copy)",
                        self.config.name, self._reserved["keys"].shape[0], self._used)
        shapes = self._row_shapes()
        reserved = {}
        for name, (dtype, width) in shapes.items():
            array = reserve_rows(rows, dtype, width)
            if array is None:
                log.warning("cannot reserve %d rows of address space for table %s; growing by copies",
                            rows, self.config.name)
                self._reserve_refused = True  # the doubling below copies the current views out
                self._reserved = None
                return
            reserved[name] = array
        for name in _ROW_ARRAYS:
            reserved[name][: self._used] = getattr(self, name)[: self._used]
        self._reserved = reserved
        self._ready = {}
        self._view_reserved(self.capacity)

    def _view_reserved(self, capacity: int) -> None:
        assert self._reserved is not None
        for name in _ROW_ARRAYS:
            setattr(self, name, self._reserved[name][:capacity])

    def _row_shapes(self) -> dict[str, tuple[type, int | None]]:
        return {"keys": (np.uint64, None), "weights": (np.float32, self.dim),
                "state": (np.float32, self.state_width), "last_ts": (np.float64, None),
                "updates": (np.uint32, None), "versions": (np.int64, None)}

    def _allocate_arrays(self, capacity: int) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.weights = np.zeros((capacity, self.dim), dtype=np.float32)
        self.state = np.zeros((capacity, self.state_width), dtype=np.float32)
        self.last_ts = np.full(capacity, -np.inf, dtype=np.float64)
        self.updates = np.zeros(capacity, dtype=np.uint32)
        self.versions = np.full(capacity, FREE, dtype=np.int64)

    # -- change log ----------------------------------------------------------------------------

    def _change_logged(self) -> int:
        return (self._change_ends[-1] if self._change_ends else self._change_base) - self._change_base

    def _log_changes(self, version: int, rows: np.ndarray) -> None:
        """Remember the rows a push changed; past the limit, forget the oldest pushes."""
        if self._change_versions and version < self._change_versions[-1]:
            # Out of order (the store never does this): the log must stay sorted by version, so
            # deltas since anything before it read every row's version from now on.
            self._drop_changes(len(self._change_versions))
        end = (self._change_ends[-1] if self._change_ends else self._change_base) + rows.size
        self._change_versions.append(version)
        self._change_rows.append(rows.astype(np.int32))
        self._change_ends.append(end)
        limit = self.max_change_log if self.max_change_log is not None else max(MIN_CHANGE_LOG, self._used // 2)
        if end - self._change_base > limit:
            # Drop the fewest oldest pushes that bring the log under the limit.
            self._drop_changes(bisect.bisect_left(self._change_ends, end - limit) + 1)

    def _drop_changes(self, count: int) -> None:
        if count <= 0:
            return
        self.change_floor = max(self.change_floor, max(self._change_versions[:count]))
        self._change_base = self._change_ends[count - 1]
        del self._change_versions[:count], self._change_rows[:count], self._change_ends[:count]

    def _log_evicted(self, version: int, ids: np.ndarray) -> None:
        """Remember evictions for deltas; past ``max_evicted_log`` IDs, forget the oldest."""
        self._evicted.append((version, ids))
        total = sum(chunk.size for _, chunk in self._evicted)
        while total > self.max_evicted_log and len(self._evicted) > 1:
            dropped_version, dropped = self._evicted.pop(0)
            total -= dropped.size
            self.delta_floor = max(self.delta_floor, dropped_version)
