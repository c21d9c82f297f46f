"""The one reader of real-time features, used by serving: many users or items in one round trip.

Window counts are read at the store's watermark (the newest event time applied), so features of
a replayed historical stream mean the same as those of a live one.

Returned per entity: ``counts`` (``{"<action>_<window>": n}``), ``ctr_<window>`` for items and the
stream (clicks / impressions, smoothed towards the stream's CTR with ``ctr_prior_strength``
pseudo-impressions), ``last_ts``, and for users ``recent_items`` and ``session_items``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from importlib import resources
from typing import Any, Callable, Sequence

import numpy as np
import orjson
import redis
import redis.asyncio

from features import keys
from features.config import FeatureConfig
from features.windows import count_in_window

COUNTS_SCRIPT = resources.files("features").joinpath("window_counts.lua").read_text()
COVISITS_SCRIPT = resources.files("features").joinpath("covisits.lua").read_text()
#: Loaded again, all of them, when Redis answers NOSCRIPT (it restarted or was flushed).
READ_SCRIPTS = (COUNTS_SCRIPT, COVISITS_SCRIPT)


class FeatureReader:
    """Reads what :class:`features.writer.FeatureWriter` wrote (layout in features/keys.py)."""

    def __init__(self, client: redis.Redis, config: FeatureConfig | None = None,
                 async_client: redis.asyncio.Redis | None = None) -> None:
        """``async_client`` (the same server) serves the ``*_async`` reads; without it they block."""
        self.client = client
        self.async_client = async_client
        self.config = config or FeatureConfig()
        self._windows = {w.name: w for w in self.config.windows}
        self._counts_script = client.register_script(COUNTS_SCRIPT)
        self._covisits_script = client.register_script(COVISITS_SCRIPT)

    def watermark(self) -> float:
        """Newest event time applied so far (0 before the first event)."""
        return float(self.client.get(keys.watermark(self.config.prefix)) or 0.0)

    def users(self, user_ids: Sequence[str]) -> list[dict]:
        """Features of each user, in order; unknown users get zero counts and empty lists."""
        p = self.config.prefix
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.watermark(p))
        for u in user_ids:
            pipe.hgetall(keys.counters(p, "u", u))
            pipe.lrange(keys.recent(p, u), 0, -1)
            pipe.lrange(keys.session(p, u), 0, -1)
        replies = pipe.execute()
        wm = float(replies[0] or 0.0)
        out = []
        for n in range(len(user_ids)):
            counters, recent, session = replies[1 + 3 * n: 4 + 3 * n]
            features = self._counters(counters, wm)
            features["recent_items"] = [r.decode() for r in recent]
            features["session_items"] = [s.decode() for s in session]
            out.append(features)
        return out

    def stream(self) -> dict:
        """Stream-wide features: counts per action and window over every event."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.watermark(self.config.prefix))
        pipe.hgetall(keys.counters(self.config.prefix, "g", ""))
        wm, counters = pipe.execute()
        return self._counters(counters, float(wm or 0.0))

    def items(self, item_ids: Sequence[str]) -> list[dict]:
        """Features of each item, in order, with smoothed CTRs and trending/popularity scores."""
        p = self.config.prefix
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.watermark(p))
        pipe.hgetall(keys.counters(p, "g", ""))
        for i in item_ids:
            pipe.hgetall(keys.counters(p, "i", i))
        pipe.zmscore(keys.ranking(p, "trending"), list(item_ids) or [""])
        pipe.zmscore(keys.ranking(p, "popular"), list(item_ids) or [""])
        replies = pipe.execute()
        wm = float(replies[0] or 0.0)
        stream = self._counters(replies[1], wm)
        trending, popular = replies[-2], replies[-1]
        out = []
        for n, counters in enumerate(replies[2:2 + len(item_ids)]):
            features = self._counters(counters, wm)
            features["category"] = counters.get(b"category", b"").decode() or None
            for w in self.config.windows:
                features[f"ctr_{w.name}"] = self._smoothed_ctr(features["counts"], stream["counts"], w.name)
            features["trending"] = self._decayed(trending[n], self.config.trending_tau_s, wm)
            features["popular"] = self._decayed(popular[n], self.config.popular_tau_s, wm)
            out.append(features)
        return out

    def recent_items(self, user_id: str) -> list[str]:
        """The items the user acted on last, newest first (what serving blocks and the user tower reads)."""
        return [r.decode() for r in self.client.lrange(keys.recent(self.config.prefix, user_id), 0, -1)]

    def recent_items_many(self, user_ids: Sequence[str]) -> list[list[str]]:
        """:meth:`recent_items` of several users in one round trip."""
        replies = self.run_pipeline(lambda pipe: [pipe.lrange(keys.recent(self.config.prefix, u), 0, -1)
                                                  for u in user_ids])
        return [[r.decode() for r in rows] for rows in replies]

    async def recent_items_many_async(self, user_ids: Sequence[str]) -> list[list[str]]:
        """:meth:`recent_items_many` without blocking the event loop (with an ``async_client``)."""
        replies = await self.run_pipeline_async(lambda pipe: [pipe.lrange(keys.recent(self.config.prefix, u), 0, -1)
                                                              for u in user_ids])
        return [[r.decode() for r in rows] for rows in replies]

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

    def window_counts(self, kind: str, ids: Sequence[Any], names: Sequence[str],
                      pipe: redis.client.Pipeline | None = None, extras: bool = False) -> np.ndarray | None:
        """Counts ``names`` (``"<action>_<window>"``) of users (``kind="u"``), items (``"i"``), the
        stream (``"g"``, one row) or (user, item) pairs (``"uc"``, ids ``(user, item)``: the user's
        counts of the item's category, zeros where the catalogue has none), summed inside Redis:
        ``int64 (len(ids), len(names))``.

        With ``pipe`` the call is queued there (returns None); decode its reply with
        :func:`counts_array`. This is the fast path for many entities (serving, training). With
        ``extras`` (items, queued on a pipe) the reply is ``[counts, trending log-scores,
        catalogue categories]``, the last two with None where absent.
        """
        if kind not in ("u", "i", "g", "uc"):
            raise ValueError(f"kind must be u, i, g or uc, got {kind!r}")
        if extras and (kind != "i" or pipe is None):
            raise ValueError("extras are read for items, on a pipeline")
        args: list = [self.config.prefix, kind, len(names)]
        for name in names:
            action, _, window = name.rpartition("_")
            spec = self._windows.get(window)
            if spec is None or not action:
                raise ValueError(f"unknown count {name!r}: expected <action>_<window> with a configured window")
            args += [window, action, spec.bucket_s, spec.slots]
        args.append(orjson.dumps(["-"] if kind == "g" else list(ids)))
        args.append("1" if extras else "0")
        if pipe is not None:
            # EVALSHA, not the Script object: a pipeline holding Script calls first asks Redis
            # SCRIPT EXISTS, one more round trip per pipeline (see run_pipeline for a missing script).
            pipe.evalsha(self._counts_script.sha, 0, *args)
            return None
        return counts_array(self._counts_script(args=args), len(names))

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

    def _counters(self, fields: dict[bytes, bytes], watermark: float) -> dict:
        slots: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        last_ts = 0.0
        for field, value in fields.items():
            name = field.decode()
            if name == "last_ts":
                last_ts = float(value)
            elif name.count(":") == 2:
                window, action, _slot = name.split(":")
                slots[(window, action)].append(value)
        counts: dict[str, int] = {}
        for (window, action), values in slots.items():
            spec = self._windows.get(window)
            if spec is not None:
                counts[f"{action}_{window}"] = count_in_window(spec, values, watermark)
        return {"counts": counts, "last_ts": last_ts}

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



def counts_array(reply: Sequence[int], n_names: int) -> np.ndarray:
    """A :meth:`FeatureReader.window_counts` reply as ``int64 (entities, n_names)``."""
    return np.asarray(reply, dtype=np.int64).reshape(-1, n_names)
