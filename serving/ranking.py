"""Ranking: the real-time feature vector, business rules, and the recommend/score flows.

``/recommend`` for a known user, two Redis round trips in all::

    the user's recent items (Redis) -> user vector (user tower over the mirror) -> top-N by FAISS
      -> the best ``ranked`` not blocked -> the user's and items' real-time features and the
         items' categories (Redis, ONE round trip: :func:`features.realtime.read_realtime`,
         the same definition the trainer reads) -> ranking head and towers (RecModel.ranking_logit)
      -> rules: drop excluded items and those the user acted on (its recent items, left out of
         retrieval, and the ``acted_items`` latest, read with the features), cap items per category,
         reserve a few slots for new items (exploration) -> top k

A user with neither a row in the mirror nor recent items gets the cold-start list: trending items,
then popular ones, minus excluded and already-seen items. :func:`apply_rules` does no I/O and is tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from features.ids import feature_ids
from features.reader import FeatureReader, UserRecall
from features.realtime import (ITEM_COUNTS, RealtimeReads, read_realtime, read_realtime_async, read_realtime_many,
                               read_realtime_many_async)
from rtrec.recipe.examples import RECENT_FOR_TOWER, ModelSlots
from serving.catalog import ItemCatalog
from serving.index import ItemIndex
from serving.mirror import ParamMirror
from serving.model_state import ModelHolder, ServingModel, UserSide

__all__ = ["Ask", "RankingConfig", "Recommendation", "Recommender", "apply_rules", "explanation"]


@dataclass(frozen=True)
class RankingConfig:
    """Knobs of ranking and its business rules.

    Attributes:
        candidates: most items retrieved by the user vector besides blocked ones; a request asks
            the index for ``min(candidates, 2 * ranked)`` plus its blocked items, enough to
            fill ``ranked`` after dropping items without a name.
        ranked: the best of them by retrieval score (after dropping blocked items) that get
            real-time features from Redis and the ranking head; bounds the per-request Redis
            and scoring work, which dominate latency (~0.1 ms per ranked item here).
        covisited: most items of the co-visitation channel ranked besides those: the items most
            often co-visited with the user's last few (features/covisited.lua), read in the same
            round trip as the recent items. The user vector finds what the user's taste is near;
            co-visitation finds what followed the user's last items for other users, the
            strongest signal in a session (``cooccurrence`` of ``rtrec eval``); the ranking head,
            which sees ``pair_log_covisits``, orders both. 0 turns the channel off.
        max_category_share: at most ``max(1, ceil(share * k))`` items of one category in a list
            (relaxed only when too few items remain to fill ``k``).
        explore_share: share of the ``k`` slots (rounded down) given to new items -- candidates
            without an impression in the last 24 h -- with the best scores among them.
    """

    candidates: int = 300
    ranked: int = 50
    covisited: int = 50
    max_category_share: float = 0.3
    explore_share: float = 0.1

    @classmethod
    def from_settings(cls, settings: Any) -> "RankingConfig":
        """The ranking of serving and ``rtrec eval`` as :class:`rtrec.settings.Settings` configures it."""
        return cls(ranked=settings.serving_ranked, covisited=settings.serving_covisited)

    def __post_init__(self) -> None:
        if not 1 <= self.ranked <= self.candidates or self.covisited < 0:
            raise ValueError("need 1 <= ranked <= candidates and covisited >= 0")
        if not 0 < self.max_category_share <= 1 or not 0 <= self.explore_share < 1:
            raise ValueError("max_category_share must be in (0, 1] and explore_share in [0, 1)")


@dataclass(frozen=True)
class Recommendation:
    """A ranked list of (item_id, score), whether it is the cold-start list, and the user vector used."""

    items: list[tuple[str, float]]
    cold_start: bool
    user_vector: np.ndarray | None = None
    categories: list[str | None] | None = None  # of ``items``, where ranking knew them
    explain: dict[str, Any] | None = None  # only when the ask wanted it: see :func:`explanation`


def apply_rules(names: Sequence[str], scores: np.ndarray, categories: Sequence[str | None],
                is_new: np.ndarray, blocked: set[str], k: int, max_per_category: int,
                explore_slots: int) -> list[int]:
    """Indices of the final list, best first: the business rules over scored candidates.

    1. blocked names (excluded, already acted on) never appear;
    2. ``k - explore_slots`` best items with at most ``max_per_category`` per category;
    3. then up to ``explore_slots`` of the best new items not chosen yet (exploration);
    4. if still short of ``k``, the best remaining items regardless of category.

    >>> apply_rules(["a", "b", "c", "d"], np.array([4., 3., 2., 1.]), ["x", "x", "y", None],
    ...             np.array([0, 0, 0, 1], bool), {"c"}, k=3, max_per_category=1, explore_slots=1)
    [0, 3, 1]
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    allowed = [int(i) for i in order if names[i] not in blocked]  # per candidate: a few hundred
    chosen: list[int] = []
    taken: set[int] = set()
    per_category: dict[str | None, int] = {}
    for i in allowed:
        if len(chosen) >= k - explore_slots:
            break
        cat = categories[i]
        if cat is not None and per_category.get(cat, 0) >= max_per_category:
            continue
        per_category[cat] = per_category.get(cat, 0) + 1
        chosen.append(i)
        taken.add(i)
    for i in [i for i in allowed if is_new[i] and i not in taken][:explore_slots]:
        chosen.append(i)
        taken.add(i)
    for i in allowed:
        if len(chosen) >= k:
            break
        if i not in taken:
            chosen.append(i)
            taken.add(i)
    return chosen[:k]


def explanation(cold_start: bool, retrieved: Sequence[str], ranked: Sequence[str],
                blocked: set[str]) -> dict[str, Any]:
    """What a request went through, for ``"explain": true`` (diagnosis of the deployed system).

    ``retrieved``: the named, unblocked candidates FAISS returned, best first; ``ranked``: those the
    ranking head scored, in head-score order (before the rules); ``blocked``: excluded and
    already-acted-on items, sorted. A cold-start request retrieves and ranks nothing.

    >>> explanation(False, ["a", "b", "c"], ["b", "a"], {"z"})
    {'cold_start': False, 'retrieved': ['a', 'b', 'c'], 'ranked': ['b', 'a'], 'blocked': ['z']}
    """
    return {"cold_start": cold_start, "retrieved": list(retrieved), "ranked": list(ranked),
            "blocked": sorted(blocked)}


class Recommender:
    """The request-side flows over the mirror, the model, the item index and the feature store."""

    def __init__(self, mirror: ParamMirror, holder: ModelHolder, catalog: ItemCatalog, index: ItemIndex,
                 reader: FeatureReader, slots: ModelSlots, config: RankingConfig = RankingConfig()) -> None:
        self.mirror, self.holder, self.catalog, self.index = mirror, holder, catalog, index
        self.reader, self.slots, self.config = reader, slots, config

    # -- queries -------------------------------------------------------------------------------

    def user_known(self, user_id: str) -> bool:
        return bool(self.mirror.contains(feature_ids(self.slots.user, [user_id]))[0])

    def item_known(self, item_id: str) -> bool:
        return bool(self.mirror.contains(feature_ids(self.slots.item, [item_id]))[0])

    def recommend(self, user_id: str, k: int, context: Mapping[str, Any] | None,
                  exclude: Sequence[str]) -> Recommendation:
        """The top ``k`` items for the user (module docstring); never an excluded or seen item."""
        return self.recommend_many([Ask(user_id, k, context, exclude)])[0]

    def recommend_many(self, asks: Sequence[Ask]) -> list[Recommendation]:
        """:meth:`recommend` of several requests, each stage done once for all of them."""
        recalls = self.reader.recall_many([a.user_id for a in asks], self.config.covisited)
        plans = self._retrieve_many(asks, recalls)
        ranked = [p for p in plans if not p.cold_start]
        reads = read_realtime_many(self.reader, [([p.user_id], p.names) for p in ranked], categories=True,
                                   recalled=_recent_by_user(asks, recalls), acted=True)
        cold = [p for p in plans if p.cold_start]
        depth = max((p.k + len(p.blocked) for p in cold), default=0)
        top = {name: self.reader.top(name, depth) for name in ("trending", "popular")} if cold else {}
        return self._finish_many(plans, ranked, reads, top)

    async def recommend_many_async(self, asks: Sequence[Ask]) -> list[Recommendation]:
        """:meth:`recommend_many` leaving the event loop free while Redis answers (two round trips in
        all, whatever the number of requests; the HTTP handlers batch concurrent requests into it)."""
        recalls = await self.reader.recall_many_async([a.user_id for a in asks], self.config.covisited)
        plans = self._retrieve_many(asks, recalls)
        ranked = [p for p in plans if not p.cold_start]
        cold = [p for p in plans if p.cold_start]
        reads = await read_realtime_many_async(self.reader, [([p.user_id], p.names) for p in ranked],
                                               categories=True, recalled=_recent_by_user(asks, recalls), acted=True)
        depth = max((p.k + len(p.blocked) for p in cold), default=0)
        top = await self.reader.top_many_async(("trending", "popular"), depth) if cold else {}
        return self._finish_many(plans, ranked, reads, top)

    def score(self, user_id: str, item_ids: Sequence[str], context: Mapping[str, Any] | None) -> np.ndarray:
        """Ranking scores (RecModel.ranking_logit, in (0, 1)) of the given items for the user, in order (unknown IDs score as zero rows)."""
        if not item_ids:
            return np.empty(0, dtype=np.float32)
        recent = self.reader.recent_items(user_id)[:RECENT_FOR_TOWER]
        reads = read_realtime(self.reader, [user_id], list(item_ids), categories=True)
        return self._score(user_id, recent, item_ids, context, reads)

    async def score_async(self, user_id: str, item_ids: Sequence[str],
                          context: Mapping[str, Any] | None) -> np.ndarray:
        """:meth:`score` that leaves the event loop free while Redis answers."""
        if not item_ids:
            return np.empty(0, dtype=np.float32)
        recent = (await self.reader.recent_items_many_async([user_id], limit=RECENT_FOR_TOWER))[0]
        reads = await read_realtime_async(self.reader, [user_id], list(item_ids), categories=True)
        return self._score(user_id, recent, item_ids, context, reads)

    def similar_items(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """Items nearest to ``item_id`` by item-tower vector; None if the item is not synced."""
        fid = feature_ids(self.slots.item, [item_id])
        if not self.mirror.contains(fid)[0]:
            return None
        query = self.holder.current.item_vectors(fid, *self.catalog.category_ids(fid))
        scores, labels = self.index.search(query, k + 1)
        names = self.catalog.names(labels[0][labels[0] >= 0].view(np.uint64))
        out = [(n, float(s)) for n, s in zip(names, scores[0]) if n is not None and n != item_id]
        return out[:k]

    def similar_users(self, user_id: str, k: int, users: "RecentUsers") -> list[tuple[str, float]] | None:
        """Recently served users nearest to ``user_id`` by user-tower vector; None if the user is not synced."""
        if not self.user_known(user_id):
            return None
        recent = self.reader.recent_items(user_id)[:RECENT_FOR_TOWER]
        query = self.holder.current.scorer.embed_users([user_id], [recent])[0]
        return [(n, s) for n, s in users.nearest(query, k + 1) if n != user_id][:k]

    def embedding(self, kind: str, entity_id: str) -> np.ndarray | None:
        """The synced sparse row of a user or item (what the parameter server holds); None if unknown."""
        fid = feature_ids(self.slots.user if kind == "user" else self.slots.item, [entity_id])
        if not self.mirror.contains(fid)[0]:
            return None
        return self.mirror.pull_many(fid)[0]

    # -- internals -----------------------------------------------------------------------------

    def _retrieve_many(self, asks: Sequence[Ask], recalls: Sequence[UserRecall]) -> list["_Plan"]:
        """Stage 1 (no I/O): blocked items, user vectors (one tower pass) and, by one FAISS search,
        the named candidates of every request, then its co-visited items not among them."""
        blocked = [set(a.exclude) | set(r.recent) for a, r in zip(asks, recalls)]
        known = self.mirror.contains(feature_ids(self.slots.user, [a.user_id for a in asks]))
        # the user tower reads the user's recent items too: a user without a row yet (not admitted,
        # not synced) but with recent items is served by the model, not the cold-start list
        warm = np.flatnonzero(known | np.array([bool(r.recent) for r in recalls], dtype=bool)).tolist()
        plans = [_Plan(a, b, cold_start=True) for a, b in zip(asks, blocked)]
        if not warm:
            return plans
        model = self.holder.current
        recents = [recalls[i].recent[:RECENT_FOR_TOWER] for i in warm]
        sides = model.user_sides([asks[i].user_id for i in warm], recents, [asks[i].context for i in warm])
        vectors = sides.vector.numpy()
        depth = min(self.config.candidates, 2 * self.config.ranked) + max(len(blocked[i]) for i in warm)
        _, labels = self.index.search(vectors, min(depth, 4096))
        for row, i in enumerate(warm):
            fids = labels[row][labels[row] >= 0].view(np.uint64)
            if blocked[i]:
                fids = fids[~np.isin(fids, self.catalog.feature_ids(sorted(blocked[i])))]
            found = [(f, n) for f, n in zip(fids.tolist(), self.catalog.names(fids)) if n is not None]
            named = found[: self.config.ranked]
            covisited = self._covisited(recalls[i], blocked[i], {n for _, n in named})
            retrieved = list(dict.fromkeys(n for _, n in found + covisited)) if asks[i].explain else []
            named += covisited
            plans[i] = _Plan(asks[i], blocked[i], not named, vectors[row], model, sides, row,
                             np.array([f for f, _ in named], dtype=np.uint64), [n for _, n in named], retrieved)
        return plans

    def _covisited(self, recall: UserRecall, blocked: set[str], ranked: set[str]) -> list[tuple[int, str]]:
        """(feature ID, name) of the user's co-visited items neither blocked nor ranked already."""
        names = [n for n in recall.covisited if n not in blocked and n not in ranked][: self.config.covisited]
        return list(zip(feature_ids(self.slots.item, names).tolist(), names))

    def _finish_many(self, plans: list["_Plan"], ranked: list["_Plan"], reads: list[RealtimeReads],
                     top: Mapping[str, list[tuple[str, float]]]) -> list[Recommendation]:
        """Stage 2 (no I/O): one ranking-head pass over every request's candidates, then each
        request's rules; cold-start lists from the rankings in ``top``."""
        scored = dict(zip(map(id, ranked), self._score_plans(ranked, reads)))
        out = []
        for plan in plans:
            if plan.cold_start:
                items = self._cold_start(plan.k, plan.blocked, lambda name, _: top[name])
                why = explanation(True, [], [], plan.blocked) if plan.ask.explain else None
                out.append(Recommendation(items, True, plan.user_vector, explain=why))
            else:
                out.append(self._rules(plan, *scored[id(plan)]))
        return out

    def _score_plans(self, plans: list["_Plan"], reads: list[RealtimeReads]) -> list[tuple[np.ndarray, list, RealtimeReads]]:
        """Ranking-head scores and categories of each plan's candidates, in one pass of the model."""
        if not plans:
            return []
        categories = [[c or f for c, f in zip(r.categories or [], self.catalog.categories(p.fids))]
                      for p, r in zip(plans, reads)]
        rows = np.concatenate([np.full(p.fids.size, p.side_row, dtype=np.int64) for p in plans])
        model, sides = plans[0].model, plans[0].sides
        assert model is not None and sides is not None
        scores = model.score_rows(sides, rows, np.concatenate([p.fids for p in plans]),
                                  [c for cats in categories for c in cats], np.concatenate([r.dense for r in reads]))
        bounds = np.cumsum([0] + [p.fids.size for p in plans])
        return [(scores[lo:hi], cats, r) for lo, hi, cats, r in zip(bounds[:-1], bounds[1:], categories, reads)]

    def _rules(self, plan: "_Plan", scores: np.ndarray, categories: list, reads: RealtimeReads) -> Recommendation:
        """The business rules over one request's scored candidates."""
        is_new = reads.item_counts[:, ITEM_COUNTS.index("impression_24h")] == 0
        cap = max(1, math.ceil(self.config.max_category_share * plan.k))
        explore = int(self.config.explore_share * plan.k)
        blocked = plan.blocked | _acted_names(plan.names, reads)
        picked = apply_rules(plan.names, scores, categories, is_new, blocked, plan.k, cap, explore)
        why = None
        if plan.ask.explain:
            order = np.argsort(-np.asarray(scores), kind="stable")  # as apply_rules orders them
            why = explanation(False, [n for n in plan.retrieved if n not in blocked],
                              [plan.names[i] for i in order if plan.names[i] not in blocked], blocked)
        return Recommendation([(plan.names[i], float(scores[i])) for i in picked], cold_start=False,
                              user_vector=plan.user_vector, categories=[categories[i] for i in picked],
                              explain=why)

    def _score(self, user_id: str, recent: list[str], item_ids: Sequence[str], context: Mapping[str, Any] | None,
               reads: RealtimeReads) -> np.ndarray:
        fids = feature_ids(self.slots.item, list(item_ids))
        assert reads.categories is not None
        categories = [c or f for c, f in zip(reads.categories, self.catalog.categories(fids))]
        return self.holder.current.score_candidates(user_id, recent, context, fids, categories, reads.dense)

    @staticmethod
    def _cold_start(k: int, blocked: set[str],
                    top: Callable[[str, int], list[tuple[str, float]]]) -> list[tuple[str, float]]:
        """Trending items, then popular ones, minus blocked items, with their decayed scores."""
        out: list[tuple[str, float]] = []
        seen: set[str] = set()
        for ranking in ("trending", "popular"):
            for name, score in top(ranking, k + len(blocked)):
                if name not in blocked and name not in seen:
                    out.append((name, score))
                    seen.add(name)
                if len(out) >= k:
                    return out
        return out


@dataclass(frozen=True)
class Ask:
    """One /recommend request."""

    user_id: str
    k: int
    context: Mapping[str, Any] | None = None
    exclude: Sequence[str] = ()
    explain: bool = False  # also say what retrieval, ranking and the rules did (Recommendation.explain)


def _acted_names(names: Sequence[str], reads: RealtimeReads) -> set[str]:
    """The candidates their user acted on before (beyond the recent items retrieval already left
    out): a user is not shown again what it already watched or bought."""
    if reads.acted is None or not reads.acted.any():
        return set()
    return {names[i] for i in np.flatnonzero(reads.acted).tolist()}


def _recent_by_user(asks: Sequence[Ask], recalls: Sequence[UserRecall]) -> dict[str, list[str]]:
    """Each asking user's recent items as the recall read them: the ranking features' co-visit
    sums are read from what that recall kept (and a sharded store takes the lists)."""
    return {a.user_id: r.recent for a, r in zip(asks, recalls)}


@dataclass(frozen=True)
class _Plan:
    """What retrieval hands to ranking: the request, its blocked items and the candidates."""

    ask: Ask
    blocked: set[str]
    cold_start: bool
    user_vector: np.ndarray | None = None
    model: ServingModel | None = None
    sides: UserSide | None = None  # of the whole batch; this request's user is row ``side_row``
    side_row: int = 0
    fids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    names: list[str] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)  # every named candidate, kept only to explain

    @property
    def user_id(self) -> str:
        return self.ask.user_id

    @property
    def k(self) -> int:
        return self.ask.k


class RecentUsers:
    """The user-tower vectors of the last ``capacity`` users served, for ``/similar/users``.

    Users are known to serving by name only when they call it (their IDs are hashed in the
    parameter server), so "similar users" are searched among recently served users.
    """

    def __init__(self, dim: int, capacity: int = 50_000) -> None:
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)
        self.names: list[str | None] = [None] * capacity
        self._slot: dict[str, int] = {}
        self._next = 0

    def add(self, name: str, vector: np.ndarray) -> None:
        """Remember (or refresh) a user's vector; the oldest entry is overwritten when full."""
        slot = self._slot.get(name)
        if slot is None:
            slot = self._next
            self._next = (self._next + 1) % len(self.names)
            old = self.names[slot]
            if old is not None:
                del self._slot[old]
            self.names[slot] = name
            self._slot[name] = slot
        self.vectors[slot] = vector

    def nearest(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        n = len(self._slot)
        if n == 0:
            return []
        filled = self.vectors[:n] if n < len(self.names) else self.vectors
        scores = filled @ np.asarray(query, dtype=np.float32)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.names[i], float(scores[i])) for i in top if self.names[i] is not None]
