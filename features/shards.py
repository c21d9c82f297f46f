"""How the feature store spreads over Redis: shards by user, each a whole store under one hash tag.

A single Redis holds one shard under the plain prefix (``rtrec:``), the layout of features/keys.py.
With ``shards`` > 1, or on a Redis Cluster, shard ``g`` of ``n`` holds the keys of the users whose
ID hashes to ``g``, under the prefix ``{<tag>}``: every key of a shard shares one hash slot, so
each Lua script (which reads and writes many keys of one batch of events) runs atomically on the
node that owns that slot, as a cluster requires. What an event touches lands in its user's shard:
the user's counts, lists and sessions entirely; the item's counts, co-visits, catalogue entry and
rankings, and the stream's counts, as partial sums that readers add up over the shards (window
counts are sums, the decayed ranking scores are sums of exponentials). So the hot keys a single
Redis writes on every event (the stream's counts, the rankings, the watermark) are split ``n`` ways.

The tags are chosen so that shard ``g``'s slot lies in the ``g``-th ``1/n`` of the slot space: on a
cluster of ``n`` masters that own equal slot ranges (what ``redis-cli --cluster create`` and
``rtrec up --redis-cluster n`` make), every shard sits on its own master.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


def shard_tag(prefix: str, shard: int, shards: int) -> str:
    """The hash tag of shard ``shard`` of ``shards``: ``{prefix}{shard}-{n}`` with the first ``n``
    whose slot lies in the shard's ``1/shards`` of the slot space (deterministic, so every
    process derives the same tags).

    >>> t = shard_tag("rtrec:", 1, 3)
    >>> t.startswith("rtrec:1-") and 16384 // 3 <= key_slot(("{%s}" % t).encode()) < 2 * 16384 // 3
    True
    """
    lo = shard * REDIS_CLUSTER_HASH_SLOTS // shards
    hi = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    n = 0
    while True:
        tag = f"{prefix}{shard}-{n}"
        if lo <= key_slot(tag.encode()) < hi:
            return tag
        n += 1


@dataclass(frozen=True)
class ShardLayout:
    """The prefixes of the feature store's shards and which shard holds a user.

    >>> ShardLayout("rtrec:").prefixes
    ['rtrec:']
    >>> layout = ShardLayout("rtrec:", shards=3)
    >>> [p[0] + p[-1] for p in layout.prefixes]
    ['{}', '{}', '{}']
    >>> layout.of_users(["u1", "u1", "u2"])[0] == layout.of_users(["u1"])[0]
    True
    """

    prefix: str
    shards: int = 1
    tagged: bool = False  # hash-tag even a single shard (a Redis Cluster needs one slot per script)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")

    @cached_property
    def prefixes(self) -> list[str]:
        """Each shard's key prefix: the plain prefix for one untagged shard, else ``{tag}``."""
        if self.shards == 1 and not self.tagged:
            return [self.prefix]
        return ["{" + shard_tag(self.prefix, g, self.shards) + "}" for g in range(self.shards)]

    @property
    def sharded(self) -> bool:
        """True if readers must merge partial sums over several shards."""
        return self.shards > 1

    def of_user(self, user_id: str) -> int:
        """The shard holding ``user_id`` (CRC-32 of its UTF-8 bytes, modulo the shard count)."""
        return zlib.crc32(user_id.encode()) % self.shards if self.shards > 1 else 0

    def of_users(self, user_ids: Sequence[str]) -> list[int]:
        """:meth:`of_user` of each ID."""
        if self.shards == 1:
            return [0] * len(user_ids)
        n = self.shards
        return [zlib.crc32(u.encode()) % n for u in user_ids]

    def prefix_of(self, user_id: str) -> str:
        """The key prefix of the shard holding ``user_id``."""
        return self.prefixes[self.of_user(user_id)]

    def route(self, shard: int) -> str:
        """A key of shard ``shard`` (its watermark) that routes a script call to the shard's node:
        the scripts declare it as KEYS[1]; every other key they touch shares its hash tag."""
        return self.prefixes[shard] + "wm"
