"""The one reader of real-time features, used by serving: many users or items in one round trip.

Window counts are read at the store's watermark (the newest event time applied), so features of
a replayed historical stream mean the same as those of a live one. They are binary ring strings
(:class:`features.windows.RingLayout`), fetched by MGET and summed with numpy (:class:`RingRead`).

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
from features.windows import RingLayout

COVISITS_SCRIPT = resources.files("features").joinpath("covisits.lua").read_text()
COVISITED_SCRIPT = resources.files("features").joinpath("covisited.lua").read_text()
RINGS_SCRIPT = resources.files("features").joinpath("rings.lua").read_text()
#: Loaded again, all of them, when Redis answers NOSCRIPT (it restarted or was flushed).
READ_SCRIPTS = (COVISITS_SCRIPT, COVISITED_SCRIPT, RINGS_SCRIPT)


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

    def watermark(self) -> float:
        """Newest event time applied so far (0 before the first event)."""
        return float(self.client.get(keys.watermark(self.config.prefix)) or 0.0)

    def users(self, user_ids: Sequence[str]) -> list[dict]:
        """Features of each user, in order; unknown users get zero counts and empty lists."""
        p = self.config.prefix
        wm, actions = self._watermark_and_actions()

        def build(pipe: Any) -> None:
            for u in user_ids:
                pipe.hget(keys.user_state(p, u), "last_ts")
                pipe.lrange(keys.recent(p, u), 0, -1)
                pipe.lrange(keys.session(p, u), 0, -1)
            self._queue_rings(pipe, "u", user_ids, actions)

        replies = self.run_pipeline(build)
        counts = self._all_counts(replies[-1], len(user_ids), actions, wm)
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
        (blobs,) = self.run_pipeline(lambda pipe: self._queue_rings(pipe, "g", [""], actions))
        return {"counts": self._all_counts(blobs, 1, actions, wm)[0], "last_ts": 0.0}

    def items(self, item_ids: Sequence[str]) -> list[dict]:
        """Features of each item, in order, with smoothed CTRs and trending/popularity scores."""
        p = self.config.prefix
        wm, actions = self._watermark_and_actions()
        names = list(item_ids) or [""]

        def build(pipe: Any) -> None:
            self._queue_rings(pipe, "i", item_ids, actions)
            self._queue_rings(pipe, "g", [""], actions)
            pipe.hmget(keys.catalog(p), names)
            pipe.zmscore(keys.ranking(p, "trending"), names)
            pipe.zmscore(keys.ranking(p, "popular"), names)

        blobs, stream_blobs, categories, trending, popular = self.run_pipeline(build)
        counts = self._all_counts(blobs, len(item_ids), actions, wm)
        stream = self._all_counts(stream_blobs, 1, actions, wm)[0]
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
        return [r.decode() for r in self.client.lrange(keys.recent(self.config.prefix, user_id), 0, -1)]

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
        prefix = self.config.prefix

        def queue(pipe: Any) -> None:
            for u in users:
                pipe.lrange(keys.recent(prefix, u), 0, last)
        return queue

    def recall_many(self, user_ids: Sequence[str], top: int) -> list[UserRecall]:
        """Each user's recent items and their ``top`` most co-visited items not among them (summed
        over the last ``covisit_query`` recent items), in one round trip: what serving reads first."""
        return self._recalls(self.run_pipeline(lambda pipe: self._queue_recall(pipe, user_ids, top)))

    async def recall_many_async(self, user_ids: Sequence[str], top: int) -> list[UserRecall]:
        """:meth:`recall_many` without blocking the event loop (with an ``async_client``)."""
        return self._recalls(await self.run_pipeline_async(lambda pipe: self._queue_recall(pipe, user_ids, top)))

    def _queue_recall(self, pipe: Any, user_ids: Sequence[str], top: int) -> None:
        pipe.evalsha(self._covisited_script.sha, 0, self.config.prefix, self.config.covisit_query, top,
                     orjson.dumps(list(user_ids)))

    @staticmethod
    def _recalls(replies: list) -> list[UserRecall]:
        return [UserRecall([r.decode() for r in recent], [i.decode() for i in best[0::2]], [int(x) for x in best[1::2]])
                for recent, best in replies[0]]

    def covisit_scores(self, pipe: Any, user_ids: Sequence[str], pairs: Sequence[tuple[int, str]]) -> None:
        """Queue on ``pipe`` the co-visitation score of each ``(index into user_ids, item)`` pair:
        the sum over the user's last ``covisit_query`` items of the times each was co-visited with
        the item. The reply is one integer per pair (the ranking feature ``pair_log_covisits``)."""
        c = self.config
        pipe.evalsha(self._covisits_script.sha, 0, c.prefix, c.covisit_query, orjson.dumps(list(user_ids)),
                     orjson.dumps([(u + 1, i) for u, i in pairs]))

    def catalog_since(self, cursor: int, limit: int = 50_000) -> tuple[list[tuple[str, str | None]], int]:
        """Catalogue entries ``(item, category or None)`` added or changed after ``cursor``, and the new cursor.

        Start from cursor 0; pass back what was returned to get only later changes (at most
        ``limit`` per call, oldest first). A cursor ahead of the store (Redis was emptied) starts over.
        """
        p = self.config.prefix
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
        wm = self.watermark()
        rows = self.client.zrevrange(keys.ranking(self.config.prefix, ranking), 0, k - 1, withscores=True)
        return [(item.decode(), self._decayed(score, tau, wm)) for item, score in rows]

    async def top_many_async(self, rankings: Sequence[str], k: int) -> dict[str, list[tuple[str, float]]]:
        """:meth:`top` of several rankings in one round trip, without blocking the event loop."""
        taus = {"trending": self.config.trending_tau_s, "popular": self.config.popular_tau_s}
        if any(r not in taus for r in rankings):
            raise ValueError(f"unknown ranking in {rankings!r}")

        def build(pipe: Any) -> None:
            pipe.get(keys.watermark(self.config.prefix))
            for ranking in rankings:
                pipe.zrevrange(keys.ranking(self.config.prefix, ranking), 0, k - 1, withscores=True)

        wm, *rows = await self.run_pipeline_async(build)
        return {r: [(item.decode(), self._decayed(score, taus[r], float(wm or 0.0))) for item, score in found]
                for r, found in zip(rankings, rows)}

    def window_counts(self, kind: str, ids: Sequence[Any], names: Sequence[str]) -> np.ndarray:
        """Counts ``names`` (``"<action>_<window>"``) of users (``kind="u"``), items (``"i"``), the
        stream (``"g"``, one row) or (user, item) pairs (``"uc"``, ids ``(user, item)``: the user's
        counts of the item's category, zeros where the catalogue has none) at the watermark, in one
        round trip: ``int64 (len(ids), len(names))``. Many reads in one pipeline: :class:`RingRead`."""
        read = RingRead(self, kind, ids, names)

        def build(pipe: Any) -> None:
            pipe.get(keys.watermark(self.config.prefix))
            read.build(pipe)

        wm, reply = self.run_pipeline(build)
        return read.decode(reply, float(wm or 0.0))

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
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.watermark(self.config.prefix))
        pipe.smembers(keys.actions(self.config.prefix))
        wm, actions = pipe.execute()
        return float(wm or 0.0), sorted(a.decode() for a in actions)

    def _queue_rings(self, pipe: Any, kind: str, ids: Sequence[str], actions: Sequence[str]) -> None:
        """Queue an MGET of the rings of ``ids`` times ``actions`` (entity-major); with none to read,
        of one key that is never a ring (MGET needs a key; :meth:`_all_counts` ignores the reply)."""
        p = self.config.prefix
        pipe.mget(RingRead.keys_of(p, kind, ids, actions) or [keys.watermark(p)])

    def _all_counts(self, blobs: Sequence[bytes | None], n: int, actions: Sequence[str],
                    watermark: float) -> list[dict[str, int]]:
        """``{"<action>_<window>": count}`` of ``n`` entities from their rings of ``actions``
        (``n * len(actions)`` strings, entity-major); an action without a ring is left out."""
        layout = RingLayout(self.config.windows)
        out: list[dict[str, int]] = [{} for _ in range(n)]
        if not actions or not n:
            return out
        words = layout.decode(blobs[: n * len(actions)])
        present = np.array([b is not None for b in blobs[: n * len(actions)]]).reshape(n, len(actions))
        for w in self.config.windows:
            sums = layout.sums(words, w.name, watermark).reshape(n, len(actions))
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
    """A queued read of window counts (:meth:`build` on a pipeline, :meth:`decode` of its reply):
    the ring strings of the actions ``names`` need, of users, items, the stream or (user, item
    category) pairs, fetched by ``rings.lua`` (one JSON argument, bulk commands inside) and
    summed at the watermark with numpy. With ``extras`` (items) the reply also holds the items'
    trending log-scores and catalogue categories (:meth:`extras`)."""

    def __init__(self, reader: FeatureReader, kind: str, ids: Sequence[Any], names: Sequence[str],
                 extras: bool = False) -> None:
        if kind not in ("u", "i", "g", "uc"):
            raise ValueError(f"kind must be u, i, g or uc, got {kind!r}")
        if extras and kind != "i":
            raise ValueError("extras are read for items")
        self.extras = extras
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

    @staticmethod
    def keys_of(prefix: str, kind: str, ids: Sequence[str], actions: Sequence[str]) -> list[str]:
        """Ring keys of ``ids`` (entity-major) times ``actions``, for an MGET."""
        head = keys.ring(prefix, kind, "", "")[:-1]  # the key of entity "" and action "", less the separator
        ends = [f"\x1f{a}" for a in actions]
        return [f"{head}{i}{end}" for i in ids for end in ends]

    def build(self, pipe: Any) -> None:
        pipe.evalsha(self.reader._rings_script.sha, 0, self.reader.config.prefix, self.kind,
                     orjson.dumps(self.actions), orjson.dumps([list(i) if self.kind == "uc" else i for i in self.ids]),
                     "1" if self.extras else "0")

    @staticmethod
    def extras_of(reply: list) -> tuple[list, list]:
        """The trending log-scores and catalogue categories of an ``extras`` reply (None where absent)."""
        return reply[1], reply[2]

    def decode(self, reply: Sequence[Any], watermark: float) -> np.ndarray:
        n, per = len(self.ids), len(self.actions)
        words = self.layout.decode(list(reply[0] if self.extras else reply)[: n * per])
        out = np.zeros((n, len(self.names)), dtype=np.int64)
        sums = {w: self.layout.sums(words, w, watermark).reshape(n, per) for w in {w for _, w in self.names}}
        for col, (action, window) in enumerate(self.names):
            out[:, col] = sums[window][:, self.actions.index(action)]
        return out


def _recent_lists(replies: Sequence[Sequence[bytes]], users: Sequence[str], row: np.ndarray) -> list[list[str]]:
    """Per requested user (``row`` into ``users``), its decoded recent items; no replies: all empty."""
    lists = [[r.decode() for r in rows] for rows in replies] or [[] for _ in users]
    return [list(lists[r]) for r in row.tolist()]
