"""The online joiner: impressions wait for the actions that follow them and become labelled examples.

An impression (with a ``request_id``) is held for ``window_s`` of event time. The first label
action on the same ``(request_id, item_id)`` turns it into a positive at once (so training sees a
click within seconds); when the watermark passes its deadline with no action it becomes a
negative. Actions with no impression to join (ratings, clicks from a stream without impression
logs) become positive-only examples, for which the trainer samples negatives.

State is bounded: at most ``max_pending`` impressions; beyond that the oldest are closed early
as negatives (and counted). The state is in memory: what is pending when a worker dies is lost
(at most one join window of impressions); durable join state is a follow-up.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterable

from rtrec.events import Event

DEFAULT_LABEL_ACTIONS = frozenset({"click", "like", "share", "purchase"})
POSITIVE_ONLY_ACTIONS = frozenset({"click", "like", "share", "purchase", "rating"})


@dataclass(frozen=True)
class LabelledExample:
    """An impression with its label, or a positive-only action (``joined=False``)."""

    event: Event
    label: float
    joined: bool


@dataclass
class JoinStats:
    positives: int = 0
    negatives: int = 0
    positive_only: int = 0
    evicted: int = 0
    unmatched_late: int = 0


@dataclass
class Joiner:
    """Joins impressions with their actions in event time (see module docstring).

    >>> j = Joiner(window_s=60)
    >>> imp = Event("1", "u", "i", "impression", 100.0, request_id="r")
    >>> j.add_many([imp, Event("2", "u", "i", "click", 105.0, request_id="r")])[0].label
    1.0
    >>> [e.label for e in j.add_many([Event("3", "u", "k", "impression", 110.0, request_id="s"),
    ...                               Event("4", "v", "x", "skip", 200.0)])]
    [0.0]
    """

    window_s: float = 300.0
    max_pending: int = 200_000
    label_actions: frozenset[str] = DEFAULT_LABEL_ACTIONS
    positive_only_actions: frozenset[str] = POSITIVE_ONLY_ACTIONS
    stats: JoinStats = field(default_factory=JoinStats)
    watermark: float = 0.0
    _pending: dict[tuple[str, str], Event] = field(default_factory=dict)
    _deadlines: list[tuple[float, tuple[str, str]]] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add_many(self, events: Iterable[Event]) -> list[LabelledExample]:
        """Feed events in arrival order; returns the examples that became complete."""
        out: list[LabelledExample] = []
        for event in events:  # a join is per-event state-machine work; dict and heap ops only
            self.watermark = max(self.watermark, event.ts)
            if event.action == "impression":
                self._hold(event, out)
            elif event.action in self.label_actions and event.request_id is not None:
                self._label(event, out)
            elif event.action in self.positive_only_actions:
                out.append(LabelledExample(event, 1.0, joined=False))
                self.stats.positive_only += 1
        self._close_due(out)
        return out

    def flush(self) -> list[LabelledExample]:
        """Close every pending impression as a negative (shutdown, end of a replay)."""
        out = [LabelledExample(e, 0.0, joined=True) for e in self._pending.values()]
        self.stats.negatives += len(out)
        self._pending.clear()
        self._deadlines.clear()
        return out

    def _hold(self, event: Event, out: list[LabelledExample]) -> None:
        if event.request_id is None:
            return  # an impression nobody can act on by request: nothing to join
        key = (event.request_id, event.item_id)
        if key in self._pending:
            return  # redelivered impression
        self._pending[key] = event
        heapq.heappush(self._deadlines, (event.ts + self.window_s, key))
        while len(self._pending) > self.max_pending:
            if self._close_oldest(out):
                self.stats.evicted += 1

    def _label(self, event: Event, out: list[LabelledExample]) -> None:
        impression = self._pending.pop((event.request_id, event.item_id), None)
        if impression is None:
            self.stats.unmatched_late += 1  # already labelled, closed, or never seen
            return
        out.append(LabelledExample(impression, 1.0, joined=True))
        self.stats.positives += 1

    def _close_due(self, out: list[LabelledExample]) -> None:
        while self._deadlines and self._deadlines[0][0] <= self.watermark:
            self._close_oldest(out)

    def _close_oldest(self, out: list[LabelledExample]) -> bool:
        """Close the impression with the earliest deadline; False if it was labelled already."""
        _, key = heapq.heappop(self._deadlines)
        impression = self._pending.pop(key, None)
        if impression is None:
            return False
        out.append(LabelledExample(impression, 0.0, joined=True))
        self.stats.negatives += 1
        return True
