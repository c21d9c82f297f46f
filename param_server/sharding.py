"""Sharding: IDs routed to shards by a hash of the ID, and a client that fans batches out.

``shard_of`` mixes the whole 64-bit ID first (a slot sits in the high bits, small integers in
the low ones, so ``id % n`` on raw bits would load shards unevenly) and uses the *high* bits of
the mix, with a seed of its own, so the keys of one shard still spread over all buckets of that
shard's hash index (which uses the low bits of an unseeded mix).

:class:`ShardedClient` takes any shards with the store API (RPC clients in production,
in-process stores in tests), sends each shard its part of a batch concurrently (threads: the
sockets release the GIL), and puts the answers back in input order. Its versions are tuples, one
per shard, and a delta cursor is such a tuple.

>>> from param_server.store import ParamStore
>>> sharded = ShardedClient([ParamStore(), ParamStore()])
>>> ids = np.arange(10, dtype=np.uint64) | np.uint64(2 << 56)
>>> sharded.push_many(ids, np.ones((10, 32), dtype=np.float32), ts=1.0)
(1, 1)
>>> sharded.pull_many(ids).shape, set(shard_of(ids, 2).tolist())
((10, 32), {0, 1})
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from param_server.hash_index import mix64
from param_server.store import Delta, DenseParams
from param_server.table import TableDelta

__all__ = ["shard_of", "ShardedClient"]

_SHARD_SEED = 0x2545F4914F6CDD1D


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard of each ID: high 32 bits of a seeded 64-bit mix, modulo the shard count."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return ((mix64(ids, _SHARD_SEED) >> np.uint64(32)) % np.uint64(num_shards)).astype(np.int64)


class ShardedClient:
    """The store API over several shards; dense tensors live on shard 0."""

    def __init__(self, shards: Sequence[Any]) -> None:
        if not shards:
            raise ValueError("need at least one shard")
        self.shards = list(shards)
        self._versions = [0] * len(self.shards)  # as last seen by this client
        self._pool = ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="ps-fanout")

    @classmethod
    def connect(cls, addrs: Sequence[tuple[str, int]], token: str = "", timeout_s: float = 30.0) -> "ShardedClient":
        """RPC clients for ``host:port`` pairs in shard order (e.g. ``settings.param_server_addrs``)."""
        from param_server.client import ParamServerClient

        return cls([ParamServerClient(host, port, token, timeout_s) for host, port in addrs])

    def close(self) -> None:
        for shard in self.shards:
            if hasattr(shard, "close"):
                shard.close()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> "ShardedClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the store API -------------------------------------------------------------------------

    def pull_many(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` gathered from their shards, in input order."""
        ids = np.asarray(ids, dtype=np.uint64)
        if ids.size == 0:
            return self.shards[0].pull_many(ids)  # keeps the (0, dim) shape of the reference
        parts = self._split(ids)
        results = self._fan_out([(lambda s=s, w=w: self.shards[s].pull_many(ids[w])) for s, w in parts])
        dim = next((r.shape[1] for r in results if r.ndim == 2), 0)
        out = np.zeros((ids.size, dim), dtype=np.float32)
        for (_, where), rows in zip(parts, results):
            out[where] = rows
        return out

    def push_many(self, ids: np.ndarray, grads: np.ndarray, ts: float | np.ndarray | None = None,
                  offsets: Mapping[str, Mapping[int, int]] | None = None) -> tuple[int, ...]:
        """Each shard gets its IDs' gradients (and the offsets); returns the shards' versions as last seen."""
        ids = np.asarray(ids, dtype=np.uint64)
        grads = np.asarray(grads, dtype=np.float32)
        if not np.isfinite(grads).all():  # refused here, so no shard applies its part of a bad batch
            raise ValueError("gradients must be finite (got NaN or infinity)")
        per_row_ts = ts is not None and np.ndim(ts) > 0
        calls, touched = [], []
        for shard, where in self._split(ids):
            shard_ts = np.asarray(ts)[where] if per_row_ts else ts
            calls.append(lambda s=shard, w=where, t=shard_ts: self.shards[s].push_many(ids[w], grads[w], t, offsets))
            touched.append(shard)
        for shard, version in zip(touched, self._fan_out(calls)):
            self._versions[shard] = int(version)
        return tuple(self._versions)

    def delta(self, since: int | Sequence[int] = 0, wait_s: float = 0.0) -> Delta:
        """Changes since the cursor ``since`` (a tuple from a previous delta, or 0 for everything).

        ``wait_s``: every shard long-polls (:meth:`ParamServerClient.delta`), all at once. A
        training step touches every shard, so they answer together; a shard nothing changed on
        answers when its wait ends, which bounds the delay to ``wait_s`` as a timer would."""
        cursors = [int(since)] * len(self.shards) if np.ndim(since) == 0 else [int(v) for v in since]  # type: ignore[arg-type]
        if len(cursors) != len(self.shards):
            raise ValueError(f"delta cursor has {len(cursors)} versions for {len(self.shards)} shards")
        deltas = self._fan_out([(lambda s=s, c=c: s.delta(c, wait_s=wait_s) if wait_s else s.delta(c))
                                for s, c in zip(self.shards, cursors)])
        if any(d.full for delta in deltas for d in delta.tables.values()):
            # One shard trimmed its eviction log: a partial full dump would lose the other shards'
            # rows at the receiver, so fetch full dumps from every shard.
            deltas = self._fan_out([(lambda s=s: s.delta(-1)) for s in self.shards])
        names = list(deltas[0].tables)
        tables = {name: _concat([d.tables[name] for d in deltas]) for name in names}
        return Delta(tuple(int(d.version) for d in deltas), tables)  # type: ignore[arg-type]

    def snapshot(self, offsets: Mapping[str, Mapping[int, int]] | None = None) -> list[str]:
        """Snapshot every shard (each records ``offsets``); returns their paths."""
        return self._fan_out([(lambda s=s: s.snapshot(offsets)) for s in self.shards])

    def stats(self) -> dict:
        """Per-shard stats plus rows per table summed over shards."""
        shards = self._fan_out([(lambda s=s: s.stats()) for s in self.shards])
        rows: dict[str, int] = {}
        for stats in shards:
            for name, table in stats["tables"].items():
                rows[name] = rows.get(name, 0) + int(table["rows"])
        return {"version": tuple(int(s["version"]) for s in shards), "rows": rows, "shards": shards}

    def pull_dense(self, names: Sequence[str] | None = None) -> DenseParams:
        return self.shards[0].pull_dense(names)

    def push_dense(self, tensors: Mapping[str, np.ndarray]) -> int:
        return self.shards[0].push_dense(tensors)

    def version(self) -> tuple[int, ...]:
        """Every shard's current version (one round trip each)."""
        return tuple(self._fan_out([(lambda s=s: _version_of(s)) for s in self.shards]))

    # -- internals -----------------------------------------------------------------------------

    def _split(self, ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(shard, positions in the batch) for every shard the batch touches."""
        if len(self.shards) == 1:
            return [(0, np.arange(ids.size))]
        shards = shard_of(ids, len(self.shards))
        order = np.argsort(shards, kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(len(self.shards) + 1))
        return [(s, order[bounds[s]:bounds[s + 1]]) for s in range(len(self.shards)) if bounds[s + 1] > bounds[s]]

    def _fan_out(self, calls: list[Callable[[], Any]]) -> list[Any]:
        if len(calls) == 1:
            return [calls[0]()]
        futures = [self._pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def _version_of(shard: Any) -> int:
    return int(shard.ping()) if hasattr(shard, "ping") else int(shard.version)


def _concat(parts: list[TableDelta]) -> TableDelta:
    return TableDelta(np.concatenate([p.ids for p in parts]), np.concatenate([p.rows for p in parts]),
                      np.concatenate([p.evicted for p in parts]), any(p.full for p in parts))
