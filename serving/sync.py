"""The sync loop: pull the rows changed since the last sync as soon as training pushes them, apply,
re-index.

The loop long-polls: ``delta(since, wait_s=interval_s)`` returns as soon as a training step has
changed a shard (or after ``interval_s`` with nothing), so a step reaches serving within about one
delta round trip instead of waiting for a timer; syncs are at least ``min_interval_s`` apart, which
bounds their CPU while the worker pushes many steps a second.

One :meth:`SyncLoop.sync_once`:

1. ``delta(since)`` from the parameter server (all shards through the sharded client) and apply
   it to the mirror (evictions, then upserts; a ``full`` delta replaces a table); when a shard's
   epoch changed (it restarted from its snapshot), a full copy instead, and every item re-indexed;
2. the first sync and then the first one ``dense_interval_s`` or more after the last dense one (by
   ``clock``: monotonic time live, the replay clock in ``rtrec eval``), ``pull_dense``: a new model is built beside the
   old one and swapped in by one reference assignment, then every item is re-embedded into a new
   index that replaces the old one (the item tower changed, so every vector did). The second dense
   pull comes ``dense_phase`` x ``dense_interval_s`` later than the interval alone would have it:
   serving processes started together (``rtrec serve --processes N`` gives process ``k`` the phase
   ``k / N``) then rebuild their indexes at different times instead of all competing for the CPU
   at once;
3. otherwise only the items whose rows changed (or whose name/category was just learned) are
   re-embedded and upserted into the index, and evicted items are removed from it;
4. item names and categories: the entries of the feature store's item catalogue added or changed
   since the last sync (:meth:`features.reader.FeatureReader.catalog_since`), see
   :mod:`serving.catalog`; a changed category re-embeds the item.

A failed sync logs, counts ``rtrec_serving_sync_errors`` and leaves the previous state serving;
items it could not re-index are retried on the next sync.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np
import redis

from features.reader import FeatureReader
from rtrec.errors import RtrecError
from rtrec.niceness import NicedWorker
from serving.catalog import ItemCatalog
from serving.index import ItemIndex, as_faiss_ids
from serving.metrics import ServingMetrics
from serving.mirror import ParamMirror
from serving.model_state import ModelHolder

__all__ = ["SyncLoop", "version_number"]

log = logging.getLogger(__name__)

#: Catalogue entries read per call; a sync reads at most CATALOG_PER_SYNC (the rest next time),
#: so a first sync over millions of items does not hold the GIL for seconds at a time.
CATALOG_CHUNK = 20_000
CATALOG_PER_SYNC = 200_000
#: Re-embed items in chunks of this many (bounds the memory of one tower pass).
EMBED_CHUNK = 65_536


def version_number(cursor: Any) -> int:
    """A delta cursor as one int for the API and metrics: the sum over shards (monotonic).

    >>> version_number(7), version_number((3, 4))
    (7, 7)
    """
    return int(sum(cursor)) if isinstance(cursor, (tuple, list)) else int(cursor)


class SyncLoop:
    """Keeps the mirror, the model and the item index in step with the parameter server."""

    def __init__(self, params: Any, mirror: ParamMirror, holder: ModelHolder, catalog: ItemCatalog,
                 index: ItemIndex, metrics: ServingMetrics, reader: FeatureReader | None = None,
                 interval_s: float = 2.0, dense_interval_s: float = 20.0, min_interval_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, dense_phase: float = 0.0) -> None:
        if interval_s <= 0 or dense_interval_s < 0 or min_interval_s < 0 or not 0 <= dense_phase < 1:
            raise ValueError("need interval_s > 0, dense_interval_s >= 0, min_interval_s >= 0 "
                             "and 0 <= dense_phase < 1")
        self.dense_phase = dense_phase
        self.params, self.mirror, self.holder, self.catalog = params, mirror, holder, catalog
        self.index, self.metrics, self.reader = index, metrics, reader
        self.interval_s, self.dense_interval_s = interval_s, dense_interval_s
        self.min_interval_s = min(min_interval_s, interval_s)
        self.clock = clock
        self._dense_at: float | None = None  # clock() of the last dense pull
        self.syncs = 0
        self.synced_at = 0.0
        self._item_table = "item_id"
        self._catalog_cursor = 0
        self._epochs: list[str] = []
        self._pending = np.empty(0, dtype=np.uint64)  # item IDs still to (re-)embed
        self._pending_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heavy: NicedWorker | None = None  # runs dense loads and full re-embeds (start(nice=))

    @property
    def model_version(self) -> int:
        return version_number(self.mirror.version)

    def note_items(self, fids: np.ndarray) -> None:
        """Ask for these items to be (re-)embedded on the next sync (e.g. names learned from a request)."""
        if np.size(fids):
            with self._pending_lock:
                self._pending = np.union1d(self._pending, np.asarray(fids, dtype=np.uint64))

    def sync_once(self, wait_s: float = 0.0) -> int:
        """One sync (see the module docstring); returns the rows applied. ``wait_s``: long-poll the
        parameter server that long for a change when there is none yet."""
        with self._sync_lock:
            restarted = self._shards_restarted()
            since = -1 if restarted else self.mirror.version
            delta = self.params.delta(since, wait_s=wait_s) if wait_s > 0 else self.params.delta(since)
            start = time.perf_counter()
            applied = self.mirror.apply(delta)
            changed = applied.changed.get(self._item_table, np.empty(0, dtype=np.uint64))
            removed = applied.removed.get(self._item_table, np.empty(0, dtype=np.uint64))
            self.note_items(self._items_of_rows(changed))
            self._learn_names()
            dense_loaded = self._dense_due() and self._run_heavy(self._load_dense)
            if dense_loaded or restarted:
                self._run_heavy(self._reindex_all)
            else:
                self._reindex(removed)
                if self.index.wants_rebuild():
                    log.info("index of %d items (%s) due for a rebuild", len(self.index), self.index.kind)
                    self._run_heavy(self._reindex_all)
            self.syncs += 1
            self.synced_at = time.time()
            evicted = int(sum(r.size for r in applied.removed.values()))
            self.metrics.observe_sync(self.model_version, applied.rows, evicted, time.perf_counter() - start)
            self.metrics.index_items.set(len(self.index))
            if applied.rows or evicted:
                log.debug("sync %d: %d rows, %d evicted, version %s, %d items indexed", self.syncs,
                          applied.rows, evicted, self.mirror.version, len(self.index))
            return applied.rows

    def _dense_due(self) -> bool:
        """Whether this sync pulls the dense weights (the first, then every ``dense_interval_s``)."""
        now = self.clock()
        if self._dense_at is not None and now - self._dense_at < self.dense_interval_s:
            return False
        # the first pull shifts the schedule by the phase: processes started together stay apart
        self._dense_at = now + (self.dense_phase * self.dense_interval_s if self._dense_at is None else 0.0)
        return True

    def _shards_restarted(self) -> bool:
        """Whether a shard restarted (from its snapshot) since the last sync: its rows went back to
        the snapshot's and its version numbers no longer follow ours, so only a full copy is right."""
        shards = getattr(self.params, "shards", None) or [self.params]
        if not all(hasattr(shard, "epoch") for shard in shards):
            return False
        epochs = [str(shard.epoch()) for shard in shards]
        changed = [n for n, (old, new) in enumerate(zip(self._epochs, epochs)) if old != new] if self._epochs else []
        self._epochs = epochs
        if changed:
            log.warning("parameter-server shard(s) %s restarted: full resync of the mirror and the index", changed)
        return bool(changed)

    # -- the background thread -----------------------------------------------------------------

    def start(self, nice: int = 0) -> None:
        """Sync in a daemon thread until :meth:`stop`: as soon as training changed the parameter
        server (long-poll), at most every ``min_interval_s``, at least every ``interval_s``.

        ``nice``: niceness of a second thread that does the heavy steps, dense loads and full
        re-embeds (Linux), while the sync thread waits for it. Re-embedding and re-filing 100,000
        items takes about a second of one core, which, at the priority of requests, took a core
        from them and doubled serving's p99 (``benchmarks.serving``). The frequent sparse syncs
        keep the priority of requests, so serving's freshness does not wait on the scheduler's
        treatment of a niced thread (with the whole thread niced they took 19-22 ms on average
        against 12-13 ms at niceness 0 in ``benchmarks.live_quality``; this split measured no
        gain beyond the noise in either benchmark, README "Freshness and adaptation").
        """
        if nice > 0:
            self._heavy = NicedWorker(nice, "serving-rebuild")
            log.info("dense loads and index rebuilds at niceness +%d: they yield the CPU to requests", nice)
        self._thread = threading.Thread(target=self._run, name="serving-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._heavy is not None and not (self._thread is not None and self._thread.is_alive()):
            self._heavy.close()  # else a rebuild still runs: its thread ends with the process

    def _run_heavy(self, step: Callable[[], Any]) -> Any:
        """``step()`` on the niced thread where :meth:`start` made one, else here."""
        return step() if self._heavy is None else self._heavy.run(step)

    def _run(self) -> None:
        pause = self.min_interval_s
        while not self._stop.wait(pause):
            started = time.monotonic()
            try:
                self.sync_once(wait_s=self.interval_s)
                pause = self.min_interval_s - (time.monotonic() - started)
            except (OSError, ValueError, RtrecError, redis.RedisError):
                self.metrics.sync_errors.inc()
                log.exception("sync failed at version %s (last success %.1f s ago); serving the old state",
                              self.mirror.version, time.time() - self.synced_at if self.synced_at else -1)
                pause = self.interval_s

    # -- steps ---------------------------------------------------------------------------------

    def _load_dense(self) -> bool:
        """Pull the dense weights and swap in a model with them; False when the server has none yet."""
        try:
            dense = self.params.pull_dense(self.holder.current.model.dense_names())
        except ValueError:
            log.info("the parameter server has no dense weights yet; serving the initial model")
            return False
        if dense.version == self.holder.current.dense_version:
            return False
        self.holder.load_dense(dense.tensors, dense.version)
        self.metrics.dense_version.set(version_number(dense.version))
        log.info("loaded dense weights version %s", dense.version)
        return True

    def _learn_names(self) -> None:
        """Learn item names and categories from the feature store's catalogue; mark them for indexing."""
        if self.reader is None:
            return
        for _ in range(CATALOG_PER_SYNC // CATALOG_CHUNK):
            entries, cursor = self.reader.catalog_since(self._catalog_cursor, CATALOG_CHUNK)
            if cursor < self._catalog_cursor:
                log.warning("the feature store's catalogue restarted (Redis emptied?); reading it again")
            self._catalog_cursor = cursor
            if entries:
                names, categories = zip(*entries)
                self.note_items(self.catalog.learn(list(names), list(categories)))
            if len(entries) < CATALOG_CHUNK:
                return

    def _items_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The items whose vectors changed with these item rows: the rows' own IDs, or, when item
        IDs share hashed rows (``hash_buckets``), every named item folded into one of them."""
        if not self.mirror.folds(self._item_table) or rows.size == 0:
            return rows
        named = self.catalog.learned_ids()
        return named[np.isin(self.mirror.row_ids(named), rows)]

    def _synced_named_items(self) -> np.ndarray:
        """Sorted IDs of the items that have both a name and a synced row (what the index holds)."""
        if self.mirror.folds(self._item_table):
            named = self.catalog.learned_ids()
            return named[self.mirror.contains(named)]
        fids = self.mirror.table(self._item_table).ids()
        return np.sort(fids[self.catalog.known(fids)])

    def _reindex(self, removed: np.ndarray) -> None:
        """Re-embed the pending items that are synced and named; drop removed items from the index."""
        with self._pending_lock:
            pending, self._pending = self._pending, np.empty(0, dtype=np.uint64)
        try:
            self.index.remove(as_faiss_ids(removed))
            keep = self.mirror.table(self._item_table).contains(pending) & self.catalog.known(pending)
            fids = pending[keep]
            for lo in range(0, fids.size, EMBED_CHUNK):
                chunk = fids[lo:lo + EMBED_CHUNK]
                vectors = self.holder.current.item_vectors(chunk, *self.catalog.category_ids(chunk))
                self.index.upsert(as_faiss_ids(chunk), vectors)
        except BaseException:
            self.note_items(pending)  # retried on the next sync
            raise

    def _reindex_all(self) -> None:
        """Every named, synced item embedded by the current model into a fresh index (of the kind
        its size calls for, see :mod:`serving.index`), then swapped in."""
        started = time.perf_counter()
        with self._pending_lock:
            self._pending = np.empty(0, dtype=np.uint64)
        fids = self._synced_named_items()
        vectors = np.empty((fids.size, self.index.dim), dtype=np.float32)
        for lo in range(0, fids.size, EMBED_CHUNK):
            chunk = fids[lo:lo + EMBED_CHUNK]
            vectors[lo:lo + chunk.size] = self.holder.current.item_vectors(chunk, *self.catalog.category_ids(chunk))
        fresh = ItemIndex.build(self.index.dim, as_faiss_ids(fids), vectors, self.index.plan, previous=self.index)
        self.index.swap_from(fresh)
        seconds = time.perf_counter() - started
        self.metrics.index_rebuild_seconds.observe(seconds)
        log.info("index rebuilt: %d items, %s, in %.2f s", len(fresh), fresh.kind, seconds)
