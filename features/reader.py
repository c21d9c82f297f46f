"""The one reader of real-time features, used by serving: many users or items in one round trip.

Window counts are read at the store's watermark (the newest event time applied), so features of
a replayed historical stream mean the same as those of a live one. They are binary ring strings
(:class:`features.windows.RingLayout`), fetched by MGET and summed with numpy (:class:`RingRead`).

On a sharded store (features/shards.py) a user's counts and lists come from the user's shard,
an item's and the stream's counts are summed over the shards, ranking scores merged as sums of
decayed counts, and the watermark is the newest over the shards.

Returned per entity: ``counts`` (``{"<action>_<window>": n}``), ``ctr_<window>`` for items and the
stream (clicks / impressions, smoothed towards the stream's CTR with ``ctr_prior_strength``
pseudo-impressions), ``last_ts``, and for users ``recent_items`` and ``session_items``.
"""

from __future__ import annotations

import math
from importlib import resources
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import orjson
import redis
import redis.asyncio

from features import keys
from features.config import FeatureConfig
from features.ids import distinct
from features.shards import ShardLayout
from features.windows import RingLayout, VectorLayout

COVISITS_SCRIPT = resources.files("features").joinpath("covisits.lua").read_text()
COVISITED_SCRIPT = resources.files("features").joinpath("covisited.lua").read_text()
RINGS_SCRIPT = resources.files("features").joinpath("rings.lua").read_text()
VECTORS_SCRIPT = resources.files("features").joinpath("vectors.lua").read_text()
#: Loaded again, all of them, when Redis answers NOSCRIPT (it restarted or was flushed).
READ_SCRIPTS = (COVISITS_SCRIPT, COVISITED_SCRIPT, RINGS_SCRIPT, VECTORS_SCRIPT)


@dataclass(frozen=True)
class UserRecall:
    """A user's recent items (newest first) and the items most co-visited with the last few of
    them, best first, with their co-visitation sums (:meth:`FeatureReader.recall_many`)."""

    recent: list[str]
    covisited: list[str]
    covisit_sums: list[int]


class FeatureReader:
    """Reads what :class:`features.writer.FeatureWriter` wrote (layout in features/keys.py)."""

    def __init__(self, client: redis.Redis, config: FeatureConfig | None = None,
                 async_client: redis.asyncio.Redis | None = None) -> None:
        """``async_client`` (the same server) serves the ``*_async`` reads; without it they block."""
        self.client = client
        self.async_client = async_client
        self.config = config or FeatureConfig()
        self._covisits_script = client.register_script(COVISITS_SCRIPT)
        self._covisited_script = client.register_script(COVISITED_SCRIPT)
        self._rings_script = client.register_script(RINGS_SCRIPT)
        self._vectors_script = client.register_script(VECTORS_SCRIPT)
        self.layout: ShardLayout = self.config.layout

    def watermark(self) -> float:
        """Newest event time applied so far (0 before the first event)."""
        return self.watermark_of(self.run_pipeline(self.queue_watermarks))

    def queue_watermarks(self, pipe: Any) -> int:
        """Queue a GET of each shard's watermark; returns how many replies :meth:`watermark_of` takes."""
        for prefix in self.layout.prefixes:
            pipe.get(keys.watermark(prefix))
        return len(self.layout.prefixes)

    @staticmethod
    def watermark_of(replies: Sequence[Any]) -> float:
        """The store's watermark from the shards' (the newest; 0 before the first event)."""
        return max((float(r) for r in replies if r is not None), default=0.0)

    def shard_groups(self, user_ids: Sequence[str]) -> list[tuple[int, list[int] | None]]:
        """``(shard, indexes into user_ids)`` of each shard holding some of the users; one
        ``(0, None)`` (all of them) on an unsharded store."""
        if not self.layout.sharded:
            return [(0, None)]
        groups: dict[int, list[int]] = {}
        for n, shard in enumerate(self.layout.of_users(list(user_ids))):
            groups.setdefault(shard, []).append(n)
        return sorted(groups.items())

    def users(self, user_ids: Sequence[str]) -> list[dict]:
        """Features of each user, in order; unknown users get zero counts and empty lists."""
        wm, actions = self._watermark_and_actions()
        prefixes = [self.layout.prefixes[g] for g in self.layout.of_users(list(user_ids))]
        groups = self.shard_groups(user_ids)

        def build(pipe: Any) -> None:
            for u, p in zip(user_ids, prefixes):
                pipe.hget(keys.user_state(p, u), "last_ts")
                pipe.lrange(keys.recent(p, u), 0, -1)
                pipe.lrange(keys.session(p, u), 0, -1)
            for shard, rows in groups:
                part = user_ids if rows is None else [user_ids[r] for r in rows]
                self._queue_rings(pipe, self.layout.prefixes[shard], "u", part, actions)

        replies = self.run_pipeline(build)
        blobs: list[Any] = [None] * (len(user_ids) * len(actions))
        for (_, rows), part in zip(groups, replies[3 * len(user_ids):]):
            for k, r in enumerate(range(len(user_ids)) if rows is None else rows):
                blobs[r * len(actions):(r + 1) * len(actions)] = part[k * len(actions):(k + 1) * len(actions)]
        counts = self._all_counts([blobs], len(user_ids), actions, wm)
        out = []
        for n in range(len(user_ids)):
            last_ts, recent, session = replies[3 * n: 3 * n + 3]
            out.append({"counts": counts[n], "last_ts": float(last_ts or 0.0),
                        "recent_items": [r.decode() for r in recent],
                        "session_items": [r.decode() for r in session]})
        return out

    def stream(self) -> dict:
        """Stream-wide features: counts per action and window over every event."""
        wm, actions = self._watermark_and_actions()
        parts = self.run_pipeline(lambda pipe: [self._queue_rings(pipe, p, "g", [""], actions)
                                                for p in self.layout.prefixes])
        return {"counts": self._all_counts(parts, 1, actions, wm)[0], "last_ts": 0.0}

    def items(self, item_ids: Sequence[str]) -> list[dict]:
        """Features of each item, in order, with smoothed CTRs and trending/popularity scores."""
        wm, actions = self._watermark_and_actions()
        names = list(item_ids) or [""]

        def build(pipe: Any) -> None:
            for p in self.layout.prefixes:
                self._queue_rings(pipe, p, "i", item_ids, actions)
                self._queue_rings(pipe, p, "g", [""], actions)
                pipe.hmget(keys.catalog(p), names)
                pipe.zmscore(keys.ranking(p, "trending"), names)
                pipe.zmscore(keys.ranking(p, "popular"), names)

        replies = self.run_pipeline(build)
        blobs, stream_blobs, cats, trends, pops = (replies[k::5] for k in range(5))
        counts = self._all_counts(blobs, len(item_ids), actions, wm)
        stream = self._all_counts(stream_blobs, 1, actions, wm)[0]
        categories = first_known(cats)
        trending, popular = merge_log_scores(trends), merge_log_scores(pops)
        out = []
        for n in range(len(item_ids)):
            features: dict[str, Any] = {"counts": counts[n], "last_ts": 0.0,
                                        "category": (categories[n] or b"").decode() or None}
            for w in self.config.windows:
                features[f"ctr_{w.name}"] = self._smoothed_ctr(counts[n], stream, w.name)
            features["trending"] = self._decayed(trending[n], self.config.trending_tau_s, wm)
            features["popular"] = self._decayed(popular[n], self.config.popular_tau_s, wm)
            out.append(features)
        return out

    def recent_items(self, user_id: str) -> list[str]:
        """The items the user acted on last, newest first (what serving blocks and the user tower reads)."""
        return [r.decode() for r in self.client.lrange(keys.recent(self.layout.prefix_of(user_id), user_id), 0, -1)]

    def recent_items_many(self, user_ids: Sequence[str], limit: int | None = None) -> list[list[str]]:
        """:meth:`recent_items` of several users (at most the newest ``limit`` each) in one round
        trip; a user named several times is read once."""
        users, row = distinct(list(user_ids))
        replies = self.run_pipeline(self._queue_recent(users, limit)) if users and limit != 0 else []
        return _recent_lists(replies, users, row)

    async def recent_items_many_async(self, user_ids: Sequence[str], limit: int | None = None) -> list[list[str]]:
        """:meth:`recent_items_many` without blocking the event loop (with an ``async_client``)."""
        users, row = distinct(list(user_ids))
        replies = await self.run_pipeline_async(self._queue_recent(users, limit)) if users and limit != 0 else []
        return _recent_lists(replies, users, row)

    def _queue_recent(self, users: Sequence[str], limit: int | None) -> Callable[[Any], None]:
        """What queues one LRANGE of each user's newest ``limit`` recent items (all with None)."""
        last = -1 if limit is None else limit - 1
        prefixes = [self.layout.prefixes[g] for g in self.layout.of_users(list(users))]

        def queue(pipe: Any) -> None:
            for u, prefix in zip(users, prefixes):
                pipe.lrange(keys.recent(prefix, u), 0, last)
        return queue

    def recall_many(self, user_ids: Sequence[str], top: int) -> list[UserRecall]:
        """Each user's recent items and their ``top`` most co-visited items not among them (summed
        over the last ``covisit_query`` recent items), in one round trip (two on a sharded store:
        the users' lists first): what serving reads first."""
        recent = self.recent_items_many(user_ids) if self.layout.sharded else None
        return self._recalls(self.run_pipeline(lambda pipe: self._queue_recall(pipe, user_ids, top, recent)), top)

    async def recall_many_async(self, user_ids: Sequence[str], top: int) -> list[UserRecall]:
        """:meth:`recall_many` without blocking the event loop (with an ``async_client``)."""
        recent = await self.recent_items_many_async(user_ids) if self.layout.sharded else None
        return self._recalls(await self.run_pipeline_async(
            lambda pipe: self._queue_recall(pipe, user_ids, top, recent)), top)

    def _queue_recall(self, pipe: Any, user_ids: Sequence[str], top: int, recent: list[list[str]] | None) -> None:
        users = orjson.dumps(list(user_ids))
        if recent is None:
            pipe.evalsha(self._covisited_script.sha, 1, self.layout.route(0), self.layout.prefixes[0],
                         self.config.covisit_query, top, self.config.covisit_sums_ttl_ms, users)
            return
        lists = orjson.dumps(recent)  # every shard holds part of each item's co-visits: ask each for more
        for shard, prefix in enumerate(self.layout.prefixes):
            pipe.evalsha(self._covisited_script.sha, 1, self.layout.route(shard), prefix,
                         self.config.covisit_query, 2 * top, self.config.covisit_sums_ttl_ms, users, lists)

    @staticmethod
    def _recalls(replies: list, top: int) -> list[UserRecall]:
        if len(replies) == 1:
            return [UserRecall([r.decode() for r in recent], [i.decode() for i in best[0::2]],
                               [int(x) for x in best[1::2]])
                    for recent, best in replies[0]]
        out = []
        for parts in zip(*replies):  # one user: the shards' partial sums, added up
            sums: dict[bytes, int] = {}
            for _, best in parts:
                for item, score in zip(best[0::2], best[1::2]):
                    sums[item] = sums.get(item, 0) + int(score)
            ranked = sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            out.append(UserRecall([r.decode() for r in parts[0][0]], [i.decode() for i, _ in ranked],
                                  [s for _, s in ranked]))
        return out

    def covisit_scores(self, pipe: Any, user_ids: Sequence[str], pairs: Sequence[tuple[int, str]],
                       recent: Sequence[Sequence[str]] | None = None, recalled: bool = False) -> int:
        """Queue on ``pipe`` the co-visitation score of each ``(index into user_ids, item)`` pair:
        the sum over the user's last ``covisit_query`` items of the times each was co-visited with
        the item (the ranking feature ``pair_log_covisits``). A sharded store needs the users'
        ``recent`` lists (newest first) and is asked once per shard. ``recalled``: the users were
        just recalled (:meth:`recall_many`, serving's first round trip), whose sums are read back
        (one ZMSCORE per user, not one per recent item) while kept, so a request ranks with the
        recent items its recall saw. Returns how many replies :func:`covisit_sums` adds up into
        one integer per pair."""
        c = self.config
        users, rows = orjson.dumps(list(user_ids)), orjson.dumps([(u + 1, i) for u, i in pairs])
        kept = int(recalled)
        if not self.layout.sharded:
            pipe.evalsha(self._covisits_script.sha, 1, self.layout.route(0), self.layout.prefixes[0],
                         c.covisit_query, kept, users, rows)
            return 1
        if recent is None:
            raise ValueError("a sharded feature store needs the users' recent lists for co-visit scores")
        lists = orjson.dumps([list(r[:c.covisit_query]) for r in recent])
        for shard, prefix in enumerate(self.layout.prefixes):
            pipe.evalsha(self._covisits_script.sha, 1, self.layout.route(shard), prefix, c.covisit_query,
                         kept, users, rows, lists)
        return len(self.layout.prefixes)

    def acted_on(self, pipe: Any, user_ids: Sequence[str], pairs: Sequence[tuple[int, str]]) -> int:
        """Queue on ``pipe`` whether each ``(index into user_ids, item)`` pair's user has acted on
        the item (``{p}acted:{user}``, the last ``acted_items`` of them, on the user's shard): one
        ZMSCORE per user. Returns how many replies :func:`acted_flags` reads (0 with
        ``acted_items`` 0: nothing is kept, nothing is asked)."""
        if not self.config.acted_items or not pairs:
            return 0
        by_user = _pairs_by_user(pairs)
        for u, rows in by_user.items():
            user = user_ids[u]
            pipe.zmscore(keys.acted(self.layout.prefix_of(user), user), [pairs[n][1] for n in rows])
        return len(by_user)

    def catalog_since(self, cursor: int, limit: int = 50_000) -> tuple[list[tuple[str, str | None]], int]:
        """Catalogue entries ``(item, category or None)`` added or changed after ``cursor``, and the new cursor.

        Start from cursor 0; pass back what was returned to get only later changes (at most
        ``limit`` per call, oldest first). A cursor ahead of the store (Redis was emptied) starts
        over. Every shard's catalogue holds every item (features/shards.py): the first one's is read.
        """
        p = self.layout.prefixes[0]
        pipe = self.client.pipeline(transaction=False)
        pipe.zrangebyscore(keys.catalog_log(p), f"({cursor}", "+inf", start=0, num=limit, withscores=True)
        pipe.get(keys.catalog_seq(p))
        rows, seq = pipe.execute()
        if not rows:
            return [], (0 if int(seq or 0) < cursor else cursor)
        names = [name.decode() for name, _ in rows]
        categories = self.client.hmget(keys.catalog(p), names)
        entries = [(n, c.decode() or None if c is not None else None) for n, c in zip(names, categories)]
        return entries, int(rows[-1][1])

    def top(self, ranking: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best items of ``"trending"`` or ``"popular"`` with their decayed scores now."""
        if ranking not in ("trending", "popular"):
            raise ValueError(f"unknown ranking {ranking!r}")
        tau = self.config.trending_tau_s if ranking == "trending" else self.config.popular_tau_s

        def build(pipe: Any) -> None:
            self.queue_watermarks(pipe)
            for p in self.layout.prefixes:
                pipe.zrevrange(keys.ranking(p, ranking), 0, k - 1, withscores=True)

        replies = self.run_pipeline(build)
        shards = len(self.layout.prefixes)
        wm = self.watermark_of(replies[:shards])
        return [(item.decode(), self._decayed(score, tau, wm)) for item, score in merge_top(replies[shards:], k)]

    async def top_many_async(self, rankings: Sequence[str], k: int) -> dict[str, list[tuple[str, float]]]:
        """:meth:`top` of several rankings in one round trip, without blocking the event loop."""
        taus = {"trending": self.config.trending_tau_s, "popular": self.config.popular_tau_s}
        if any(r not in taus for r in rankings):
            raise ValueError(f"unknown ranking in {rankings!r}")

        shards = len(self.layout.prefixes)

        def build(pipe: Any) -> None:
            self.queue_watermarks(pipe)
            for ranking in rankings:
                for p in self.layout.prefixes:
                    pipe.zrevrange(keys.ranking(p, ranking), 0, k - 1, withscores=True)

        replies = await self.run_pipeline_async(build)
        wm = self.watermark_of(replies[:shards])
        rows = [merge_top(replies[shards * (1 + n):shards * (2 + n)], k) for n in range(len(rankings))]
        return {r: [(item.decode(), self._decayed(score, taus[r], wm)) for item, score in found]
                for r, found in zip(rankings, rows)}

    def window_counts(self, kind: str, ids: Sequence[Any], names: Sequence[str]) -> np.ndarray:
        """Counts ``names`` (``"<action>_<window>"``) of users (``kind="u"``), items (``"i"``), the
        stream (``"g"``, one row) or (user, item) pairs (``"uc"``, ids ``(user, item)``: the user's
        counts of the item's category, zeros where the catalogue has none) at the watermark, in one
        round trip: ``int64 (len(ids), len(names))``. Many reads in one pipeline: :class:`RingRead`."""
        read = RingRead(self, kind, ids, names)
        shards = len(self.layout.prefixes)

        def build(pipe: Any) -> None:
            self.queue_watermarks(pipe)
            read.build(pipe)

        replies = self.run_pipeline(build)
        return read.decode(replies[shards:], self.watermark_of(replies[:shards]))

    def run_pipeline(self, build: Callable[[redis.client.Pipeline], None]) -> list:
        """Queue commands with ``build`` (e.g. :meth:`window_counts` with a pipe) and run them in one
        round trip; if Redis lost the counts script (restarted), load it and run them once more."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                for script in READ_SCRIPTS:
                    self.client.script_load(script)
        raise AssertionError("unreachable")

    async def run_pipeline_async(self, build: Callable[[Any], None]) -> list:
        """:meth:`run_pipeline` without blocking the event loop (with an ``async_client``)."""
        if self.async_client is None:
            return self.run_pipeline(build)
        for attempt in (1, 2):
            pipe = self.async_client.pipeline(transaction=False)
            build(pipe)
            try:
                return await pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                for script in READ_SCRIPTS:
                    await self.async_client.script_load(script)
        raise AssertionError("unreachable")

    def _watermark_and_actions(self) -> tuple[float, list[str]]:
        """The watermark and every action the store has counted (the rings to read per entity)."""

        def build(pipe: Any) -> None:
            self.queue_watermarks(pipe)
            for p in self.layout.prefixes:
                pipe.smembers(keys.actions(p))

        replies = self.run_pipeline(build)
        shards = len(self.layout.prefixes)
        actions = set().union(*replies[shards:])
        return self.watermark_of(replies[:shards]), sorted(a.decode() for a in actions)

    def _queue_rings(self, pipe: Any, p: str, kind: str, ids: Sequence[str], actions: Sequence[str]) -> None:
        """Queue a read of the rings of ``ids`` times ``actions`` (entity-major) under prefix ``p``,
        by ``rings.lua`` (a cluster pipeline refuses MGET; the script's keys share ``p``'s slot)."""
        pipe.evalsha(self._rings_script.sha, 1, keys.watermark(p), p, kind, orjson.dumps(list(actions)),
                     orjson.dumps(list(ids)))

    def _all_counts(self, parts: Sequence[Sequence[bytes | None]], n: int, actions: Sequence[str],
                    watermark: float) -> list[dict[str, int]]:
        """``{"<action>_<window>": count}`` of ``n`` entities from their rings of ``actions``
        (per part, e.g. per shard, ``n * len(actions)`` strings, entity-major), summed over the
        parts; an action without a ring in any part is left out."""
        layout = RingLayout(self.config.windows)
        out: list[dict[str, int]] = [{} for _ in range(n)]
        if not actions or not n:
            return out
        size = n * len(actions)
        words = [layout.decode(blobs[:size]) for blobs in parts]
        present = np.array([[b is not None for b in blobs[:size]] for blobs in parts]).any(axis=0)
        present = present.reshape(n, len(actions))
        for w in self.config.windows:
            sums = sum(layout.sums(part, w.name, watermark) for part in words).reshape(n, len(actions))
            for e, a in zip(*np.nonzero(present)):
                out[e][f"{actions[a]}_{w.name}"] = int(sums[e, a])
        return out

    def _smoothed_ctr(self, counts: dict[str, int], stream: dict[str, int], window: str) -> float:
        """(clicks + a * p0) / (impressions + a), with p0 the stream's CTR over the same window."""
        a = self.config.ctr_prior_strength
        stream_imps = stream.get(f"impression_{window}", 0)
        p0 = stream.get(f"click_{window}", 0) / stream_imps if stream_imps else 0.0
        return (counts.get(f"click_{window}", 0) + a * p0) / (counts.get(f"impression_{window}", 0) + a)

    @staticmethod
    def _decayed(log_score: float | None, tau: float, watermark: float) -> float:
        """The forward-decayed count exp(log_score - watermark / tau), 0 for items not ranked."""
        return 0.0 if log_score is None else math.exp(min(log_score - watermark / tau, 50.0))



class RingRead:
    """A queued read of window counts (:meth:`build` on a pipeline, :meth:`decode` of its replies):
    the ring strings of the actions ``names`` need, of users, items, the stream or (user, item
    category) pairs, fetched by ``rings.lua`` (one JSON argument, bulk commands inside) and
    summed at the watermark with numpy. Users' rings are read from each user's shard; items' and
    the stream's from every shard, and added up. (Ranking reads its candidates' counts from their
    ranking vectors instead: :class:`ItemVectorRead`.)"""

    def __init__(self, reader: FeatureReader, kind: str, ids: Sequence[Any], names: Sequence[str]) -> None:
        if kind not in ("u", "i", "g", "uc"):
            raise ValueError(f"kind must be u, i, g or uc, got {kind!r}")
        config = reader.config
        windows = [w for w in config.windows if kind != "uc" or w.name == config.user_category_window]
        self.layout = RingLayout(tuple(windows))
        self.names = []
        for name in names:
            action, _, window = name.rpartition("_")
            kept = kind != "uc" or action in config.user_category_actions
            if not action or window not in {w.name for w in windows} or not kept:
                raise ValueError(f"unknown count {name!r}: expected <action>_<window> with a configured window"
                                 + (f" ({config.user_category_window} and one of {config.user_category_actions} "
                                    "for user categories)" if kind == "uc" else ""))
            self.names.append((action, window))
        self.actions = list(dict.fromkeys(a for a, _ in self.names))
        self.reader, self.kind = reader, kind
        self.ids = [""] if kind == "g" else list(ids)
        if kind in ("u", "uc"):  # a user's rings live in the user's shard
            self.parts = reader.shard_groups([i if kind == "u" else i[0] for i in self.ids])
        else:  # every shard holds part of every item's (and the stream's) counts
            self.parts = [(shard, None) for shard in range(len(reader.layout.prefixes))]

    @property
    def replies(self) -> int:
        """How many replies :meth:`build` queues (one per shard read)."""
        return len(self.parts)

    def build(self, pipe: Any) -> None:
        layout, actions = self.reader.layout, orjson.dumps(self.actions)
        for shard, rows in self.parts:
            ids = self.ids if rows is None else [self.ids[r] for r in rows]
            pipe.evalsha(self.reader._rings_script.sha, 1, layout.route(shard), layout.prefixes[shard], self.kind,
                         actions, orjson.dumps([list(i) if self.kind == "uc" else i for i in ids]))

    def decode(self, replies: Sequence[Any], watermark: float) -> np.ndarray:
        """``int64 (len(ids), len(names))`` from the :attr:`replies` replies :meth:`build` queued."""
        per = len(self.actions)
        out = np.zeros((len(self.ids), len(self.names)), dtype=np.int64)
        for (_, rows), reply in zip(self.parts, replies):
            n = len(self.ids) if rows is None else len(rows)
            words = self.layout.decode(list(reply)[: n * per])
            sums = {w: self.layout.sums(words, w, watermark).reshape(n, per) for w in {w for _, w in self.names}}
            part = np.stack([sums[window][:, self.actions.index(action)] for action, window in self.names], axis=1) \
                if self.names else np.zeros((n, 0), dtype=np.int64)
            if rows is None:
                out += part
            else:
                out[rows] = part
        return out


class ItemVectorRead:
    """A queued read of items' ranking vectors (``{p}v:i:{item}``, :class:`features.windows.VectorLayout`):
    per shard one call of ``vectors.lua``, which returns the vectors as one string (one reply to
    parse, one ``numpy.frombuffer``); the counts ``names`` (``<action>_<window>`` of the
    ``item_vector_actions``) summed at the watermark and over the shards, each item's trending
    log-score merged over the shards. With ``categories``, also the items' catalogue categories,
    from the first shard's catalogue (which holds every item) in the same call."""

    def __init__(self, reader: FeatureReader, ids: Sequence[str], names: Sequence[str],
                 categories: bool = False) -> None:
        config = reader.config
        self.vector = VectorLayout(RingLayout(config.windows), tuple(config.item_vector_actions))
        windows = {w.name for w in config.windows}
        self.names = []
        for name in names:
            action, _, window = name.rpartition("_")
            if action not in self.vector.actions or window not in windows:
                raise ValueError(f"unknown item count {name!r}: expected <action>_<window> of the item "
                                 f"vector's actions {self.vector.actions} and a configured window")
            self.names.append((action, window))
        self.reader, self.ids, self.categories = reader, list(ids), categories

    @property
    def replies(self) -> int:
        """How many replies :meth:`build` queues (one per shard)."""
        return len(self.reader.layout.prefixes)

    def build(self, pipe: Any) -> None:
        layout, ids, blank = self.reader.layout, orjson.dumps(self.ids), self.vector.blank
        for shard, prefix in enumerate(layout.prefixes):
            pipe.evalsha(self.reader._vectors_script.sha, 1, layout.route(shard), prefix, ids, blank,
                         "1" if self.categories and shard == 0 else "0")

    def decode(self, replies: Sequence[Any], watermark: float) -> tuple[np.ndarray, np.ndarray, list | None]:
        """``int64 (len(ids), len(names))`` counts, ``float64 (len(ids),)`` trending log-scores
        (``-inf`` where none) and, if asked, the categories (bytes, None where unknown)."""
        counts = np.zeros((len(self.ids), len(self.names)), dtype=np.int64)
        scores = []
        for blob, _ in replies:
            rings, trending = self.vector.decode_joined(blob, len(self.ids))
            for c, (action, window) in enumerate(self.names):
                counts[:, c] += self.vector.rings.sums(self.vector.words(rings, action), window, watermark)
            scores.append(trending)
        trending = scores[0] if len(scores) == 1 else np.logaddexp.reduce(np.stack(scores), axis=0)
        if not self.categories:
            return counts, trending, None
        return counts, trending, [c if c else None for c in replies[0][1]]


def merge_log_scores(parts: Sequence[Sequence[Any]]) -> list[float | None]:
    """Per entry, the log of the summed exponentials of the shards' log-scores (a forward-decayed
    count split over shards adds up so), None where no shard has one.

    >>> merge_log_scores([[b"0", None], [b"0", None]])[0] == float(np.log(2)), merge_log_scores([[None]])
    (True, [None])
    """
    if len(parts) == 1:
        return [None if v is None else float(v) for v in parts[0]]
    values = np.array([[-np.inf if v is None else float(v) for v in part] for part in parts], dtype=np.float64)
    merged = np.logaddexp.reduce(values, axis=0)
    return [None if np.isneginf(v) else float(v) for v in merged.tolist()]


def first_known(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Per entry, the first shard's non-empty value (None where none has one)."""
    if len(parts) == 1:
        return list(parts[0])
    return [next((v for v in column if v), column[0]) for column in zip(*parts)]


def merge_top(parts: Sequence[Sequence[tuple[bytes, float]]], k: int) -> list[tuple[bytes, float]]:
    """The ``k`` best of the shards' ``(item, log-score)`` rankings merged (:func:`merge_log_scores`)."""
    if len(parts) == 1:
        return list(parts[0])
    merged: dict[bytes, float] = {}
    for part in parts:
        for item, score in part:
            merged[item] = float(np.logaddexp(merged[item], score)) if item in merged else float(score)
    return sorted(merged.items(), key=lambda kv: -kv[1])[:k]


def covisit_sums(replies: Sequence[Sequence[int]]) -> np.ndarray:
    """One co-visit score per pair from the replies :meth:`FeatureReader.covisit_scores` queued."""
    return np.sum([np.asarray(r, dtype=np.float64) for r in replies], axis=0) if len(replies) > 1 \
        else np.asarray(replies[0], dtype=np.float64)


def acted_flags(replies: Sequence[Sequence[float | None]], pairs: Sequence[tuple[int, str]]) -> np.ndarray:
    """Per pair, whether its user acted on its item, from the replies :meth:`FeatureReader.acted_on`
    queued (users in the order of their first pair); no replies: all False."""
    flags = np.zeros(len(pairs), dtype=bool)
    for reply, rows in zip(replies, _pairs_by_user(pairs).values() if replies else ()):
        flags[rows] = [score is not None for score in reply]
    return flags


def _pairs_by_user(pairs: Sequence[tuple[int, str]]) -> dict[int, list[int]]:
    """The indices of each user's pairs, users in the order of their first pair."""
    rows: dict[int, list[int]] = {}
    for n, (u, _) in enumerate(pairs):
        rows.setdefault(u, []).append(n)
    return rows


def _recent_lists(replies: Sequence[Sequence[bytes]], users: Sequence[str], row: np.ndarray) -> list[list[str]]:
    """Per requested user (``row`` into ``users``), its decoded recent items; no replies: all empty."""
    lists = [[r.decode() for r in rows] for rows in replies] or [[] for _ in users]
    return [list(lists[r]) for r in row.tolist()]
