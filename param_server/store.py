"""The in-process parameter store of one shard: sparse tables per slot, dense tensors, versions.

:class:`ParamStore` is the reference implementation of the parameter-server API; the RPC client
(:mod:`param_server.client`) and the sharded client (:mod:`param_server.sharding`) expose the same
methods -- ``pull_many``, ``push_many``, ``delta``, ``snapshot``, ``stats``, ``pull_dense``,
``push_dense`` -- and tests run one check suite against all of them.

Versions: one counter per store, bumped by every write (a push, a dense push, an expiry pass
that evicted something). Every row records the version of its last change, so
``delta(since)`` is one comparison over the row versions. A delta's ``version`` is the cursor to
pass back next time (an int here, a tuple of ints for the sharded client).

Event clock: expiry runs on the newest pushed event time, so a replay expires rows as the live
stream did. Pushed times are clamped at ``wall clock + max_event_ahead_s`` (counted in
``stats()["future_ts_clamped"]`` and logged): one batch stamped years ahead would otherwise move
the clock there and make every row stale at the next expiry pass.

>>> from features.ids import feature_ids
>>> store = ParamStore()
>>> items = feature_ids(2, ["a", "b"])
>>> store.push_many(items, np.zeros((2, 32), dtype=np.float32), ts=1.7e9)
1
>>> store.pull_many(items).shape, sorted(store.delta(0).tables["item_id"].ids.tolist()) == sorted(items.tolist())
((2, 32), True)
>>> store.push_dense({"mlp.w0": np.ones((2, 3))})
2
>>> store.pull_dense(["mlp.w0"]).version
2
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from features.ids import slot_of
from param_server.config import DEFAULT_TABLES, EmbeddingConfig, validate_tables
from param_server.hashing import buckets_by_slot, fold_by_slot
from param_server.table import EmbeddingTable, TableDelta
from rtrec.settings import DEFAULT_MAX_EVENT_AHEAD_S

__all__ = ["ParamStore", "Delta", "DenseParams", "Offsets", "merge_offsets"]

log = logging.getLogger(__name__)

Offsets = dict[str, dict[int, int]]  # topic -> partition -> next offset to consume
MAX_DENSE_NAME = 200


@dataclass(frozen=True)
class Delta:
    """Changes since a version, per table (by name); ``version`` is the cursor for the next call."""

    version: int | tuple[int, ...]
    tables: dict[str, TableDelta]


@dataclass(frozen=True)
class DenseParams:
    """Named float32 tensors and the store version of their last change."""

    tensors: dict[str, np.ndarray]
    version: int | tuple[int, ...]


@dataclass
class SnapshotInfo:
    path: str | None = None
    version: int = 0
    wall_time: float | None = None


def merge_offsets(current: Offsets, new: Mapping[str, Mapping[int, int]] | None) -> Offsets:
    """Offsets after ``new``: per partition the larger one (progress never goes backwards).

    >>> merge_offsets({"actions": {0: 5}}, {"actions": {0: 3, 1: 9}})
    {'actions': {0: 5, 1: 9}}
    """
    merged = {topic: dict(parts) for topic, parts in current.items()}
    for topic, parts in (new or {}).items():
        if not isinstance(topic, str) or not isinstance(parts, Mapping):
            raise ValueError("offsets must map topic -> {partition: offset}")
        mine = merged.setdefault(topic, {})
        for partition, offset in parts.items():
            partition, offset = int(partition), int(offset)
            if partition < 0 or offset < 0:
                raise ValueError(f"negative partition or offset in offsets: {partition}, {offset}")
            mine[partition] = max(mine.get(partition, 0), offset)
    return merged


class ParamStore:
    """One shard's sparse tables (one per slot) and dense tensors, updated in batches."""

    def __init__(self, tables: Sequence[EmbeddingConfig] = DEFAULT_TABLES,
                 snapshot_dir: str | Path | None = None, shard: int = 0, num_shards: int = 1,
                 max_event_ahead_s: float = DEFAULT_MAX_EVENT_AHEAD_S,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``max_event_ahead_s`` bounds pushed event times against ``wall_clock`` (see the module doc)."""
        validate_tables(tables)
        self.configs = tuple(tables)
        self.tables = {c.name: EmbeddingTable(c) for c in self.configs}
        self._by_slot = {c.slot: self.tables[c.name] for c in self.configs}
        self._buckets = buckets_by_slot(self.configs)  # slots whose IDs share hashed rows
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self.shard, self.num_shards = shard, num_shards
        self.version = 0
        self.event_clock = -np.inf  # the latest event time pushed (clamped, see _event_times)
        self.max_event_ahead_s = float(max_event_ahead_s)
        self.wall_clock = wall_clock
        self.future_ts_clamped = 0  # pushes whose event time was beyond the bound
        self.offsets: Offsets = {}
        self.dense: dict[str, np.ndarray] = {}
        self.dense_version = 0
        self.last_snapshot = SnapshotInfo()
        # Recovery: a new id per store instance (process start, restore), and the offsets the
        # state reached when it began; a worker that sees the epoch change replays from there.
        self.incarnation = uuid.uuid4().hex
        self.restored_offsets: Offsets = {}

    # -- sparse --------------------------------------------------------------------------------

    def pull_many(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (``float32 (n, dim)``, zeros for IDs without a row); read-only.

        All slots in one call must share a dim.
        """
        ids = fold_by_slot(_as_ids(ids), self._buckets)
        groups = self._groups(ids)
        if len(groups) == 1:
            table, _ = groups[0]
            return table.pull_many(ids)
        out = np.zeros((ids.size, self._common_dim(groups)), dtype=np.float32)
        for table, where in groups:
            out[where] = table.pull_many(ids[where])
        return out

    def push_many(self, ids: np.ndarray, grads: np.ndarray, ts: float | np.ndarray | None = None,
                  offsets: Mapping[str, Mapping[int, int]] | None = None) -> int:
        """Apply gradients (``float32 (n, dim)``) for ``ids``; returns the new version.

        ``ts``: event time of the batch or of each row (default: the latest seen). ``offsets``:
        the Kafka offsets this batch brings the state up to; recorded in the next snapshot.
        Each occurrence of an ID counts as one sighting for admission; duplicates are summed.
        """
        ids = fold_by_slot(_as_ids(ids), self._buckets)
        grads = np.asarray(grads, dtype=np.float32)
        if grads.ndim != 2 or grads.shape[0] != ids.size:
            raise ValueError(f"grads must be (n, dim) with n = {ids.size}, got {grads.shape}")
        if not np.isfinite(grads).all():  # one NaN would spread through every row it touches
            raise ValueError("gradients must be finite (got NaN or infinity)")
        ts = self._event_times(ts, ids.size)
        groups = self._groups(ids)
        self._common_dim(groups, grads.shape[1])
        self.offsets = merge_offsets(self.offsets, offsets)
        self.version += 1
        for table, where in groups:
            if where is None:
                table.push_many(ids, grads, ts, self.version)
            else:
                table.push_many(ids[where], grads[where], ts if np.ndim(ts) == 0 else ts[where], self.version)
        self._maybe_expire()
        return self.version

    def expire(self, now: float | None = None) -> int:
        """Evict rows of every table with a TTL that are stale at event time ``now``; returns how many."""
        now = self.event_clock if now is None else float(now)
        version = self.version + 1
        evicted = sum(t.expire(now, version).size for t in self.tables.values())
        if evicted:
            self.version = version
            log.info("expired %d stale rows at event time %.0f (version %d)", evicted, now, version)
        return evicted

    def delta(self, since: int = 0) -> Delta:
        """Exactly the rows changed and IDs evicted after version ``since``, per table."""
        since = int(since)
        return Delta(version=self.version, tables={n: t.delta(since) for n, t in self.tables.items()})

    # -- dense ---------------------------------------------------------------------------------

    def pull_dense(self, names: Sequence[str] | None = None) -> DenseParams:
        """Copies of the named dense tensors (all when ``names`` is None) and their version."""
        if names is None:
            names = list(self.dense)
        unknown = [n for n in names if n not in self.dense]
        if unknown:
            raise ValueError(f"unknown dense tensors: {unknown[:5]}")
        return DenseParams({n: self.dense[n].copy() for n in names}, self.dense_version)

    def push_dense(self, tensors: Mapping[str, np.ndarray]) -> int:
        """Replace (or add) named dense tensors with new values; returns the new version."""
        checked = {}
        for name, value in tensors.items():
            if not isinstance(name, str) or not 0 < len(name) <= MAX_DENSE_NAME:
                raise ValueError(f"dense tensor names must be 1-{MAX_DENSE_NAME} characters, got {name!r}")
            with np.errstate(over="ignore"):
                checked[name] = np.array(value, dtype=np.float32, order="C", copy=True)
            if not np.isfinite(checked[name]).all():
                raise ValueError(f"dense tensor {name!r} must be finite (got NaN or infinity, or beyond float32)")
        self.version += 1
        self.dense.update(checked)
        self.dense_version = self.version
        return self.version

    # -- operations ----------------------------------------------------------------------------

    def snapshot(self, offsets: Mapping[str, Mapping[int, int]] | None = None) -> str:
        """Write an atomic snapshot (with the Kafka offsets it reflects) to ``snapshot_dir``; returns its path."""
        from param_server.snapshot import write_snapshot

        if self.snapshot_dir is None:
            raise ValueError("this store has no snapshot_dir")
        self.offsets = merge_offsets(self.offsets, offsets)
        path = write_snapshot(self.snapshot_dir, self.export_state())
        self.mark_snapshot(path, self.version)
        return str(path)

    def epoch(self) -> str:
        """This store's incarnation id: it changes when the shard restarts (from a snapshot or empty)."""
        return self.incarnation

    def mark_snapshot(self, path: str | Path, version: int) -> None:
        self.last_snapshot = SnapshotInfo(str(path), version, time.time())

    def stats(self) -> dict:
        """A JSON-able summary: version, rows and counters per table, offsets, last snapshot."""
        tables = {
            name: {"slot": t.config.slot, "dim": t.dim, "rows": len(t), "capacity": t.capacity,
                   "admissions": t.admissions, "evictions": t.evictions, "bytes": t.nbytes}
            for name, t in self.tables.items()
        }
        return {"version": self.version, "shard": self.shard, "num_shards": self.num_shards,
                "event_clock": _json_float(self.event_clock), "future_ts_clamped": self.future_ts_clamped,
                "dense_version": self.dense_version,
                "dense_tensors": len(self.dense), "tables": tables,
                "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in self.offsets.items()},
                "epoch": self.incarnation,
                "restored_offsets": {t: {str(p): o for p, o in parts.items()}
                                     for t, parts in self.restored_offsets.items()},
                "snapshot": {"path": self.last_snapshot.path, "version": self.last_snapshot.version,
                             "wall_time": self.last_snapshot.wall_time}}

    def export_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Copies of everything a snapshot holds: (arrays by name, JSON-able metadata)."""
        from param_server.config import tables_to_json

        arrays: dict[str, np.ndarray] = {}
        tables_meta = {}
        for name, table in self.tables.items():
            table_arrays, tables_meta[name] = table.export_state()
            arrays.update({f"sparse.{name}.{k}": v for k, v in table_arrays.items()})
        arrays.update({f"dense.{name}": value.copy() for name, value in self.dense.items()})
        meta = {"version": self.version, "event_clock": _json_float(self.event_clock),
                "dense_version": self.dense_version, "shard": self.shard, "num_shards": self.num_shards,
                "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in self.offsets.items()},
                "tables": tables_meta, "dense": sorted(self.dense), "config": tables_to_json(self.configs)}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: dict,
                   tables: Sequence[EmbeddingConfig] = DEFAULT_TABLES,
                   snapshot_dir: str | Path | None = None,
                   max_event_ahead_s: float = DEFAULT_MAX_EVENT_AHEAD_S) -> "ParamStore":
        """Rebuild a store from :meth:`export_state` output under the given table config."""
        store = cls(tables, snapshot_dir, int(meta["shard"]), int(meta["num_shards"]), max_event_ahead_s)
        missing = [c.name for c in store.configs if c.name not in meta["tables"]]
        if missing:
            raise ValueError(f"snapshot has no tables {missing}; the slot configuration changed")
        for name in store.tables:
            prefix = f"sparse.{name}."
            table_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            store.tables[name] = EmbeddingTable.from_state(store.tables[name].config, table_arrays,
                                                           meta["tables"][name])
        store._by_slot = {t.config.slot: t for t in store.tables.values()}
        store.dense = {name: np.array(arrays[f"dense.{name}"]) for name in meta["dense"]}
        store.version, store.dense_version = int(meta["version"]), int(meta["dense_version"])
        clock = meta["event_clock"]
        store.event_clock = -np.inf if clock is None else float(clock)
        store._clamp_restored_clock()
        store.offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in meta["offsets"].items()}
        store.restored_offsets = {t: dict(parts) for t, parts in store.offsets.items()}
        return store

    # -- internals -----------------------------------------------------------------------------

    def _groups(self, ids: np.ndarray) -> list[tuple[EmbeddingTable, np.ndarray | None]]:
        """The tables a batch touches and where (None = the whole batch is one slot)."""
        slots = slot_of(ids)
        if slots.size == 0 or (slots == slots[0]).all():
            slot = int(slots[0]) if slots.size else self.configs[0].slot
            return [(self._table_of(slot), None)]
        return [(self._table_of(int(s)), np.flatnonzero(slots == s)) for s in np.unique(slots)]

    def _table_of(self, slot: int) -> EmbeddingTable:
        table = self._by_slot.get(slot)
        if table is None:
            raise ValueError(f"no embedding table for slot {slot}; configured: {sorted(self._by_slot)}")
        return table

    @staticmethod
    def _common_dim(groups: list[tuple[EmbeddingTable, np.ndarray | None]], expected: int | None = None) -> int:
        dims = {table.dim for table, _ in groups}
        if expected is not None:
            dims.add(expected)
        if len(dims) != 1:
            raise ValueError(f"one batch must have a single dim; got dims {sorted(dims)} for "
                             f"slots {[t.config.name for t, _ in groups]}")
        return dims.pop()

    def _event_times(self, ts: float | np.ndarray | None, n: int) -> float | np.ndarray:
        """Validate event times, clamp them at the bound, and advance the event clock."""
        if ts is None:
            return self.event_clock if np.isfinite(self.event_clock) else 0.0
        if np.ndim(ts) == 0:
            ts = float(ts)
        else:
            ts = np.asarray(ts, dtype=np.float64)
            if ts.shape != (n,):
                raise ValueError(f"ts must be a number or an array of {n} event times, got {ts.shape}")
        if not np.all(np.isfinite(ts)):
            raise ValueError("event times must be finite")
        ts = self._clamp_future(ts)
        latest = float(np.max(ts)) if np.size(ts) else -np.inf
        self.event_clock = max(self.event_clock, latest)
        return ts

    def _clamp_future(self, ts: float | np.ndarray) -> float | np.ndarray:
        """Event times no later than wall clock + bound: the rows and the clock never run ahead."""
        horizon = self.wall_clock() + self.max_event_ahead_s
        if np.max(ts, initial=-np.inf) <= horizon:  # the usual case: nothing to copy
            return ts
        self.future_ts_clamped += 1
        log.warning("push with event time %.0f is %.0f s ahead of the wall clock (bound %.0f s); clamped",
                    float(np.max(ts)), float(np.max(ts)) - (horizon - self.max_event_ahead_s),
                    self.max_event_ahead_s)
        return min(ts, horizon) if np.ndim(ts) == 0 else np.minimum(ts, horizon)

    def _clamp_restored_clock(self) -> None:
        """Bring a restored clock back within the bound (snapshots written before it existed).

        The tables' next expiry checks were scheduled from that clock: they are reset so the next
        push runs an expiry pass on the clamped clock instead of waiting years for the old one.
        """
        horizon = self.wall_clock() + self.max_event_ahead_s
        if self.event_clock <= horizon:
            return
        log.warning("restored event clock %.0f is beyond the wall clock + %.0f s; clamped",
                    self.event_clock, self.max_event_ahead_s)
        self.event_clock = horizon
        for table in self.tables.values():
            table.next_expiry_check = -np.inf

    def _maybe_expire(self) -> None:
        if any(self.event_clock >= t.next_expiry_check for t in self.tables.values()
               if t.config.expire_after_s is not None):
            self.expire()


def _as_ids(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"ids must be a 1-d array of uint64 feature IDs, got {ids.dtype} {ids.shape}")
    return ids.astype(np.uint64, copy=False)


def _json_float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
