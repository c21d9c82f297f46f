"""Labelled example batches as numpy arrays, and their feature IDs per slot.

An :class:`ExampleBatch` holds raw values (strings, or integers for integer-keyed datasets) so
it stays readable and usable for evaluation; :meth:`ExampleBatch.feature_ids` maps it to the
``uint64`` feature IDs of the parameter server's slots in one vectorised pass per slot (each
distinct string is hashed once). Missing values -- padding of the context and recent-item
lists, an unknown category -- are ``""`` (or a negative integer) and come back with
``valid = False``, so they pull nothing and read as zero rows.

Labels are ``(B, heads)`` floats; ``NaN`` means "unknown for this head" and is left out of that
head's loss (e.g. the joiner labels clicks only, so like/share are unknown on its examples).

``sample_p`` (optional, per row) is the chance that one draw of the batch's negative sampler gives
the row's item; the trainer needs it for the log-Q correction of its softmax when a batch holds
sampled negatives (see ``rtrec.recipe.trainer`` and ``rtrec.recipe.negatives``).

>>> from rtrec.events import Event
>>> imp = Event("e1", "u1", "i9", "impression", 10.0, request_id="r", context={"device": "ios"},
...             item={"category": "shoes"})
>>> batch = ExampleBatch.from_impressions([(imp, 1.0)], recent=[["i3", "i4"]])
>>> batch.labels.tolist(), batch.context.tolist(), batch.recent.tolist()
([[1.0, nan, nan]], [['device=ios']], [['i3', 'i4']])
>>> ids = batch.feature_ids(ModelSlots.from_tables())
>>> slot_of(ids.user).tolist(), slot_of(ids.recent).tolist(), ids.recent_valid.tolist()
([1], [[2, 2]], [[True, True]])
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

import numpy as np

from features.ids import distinct, feature_ids, slot_of  # noqa: F401  (slot_of: used in the doctest)
from param_server.config import DEFAULT_TABLES, EmbeddingConfig
from rtrec.events import Event
from rtrec.recipe.joiner import LabelledExample

__all__ = ["ExampleBatch", "FeatureIdBatch", "ModelSlots", "RecentItems", "DEFAULT_HEADS", "RECENT_FOR_TOWER",
           "pad_strings", "context_strings", "slot_ids", "labels_of"]

DEFAULT_HEADS: tuple[str, ...] = ("click", "like", "share")
#: The user's most recent items the user tower reads, in training and in serving alike.
RECENT_FOR_TOWER = 20
#: Labels of a head come from these actions (head "click" is any engagement with the item).
HEAD_ACTIONS: dict[str, frozenset[str]] = {
    "click": frozenset({"click", "like", "share", "purchase", "rating"}),
    "like": frozenset({"like"}),
    "share": frozenset({"share"}),
    "purchase": frozenset({"purchase"}),
}


@dataclass(frozen=True)
class ModelSlots:
    """The slot numbers the model reads, from the parameter server's table config.

    Recent items share the ``item_id`` slot: the user tower averages the same rows the item tower
    reads (as in YouTube's two-tower models), so a click trains both.
    """

    user: int
    item: int
    category: int
    context: int
    dim: int

    @classmethod
    def from_tables(cls, tables: Sequence[EmbeddingConfig] = DEFAULT_TABLES) -> "ModelSlots":
        """Slots of the tables named ``user_id``, ``item_id``, ``category`` and ``context``.

        Raises ValueError if one is missing or their dims differ (one pull must share a dim).
        """
        by_name = {t.name: t for t in tables}
        needed = ("user_id", "item_id", "category", "context")
        missing = [n for n in needed if n not in by_name]
        if missing:
            raise ValueError(f"the table config lacks {missing}; the model needs {list(needed)}")
        dims = {by_name[n].dim for n in needed}
        if len(dims) != 1:
            raise ValueError(f"the model's tables must share one dim, got {sorted(dims)}")
        return cls(by_name["user_id"].slot, by_name["item_id"].slot, by_name["category"].slot,
                   by_name["context"].slot, dims.pop())


@dataclass(frozen=True)
class FeatureIdBatch:
    """Feature IDs of a batch per field, with ``valid`` masks for the padded / missing ones."""

    user: np.ndarray  # (B,) uint64
    item: np.ndarray  # (B,)
    category: np.ndarray  # (B,)
    category_valid: np.ndarray  # (B,) bool
    context: np.ndarray  # (B, C)
    context_valid: np.ndarray  # (B, C)
    recent: np.ndarray  # (B, R)
    recent_valid: np.ndarray  # (B, R)


@dataclass(frozen=True)
class ExampleBatch:
    """A batch of labelled examples as aligned numpy arrays (``B`` rows).

    Attributes:
        users, items: raw IDs ``(B,)``.
        categories: raw category of each item ``(B,)``, ``""`` if unknown.
        context: ``"key=value"`` strings ``(B, C)``, ``""``-padded.
        recent: raw IDs of the user's recent items before this example ``(B, R)``, ``""``-padded.
        labels: ``float32 (B, len(heads))``, NaN = unknown.
        weights: ``float32 (B,)`` example weights.
        ts: ``float64 (B,)`` event times.
        heads: names of the label columns.
        dense: ``float32 (B, F)`` real-time features, or None (the trainer uses zeros).
        sample_p: ``float32 (B,)`` the negative sampler's probability of each row's item, or None.
        noise_log_q: ``float32 (B,)`` ``log(k P(j))`` on the rows of a positive-only batch and its
            ``k`` sampled negatives per positive, 0 on impression rows, or None: the ranking
            loss subtracts it from the logits (noise-contrastive estimation), so on positive-only
            streams the head learns ``log p(item | user)`` rather than a ratio to the sampler.
        replayed: ``bool (B,)``, True for rows trained again by experience replay, or None.
        sampled: ``bool (B,)``, True for rows drawn by a negative sampler (never softmax positives).
    """

    users: np.ndarray
    items: np.ndarray
    categories: np.ndarray
    context: np.ndarray
    recent: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    ts: np.ndarray
    heads: tuple[str, ...] = DEFAULT_HEADS
    dense: np.ndarray | None = None
    sample_p: np.ndarray | None = None
    noise_log_q: np.ndarray | None = None
    replayed: np.ndarray | None = None
    sampled: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.users)
        shapes = {"items": (n,), "categories": (n,), "weights": (n,), "ts": (n,),
                  "labels": (n, len(self.heads))}
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {np.shape(getattr(self, name))}")
        for name in ("context", "recent"):
            if np.ndim(getattr(self, name)) != 2 or len(getattr(self, name)) != n:
                raise ValueError(f"{name} must be ({n}, width), got {np.shape(getattr(self, name))}")
        if self.dense is not None and (np.ndim(self.dense) != 2 or len(self.dense) != n):
            raise ValueError(f"dense must be ({n}, F), got {np.shape(self.dense)}")
        for name in ("sample_p", "noise_log_q", "replayed", "sampled"):
            if getattr(self, name) is not None and np.shape(getattr(self, name)) != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {np.shape(getattr(self, name))}")

    def __len__(self) -> int:
        return len(self.users)

    # -- builders ------------------------------------------------------------------------------

    @classmethod
    def from_impressions(cls, pairs: Sequence[tuple[Event, object]],
                         recent: Sequence[Sequence[str]] | None = None,
                         heads: tuple[str, ...] = DEFAULT_HEADS,
                         dense: np.ndarray | None = None) -> "ExampleBatch":
        """Examples from joined ``(impression, label)`` pairs.

        ``label`` is a number (the click label; other heads unknown) or a collection of the
        action names that followed the impression (every head known). ``recent[i]`` are the
        user's recent items before impression ``i`` (e.g. from ``RecentItems`` or Redis).
        """
        events = [e for e, _ in pairs]
        labels = np.full((len(pairs), len(heads)), np.nan, dtype=np.float32)
        for row, (_, label) in enumerate(pairs):  # per pair: Python label objects of two kinds
            if isinstance(label, (bool, int, float, np.number)):
                labels[row, 0] = float(label)
            else:
                actions = set(label)  # type: ignore[call-overload]
                labels[row] = [float(bool(actions & HEAD_ACTIONS.get(h, frozenset({h})))) for h in heads]
        return cls.from_events(events, labels, recent, heads, dense)

    @classmethod
    def from_positives(cls, events: Sequence[Event], recent: Sequence[Sequence[str]] | None = None,
                       heads: tuple[str, ...] = DEFAULT_HEADS, dense: np.ndarray | None = None,
                       min_rating: float | None = None) -> "ExampleBatch":
        """Examples from positive-only actions (clicks, ratings ... with no impression to join).

        Every event is a positive of the click head and of the head named by its action; with
        ``min_rating``, a ``rating`` below it is a negative instead. Add negatives with
        ``rtrec.recipe.negatives.add_sampled_negatives``.
        """
        labels = np.full((len(events), len(heads)), np.nan, dtype=np.float32)
        action = np.array([e.action for e in events], dtype=object)  # per event: attribute reads
        value = np.array([np.nan if e.value is None else e.value for e in events], dtype=np.float64)
        positive = np.ones(len(events), dtype=bool)
        if min_rating is not None:
            positive = ~((action == "rating") & ~(value >= min_rating))
        labels[:, 0] = positive
        for h, head in enumerate(heads[1:], start=1):
            labels[action == head, h] = 1.0
        return cls.from_events(events, labels, recent, heads, dense)

    @classmethod
    def for_scoring(cls, users: Sequence[object], items: Sequence[object],
                    categories: Sequence[str | None] | None = None,
                    contexts: Sequence[Mapping[str, object] | None] | None = None,
                    recent: Sequence[Sequence[str]] | None = None, dense: np.ndarray | None = None,
                    heads: tuple[str, ...] = DEFAULT_HEADS) -> "ExampleBatch":
        """Unlabelled (user, item) pairs, e.g. serving's candidates, for ``score_many``."""
        n = len(users)
        if len(items) != n:
            raise ValueError(f"users and items must align, got {n} and {len(items)}")
        return cls(
            users=_raw(users), items=_raw(items),
            categories=_raw(categories if categories is not None else [""] * n),
            context=context_strings(contexts if contexts is not None else [None] * n),
            recent=pad_strings(recent if recent is not None else [[]] * n),
            labels=np.full((n, len(heads)), np.nan, dtype=np.float32),
            weights=np.ones(n, dtype=np.float32), ts=np.zeros(n), heads=heads,
            dense=None if dense is None else np.asarray(dense, dtype=np.float32))

    @classmethod
    def from_events(cls, events: Sequence[Event], labels: np.ndarray,
                    recent: Sequence[Sequence[str]] | None = None, heads: tuple[str, ...] = DEFAULT_HEADS,
                    dense: np.ndarray | None = None) -> "ExampleBatch":
        """Examples of ``events`` with the given ``labels`` ``(B, heads)`` (NaN = unknown)."""
        if recent is not None and len(recent) != len(events):
            raise ValueError(f"recent must have one list per event, got {len(recent)} for {len(events)}")
        # Per event: Event objects hold Python values; this is the one loop that builds the arrays.
        users = [e.user_id for e in events]
        items = [e.item_id for e in events]
        cats = [str((e.item or {}).get("category", "")) for e in events]
        return cls(
            users=_raw(users), items=_raw(items), categories=_raw(cats),
            context=context_strings([e.context for e in events]),
            recent=pad_strings(recent if recent is not None else [[]] * len(events)),
            labels=labels, weights=np.ones(len(events), dtype=np.float32),
            ts=np.array([e.ts for e in events], dtype=np.float64), heads=heads,
            dense=None if dense is None else np.asarray(dense, dtype=np.float32))

    # -- transforms ----------------------------------------------------------------------------

    def feature_ids(self, slots: ModelSlots) -> FeatureIdBatch:
        """The feature IDs of every field (one vectorised pass per slot)."""
        user, _ = slot_ids(slots.user, self.users)
        item, _ = slot_ids(slots.item, self.items)
        category, category_valid = slot_ids(slots.category, self.categories)
        context, context_valid = slot_ids(slots.context, self.context)
        recent, recent_valid = slot_ids(slots.item, self.recent)
        return FeatureIdBatch(user, item, category, category_valid, context, context_valid,
                              recent, recent_valid)

    def with_dense(self, dense: np.ndarray) -> "ExampleBatch":
        """The same batch with real-time features ``(B, F)``."""
        return replace(self, dense=np.asarray(dense, dtype=np.float32))

    def take(self, rows: np.ndarray) -> "ExampleBatch":
        """The rows at ``rows`` (indices or a boolean mask), e.g. to split a stream into batches."""
        pick = (lambda a: None if a is None else a[rows])
        return replace(self, users=self.users[rows], items=self.items[rows],
                       categories=self.categories[rows], context=self.context[rows],
                       recent=self.recent[rows], labels=self.labels[rows], weights=self.weights[rows],
                       ts=self.ts[rows], dense=pick(self.dense), sample_p=pick(self.sample_p), noise_log_q=pick(self.noise_log_q),
                       replayed=pick(self.replayed),
                       sampled=pick(self.sampled))

    @classmethod
    def concat(cls, batches: Sequence["ExampleBatch"]) -> "ExampleBatch":
        """Rows of several batches (same heads) in order; padded widths are widened."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        heads = batches[0].heads
        if any(b.heads != heads for b in batches):
            raise ValueError("batches to concat must have the same heads")

        def optional(name: str, fill: object) -> np.ndarray | None:
            parts = [getattr(b, name) for b in batches]
            if all(p is None for p in parts):
                return None
            if name == "dense" and any(p is None for p in parts):
                raise ValueError("either all or none of the batches must carry dense features")
            return np.concatenate([np.full(len(b), fill) if p is None else p for b, p in zip(batches, parts)])

        return cls(
            users=np.concatenate([b.users for b in batches]),
            items=np.concatenate([b.items for b in batches]),
            categories=np.concatenate([b.categories for b in batches]),
            context=_concat_padded([b.context for b in batches]),
            recent=_concat_padded([b.recent for b in batches]),
            labels=np.concatenate([b.labels for b in batches]),
            weights=np.concatenate([b.weights for b in batches]),
            ts=np.concatenate([b.ts for b in batches]), heads=heads,
            dense=optional("dense", 0.0), sample_p=optional("sample_p", 0.0),
            noise_log_q=optional("noise_log_q", 0.0), replayed=optional("replayed", False),
            sampled=optional("sampled", False))


class RecentItems:
    """The last ``size`` items each user acted on, in memory (an LRU of ``max_users`` users).

    For training without Redis (tests, replays); a worker with Redis reads ``recent_items`` from
    the feature store instead. Call :meth:`lookup_many` before :meth:`add_many` of the same events
    so an example never sees its own label.

    >>> recent = RecentItems(size=2)
    >>> recent.add_many([Event("1", "u", "a", "click", 1.0), Event("2", "u", "b", "click", 2.0),
    ...                  Event("3", "u", "c", "like", 3.0)])
    >>> recent.lookup_many(["u", "v"])
    [['c', 'b'], []]
    """

    def __init__(self, size: int = RECENT_FOR_TOWER, max_users: int = 1_000_000,
                 actions: frozenset[str] = HEAD_ACTIONS["click"]) -> None:
        if size < 1 or max_users < 1:
            raise ValueError("size and max_users must be >= 1")
        self.size, self.max_users, self.actions = size, max_users, actions
        self._items: OrderedDict[str, deque[str]] = OrderedDict()

    def add_many(self, events: Iterable[Event]) -> None:
        """Record the positive actions among ``events`` (in order)."""
        for e in events:  # per event: dict/deque updates of Python objects
            if e.action not in self.actions:
                continue
            items = self._items.get(e.user_id)
            if items is None:
                items = self._items[e.user_id] = deque(maxlen=self.size)
                if len(self._items) > self.max_users:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(e.user_id)
            items.appendleft(e.item_id)

    def lookup_many(self, users: Sequence[str]) -> list[list[str]]:
        """Most recent first, per user; ``[]`` for unknown users."""
        empty: deque[str] = deque()
        return [list(self._items.get(u, empty)) for u in users]


def labels_of(examples: Sequence[LabelledExample], heads: tuple[str, ...] = DEFAULT_HEADS) -> np.ndarray:
    """``float32 (B, heads)`` labels of the joiner's examples; NaN where a head is not this example's.

    A ``click`` example labels the click head only; the ``final`` one every other head from the
    actions seen in the window (the click was trained already); a ``negative`` every head 0; a
    positive-only action the click head and the head named by its action.

    >>> from rtrec.recipe.joiner import LabelledExample
    >>> e = Event("1", "u", "i", "impression", 1.0)
    >>> labels_of([LabelledExample(e, 1.0, True, "click"), LabelledExample(e, 1.0, True, "final", frozenset({"like"})),
    ...            LabelledExample(e, 0.0, True, "negative")]).tolist()
    [[1.0, nan, nan], [nan, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    labels = np.full((len(examples), len(heads)), np.nan, dtype=np.float32)
    for row, x in enumerate(examples):  # per example: a few set lookups
        if x.kind == "negative":
            labels[row] = 0.0
        elif x.kind == "final":
            labels[row, 1:] = [float(bool(x.actions & HEAD_ACTIONS.get(h, frozenset({h})))) for h in heads[1:]]
        elif x.kind == "click":
            labels[row, 0] = x.label
        else:  # positive-only: the click head and the head of the action itself
            labels[row, 0] = 1.0
            labels[row, 1:] = [1.0 if x.event.action == h else np.nan for h in heads[1:]]
    return labels


def slot_ids(slot: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature IDs of an array of raw values of one slot (any shape) and where they are valid.

    Integer arrays map exactly (negative = missing); string arrays hash each distinct value once
    (``""`` = missing). Missing positions get ID 0 and ``valid = False``.

    >>> ids, valid = slot_ids(2, np.array([["7", ""], ["x", "7"]]))
    >>> valid.tolist(), bool(ids[0, 0] == ids[1, 1]), int(ids[0, 1])
    ([[True, False], [True, True]], True, 0)
    """
    values = np.asarray(values)
    flat = values.ravel()
    if flat.dtype.kind in "iu":
        valid = flat >= 0
        ids = feature_ids(slot, np.where(valid, flat, 0))
        ids[~valid] = 0
        return ids.reshape(values.shape), valid.reshape(values.shape)
    strings = flat.astype(str).tolist()
    valid = np.fromiter((v != "" for v in strings), dtype=bool, count=len(strings))
    ids = np.zeros(len(strings), dtype=np.uint64)
    if valid.any():
        uniq, inverse = distinct([v for v in strings if v])
        ids[valid] = feature_ids(slot, uniq)[inverse]
    return ids.reshape(values.shape), valid.reshape(values.shape)


def pad_strings(lists: Sequence[Sequence[object]], width: int | None = None) -> np.ndarray:
    """Ragged lists of raw IDs as a ``""``-padded string array ``(n, width)`` (width >= 1).

    >>> pad_strings([["a"], [], ["b", "c"]]).tolist()
    [['a', ''], ['', ''], ['b', 'c']]
    """
    width = max(1, max((len(x) for x in lists), default=0)) if width is None else max(1, width)
    flat = [str(v) for x in lists for v in list(x)[:width]]  # per value: ragged Python lists
    lengths = np.array([min(len(x), width) for x in lists], dtype=np.int64)
    out = np.full((len(lists), width), "", dtype=np.asarray(flat).dtype if flat else "U1")
    if flat:
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[np.repeat(np.arange(len(lists)), lengths), cols] = flat
    return out


def context_strings(contexts: Sequence[Mapping[str, object] | None]) -> np.ndarray:
    """Context dicts as ``"key=value"`` strings ``(n, C)``, keys sorted, ``""``-padded.

    >>> context_strings([{"geo": "DE", "device": "ios"}, None]).tolist()
    [['device=ios', 'geo=DE'], ['', '']]
    """
    return pad_strings([[f"{k}={v}" for k, v in sorted((c or {}).items())] for c in contexts])


def _raw(values: Sequence[object] | np.ndarray) -> np.ndarray:
    """Raw IDs as an array: integer arrays stay integer, everything else becomes strings."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iuU":
        return arr
    return np.array(["" if v is None else str(v) for v in arr.ravel()], dtype=str).reshape(arr.shape)


def _concat_padded(parts: list[np.ndarray]) -> np.ndarray:
    width = max(p.shape[1] for p in parts)
    if all(p.dtype.kind in "iu" for p in parts):
        widened = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1) for p in parts]
    else:
        widened = [np.pad(p.astype(str), ((0, 0), (0, width - p.shape[1])), constant_values="") for p in parts]
    return np.concatenate(widened)
