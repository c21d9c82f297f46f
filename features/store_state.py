"""Every key of a feature store with its value: what tests and benchmarks compare when they ask
whether two stores hold the same features (after a restart, a replay, a fault, against a run
without one). Expiry times are left out; values are read in two pipelines per 5,000 keys."""

from __future__ import annotations

import math
import struct
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


def same_item_vector(a: bytes, b: bytes) -> bool:
    """Whether two item ranking vectors (``{p}v:i:{item}``) hold the same rings and, to 1e-12
    relative, the same trending score: a sum of decayed counts, which events re-applied in another
    order (a gap filled partition by partition) add up with other roundings."""
    if len(a) != len(b) or len(a) < 8:
        return a == b
    (rings_a, score_a), (rings_b, score_b) = (struct.unpack(f"<{len(v) - 8}sd", v) for v in (a, b))
    return rings_a == rings_b and math.isclose(score_a, score_b, rel_tol=1e-12)
