"""The evaluated stream: positive events in timestamp order as integer arrays, plus per-event context.

Users and items get dense indices in order of first appearance, so "the items seen so far" before
event ``e`` are exactly the indices ``[0, n_seen[e])`` and every ranking is a prefix of one score
row. Everything a ranker may know about the user at event ``e`` (the items they acted on before it,
the last few of them) is precomputed here from the order of the stream, so batching the stream for
speed never lets an event see its own future.

>>> from rtrec.events import Event
>>> events = [Event(str(n), u, i, "click", float(n)) for n, (u, i) in enumerate(
...     [("a", "x"), ("b", "y"), ("a", "y"), ("a", "z")])]
>>> s = EvalStream.from_events(events, recent_len=2)
>>> s.users.tolist(), s.items.tolist(), s.n_seen.tolist()
([0, 1, 0, 0], [0, 1, 1, 2], [0, 1, 2, 2])
>>> s.recent.tolist()
[[-1, -1], [-1, -1], [-1, 0], [0, 1]]
>>> s.history_of(3).tolist()
[0, 1]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rtrec.events import Event

__all__ = ["EvalStream", "NEGATIVE_ACTIONS", "load_events", "load_stream"]

log = logging.getLogger(__name__)

#: Actions that say the user did NOT choose the item; they are not ranking targets.
NEGATIVE_ACTIONS = frozenset({"impression", "skip"})


@dataclass
class EvalStream:
    """Positive events as arrays (all of length ``E``), in event-time order.

    Attributes:
        users, items: dense indices (first-appearance order).
        ts: event time (seconds).
        n_seen: distinct items that appeared before each event (its candidate set is ``[0, n_seen)``).
        position: how many earlier events the same user has.
        recent: the user's last ``recent_len`` items before each event, oldest first, ``-1`` padded
            on the left.
        repeat: the user already acted on this item earlier.
        user_ids, item_ids, categories: raw values per index.
        dropped: events left out (negative actions), for the report.
    """

    users: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    n_seen: np.ndarray
    position: np.ndarray
    recent: np.ndarray
    repeat: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    categories: list[str]
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.users.size)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_events(cls, events: Sequence[Event], recent_len: int = 5) -> "EvalStream":
        """Index the positive events (stable sort by ``ts``; negative actions are dropped)."""
        kept = sorted((e for e in events if e.action not in NEGATIVE_ACTIONS), key=lambda e: e.ts)
        users, user_ids = _first_appearance([e.user_id for e in kept])
        items, item_ids = _first_appearance([e.item_id for e in kept])
        categories = [""] * len(item_ids)
        for event, item in zip(kept, items.tolist()):  # the first category seen per item
            if not categories[item] and event.item and event.item.get("category"):
                categories[item] = str(event.item["category"])
        stream = cls(users=users, items=items, ts=np.array([e.ts for e in kept], dtype=np.float64),
                     n_seen=_seen_before(items), position=np.zeros(0, np.int64), recent=np.zeros((0, 0), np.int64),
                     repeat=np.zeros(0, bool), user_ids=user_ids, item_ids=item_ids, categories=categories,
                     dropped=len(events) - len(kept))
        stream._index_users(recent_len)
        return stream

    def history_of(self, event: int) -> np.ndarray:
        """Items the event's user acted on before it, in order."""
        start = self._group_start[self.users[event]]
        return self._by_user[start: start + self.position[event]]

    def histories(self, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat (row, item) pairs of :meth:`history_of` for ``events``; row = position in ``events``."""
        lengths = self.position[events]
        starts = self._group_start[self.users[events]]
        rows = np.repeat(np.arange(events.size), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self._by_user[np.repeat(starts, lengths) + offsets]

    def _index_users(self, recent_len: int) -> None:
        """Group events by user (stable) to derive position, recent items and repeats per event."""
        order = np.argsort(self.users, kind="stable")
        self._by_user = self.items[order]
        counts = np.bincount(self.users, minlength=self.n_users)
        self._group_start = np.cumsum(counts) - counts
        sorted_pos = np.arange(order.size) - np.repeat(self._group_start, counts)
        self.position = np.empty(order.size, dtype=np.int64)
        self.position[order] = sorted_pos
        self.recent = np.full((order.size, recent_len), -1, dtype=np.int64)
        where = np.empty(order.size, dtype=np.int64)
        where[order] = np.arange(order.size)
        for back in range(1, recent_len + 1):
            ok = self.position >= back
            self.recent[ok, recent_len - back] = self._by_user[where[ok] - back]
        pair = self.users.astype(np.int64) * max(self.n_items, 1) + self.items
        _, first = np.unique(pair, return_index=True)
        self.repeat = np.ones(order.size, dtype=bool)
        self.repeat[first] = False


def _first_appearance(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Dense indices in order of first appearance, and the raw value of each index."""
    index: dict[str, int] = {}
    out = np.empty(len(values), dtype=np.int64)
    for n, value in enumerate(values):  # a dict from raw IDs to indices; once per event at load
        out[n] = index.setdefault(value, len(index))
    return out, list(index)


def _seen_before(items: np.ndarray) -> np.ndarray:
    """Distinct items before each event: items are numbered by first appearance, so a running max."""
    if items.size == 0:
        return np.zeros(0, dtype=np.int64)
    running = np.maximum.accumulate(items) + 1
    return np.concatenate([[0], running[:-1]]).astype(np.int64)


def load_events(dataset: str | None = None, path: str | Path | None = None, columns: str | None = None,
                action: str = "click", limit: int | None = None) -> list[Event]:
    """Every event of a named dataset or an event file (as ``rtrec replay`` reads it), in time order.

    The sort is stable, so events with one timestamp keep the file's order; the positive events
    of the result are exactly :class:`EvalStream`'s, in its order.
    """
    if dataset:
        from producers.datasets import load_dataset

        events = load_dataset(dataset)
    elif path is not None:
        from producers.replay import load_events as load_file, parse_columns

        loaded = load_file(Path(path), parse_columns(columns), action)
        if loaded.skipped:
            log.warning("skipped %d malformed rows: %s", sum(loaded.skipped.values()), dict(loaded.skipped))
        events = loaded.events
    else:
        raise ValueError("give a dataset name or an event file")
    return sorted(events[:limit] if limit else events, key=lambda e: e.ts)


def load_stream(dataset: str | None = None, path: str | Path | None = None, columns: str | None = None,
                action: str = "click", limit: int | None = None, recent_len: int = 5) -> EvalStream:
    """The :class:`EvalStream` of :func:`load_events`."""
    return EvalStream.from_events(load_events(dataset, path, columns, action, limit), recent_len)
