"""Serving's local, read-only copy of the parameter server's sparse rows, kept up to date by deltas.

The request path never talks to the parameter server: :class:`ParamMirror` answers ``pull_many``
(the one method :class:`rtrec.recipe.trainer.Scorer` needs) from memory. Each slot's rows live
in a :class:`MirrorTable` -- the parameter server's own vectorised :class:`HashIndex` from feature
ID to row, plus one growing ``float32`` array -- so applying a delta and pulling a batch are numpy
passes, never a loop over IDs.

Applying a delta follows :class:`param_server.table.TableDelta`'s rule: a ``full`` delta drops the
table first, then ``evicted`` IDs are removed, then ``ids``/``rows`` are upserted. One lock per
mirror is held while a delta is applied and while a batch is pulled: a pull of a few hundred rows
takes microseconds and an apply a few milliseconds, so a request waits at most one apply and
never sees a half-written row.

>>> from param_server.store import ParamStore
>>> from features.ids import feature_ids
>>> store, mirror = ParamStore(), ParamMirror()
>>> items = feature_ids(2, ["a", "b"])
>>> _ = store.push_many(items, np.ones((2, 32), dtype=np.float32), ts=1.0)
>>> applied = mirror.apply(store.delta(mirror.version))
>>> applied.rows, bool((mirror.pull_many(items) == store.pull_many(items)).all())
(2, True)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from features.ids import slot_of
from param_server.config import DEFAULT_TABLES, EmbeddingConfig
from param_server.hash_index import HashIndex
from param_server.hashing import buckets_by_slot, fold_by_slot
from param_server.table import TableDelta

__all__ = ["MirrorTable", "ParamMirror", "AppliedDelta"]


class MirrorTable:
    """Rows of one slot: feature ID -> row of a growing array; evicted rows are reused."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.index = HashIndex()
        self.weights = np.zeros((capacity, dim), dtype=np.float32)
        self._used = 0
        self._free = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def pull_many(self, ids: np.ndarray) -> np.ndarray:
        """Copies of the rows of ``ids`` ``(n, dim)``; IDs without a row read as zeros."""
        rows = self.index.lookup(ids)
        out = np.zeros((rows.size, self.dim), dtype=np.float32)
        hit = rows >= 0
        out[hit] = self.weights[rows[hit]]
        return out

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each ID has a row."""
        return self.index.lookup(ids) >= 0

    def ids(self) -> np.ndarray:
        """Every feature ID held, in no particular order."""
        return self.index.items()[0]

    def clear(self) -> None:
        self.index = HashIndex()
        self._used = 0
        self._free = np.empty(0, dtype=np.int64)

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Drop the rows of ``ids`` (absent IDs are ignored); returns the IDs that were present."""
        ids = np.unique(np.asarray(ids, dtype=np.uint64))
        rows = self.index.lookup(ids)
        present = rows >= 0
        self.index.delete(ids[present])
        self._free = np.concatenate([self._free, rows[present]])
        return ids[present]

    def upsert(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Set the rows of distinct ``ids`` to ``values`` ``(n, dim)``, adding IDs not held yet."""
        ids = np.asarray(ids, dtype=np.uint64)
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (ids.size, self.dim):
            raise ValueError(f"rows must be ({ids.size}, {self.dim}), got {values.shape}")
        rows = self.index.lookup(ids)
        new = rows < 0
        if new.any():
            rows[new] = self._take_rows(int(new.sum()))
            self.index.insert(ids[new], rows[new])
        self.weights[rows] = values

    def _take_rows(self, n: int) -> np.ndarray:
        reused = self._free[self._free.size - min(n, self._free.size):]
        self._free = self._free[: self._free.size - reused.size]
        extra = n - reused.size
        if self._used + extra > self.weights.shape[0]:
            capacity = self.weights.shape[0]
            while capacity < self._used + extra:
                capacity *= 2
            grown = np.zeros((capacity, self.dim), dtype=np.float32)
            grown[: self._used] = self.weights[: self._used]
            self.weights = grown
        fresh = np.arange(self._used, self._used + extra, dtype=np.int64)
        self._used += extra
        return np.concatenate([reused, fresh])


@dataclass(frozen=True)
class AppliedDelta:
    """What one delta changed, per table name: IDs upserted and IDs removed (incl. a full reset)."""

    changed: dict[str, np.ndarray] = field(default_factory=dict)
    removed: dict[str, np.ndarray] = field(default_factory=dict)
    rows: int = 0


class ParamMirror:
    """A read-only copy of every sparse table, with the parameter server's ``pull_many``."""

    def __init__(self, tables: Sequence[EmbeddingConfig] = DEFAULT_TABLES) -> None:
        self.tables = {t.name: MirrorTable(t.dim) for t in tables}
        self._by_slot = {t.slot: self.tables[t.name] for t in tables}
        self.slots = {t.name: t.slot for t in tables}
        self._buckets = buckets_by_slot(tables)  # slots folded into hashed rows, as the parameter server does
        self.version: Any = 0  # the delta cursor: opaque, passed back as received
        self._lock = threading.Lock()

    def table(self, name: str) -> MirrorTable:
        return self.tables[name]

    def folds(self, name: str) -> bool:
        """Whether the table's IDs share hashed rows (``hash_buckets``): its row IDs are then bucket IDs."""
        return self.slots[name] in self._buckets

    def row_ids(self, ids: np.ndarray) -> np.ndarray:
        """The row (bucket) ID each feature ID reads: itself, or its folded ID in a folded table."""
        return fold_by_slot(np.asarray(ids, dtype=np.uint64), self._buckets)

    def pull_many(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` ``float32 (n, dim)``, zeros for IDs without a row (the store's contract)."""
        ids = self.row_ids(ids)
        slots = slot_of(ids)
        with self._lock:
            if ids.size and (slots == slots[0]).all():
                return self._table_of(int(slots[0])).pull_many(ids)
            dims = {self._table_of(int(s)).dim for s in np.unique(slots)} or {next(iter(self.tables.values())).dim}
            if len(dims) != 1:
                raise ValueError(f"one pull must have a single dim, got {sorted(dims)}")
            out = np.zeros((ids.size, dims.pop()), dtype=np.float32)
            for s in np.unique(slots):
                where = slots == s
                out[where] = self._table_of(int(s)).pull_many(ids[where])
            return out

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each feature ID has a row in the mirror."""
        ids = self.row_ids(ids)
        out = np.zeros(ids.size, dtype=bool)
        slots = slot_of(ids)
        with self._lock:
            for s in np.unique(slots):
                where = slots == s
                table = self._by_slot.get(int(s))
                if table is not None:
                    out[where] = table.contains(ids[where])
        return out

    def apply(self, delta: Any) -> AppliedDelta:
        """Apply a :class:`param_server.store.Delta` (full reset, evictions, upserts) and take its cursor."""
        changed, removed, rows = {}, {}, 0
        with self._lock:
            for name, td in delta.tables.items():
                table = self.tables.get(name)
                if table is None:
                    continue  # a table the serving model does not read
                gone = self._apply_table(table, td)
                changed[name] = np.asarray(td.ids, dtype=np.uint64)
                removed[name] = np.setdiff1d(gone, changed[name])
                rows += int(td.ids.size)
            self.version = delta.version
        return AppliedDelta(changed, removed, rows)

    @staticmethod
    def _apply_table(table: MirrorTable, td: TableDelta) -> np.ndarray:
        """Apply one table's delta; returns the IDs it dropped (all of them on a full reset)."""
        gone = np.empty(0, dtype=np.uint64)
        if td.full:
            gone = table.ids()
            table.clear()
        if td.evicted.size:
            gone = np.union1d(gone, table.remove(td.evicted))
        if td.ids.size:
            uniq, last = np.unique(td.ids[::-1], return_index=True)  # a later duplicate wins
            table.upsert(uniq, td.rows[::-1][last])
        return gone

    def _table_of(self, slot: int) -> MirrorTable:
        table = self._by_slot.get(slot)
        if table is None:
            raise ValueError(f"no table for slot {slot}; mirrored: {sorted(self._by_slot)}")
        return table
