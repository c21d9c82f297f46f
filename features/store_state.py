"""Every key of a feature store with its value: what tests and benchmarks compare when they ask
whether two stores hold the same features (after a restart, a replay, a fault, against a run
without one). Expiry times are left out; values are read in two pipelines per 5,000 keys."""

from __future__ import annotations

from typing import Any

import redis

__all__ = ["store_state"]


def store_state(client: redis.Redis, prefix: str, marks: bool = False) -> dict[str, Any]:
    """``{key without the prefix: value}`` of every key under ``prefix``, the event_id marks
    (``seen:*``) only with ``marks``: strings as bytes, hashes as dicts, lists as lists, sets as
    sets, sorted sets as ``[(member, score), ...]`` in score order."""
    names = sorted(k for k in client.scan_iter(match=f"{prefix}*", count=5000)
                   if marks or not k.startswith(f"{prefix}seen:".encode()))
    out: dict[str, Any] = {}
    for start in range(0, len(names), 5000):
        chunk = names[start:start + 5000]
        types = client.pipeline(transaction=False)
        for key in chunk:
            types.type(key)
        values = client.pipeline(transaction=False)
        for key, kind in zip(chunk, types.execute()):
            {b"string": lambda k: values.get(k), b"hash": lambda k: values.hgetall(k),
             b"list": lambda k: values.lrange(k, 0, -1), b"set": lambda k: values.smembers(k),
             b"zset": lambda k: values.zrange(k, 0, -1, withscores=True)}[kind](key)
        out.update((key.decode(errors="replace")[len(prefix):], value) for key, value in zip(chunk, values.execute()))
    return out
