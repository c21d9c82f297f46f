"""The online joiner: impressions wait for the actions that follow them and become labelled examples.

An impression (with a ``request_id``) is held for ``window_s`` of event time. Each impression
yields its labels in at most two examples, so every head is trained exactly once per impression:

* the first label action on the same ``(request_id, item_id)`` makes a **click** example at once
  (click head 1, the other heads unknown), so training sees a click within seconds;
* when the watermark passes the impression's deadline, a **final** example carries every other
  head (like, share, ...) from all the actions seen within the window; an impression nobody acted
  on closes as a negative of every head.

Watermarks are kept per Kafka partition: an impression closes when the partition it came from
has moved past its deadline, so a lagging partition is not closed by a faster one (the topic is
keyed by user, so an impression and its actions share a partition).

Every example carries the ``features`` the caller attached to its impression when the impression
arrived (point-in-time: what serving saw when it ranked), so a click and a non-click of the same
moment differ in their label only.

Actions with no impression to join (ratings, clicks from a stream without impression logs)
become positive-only examples, for which the trainer samples negatives.

State is bounded: at most ``max_pending`` impressions; beyond that the oldest are closed early
(and counted). The state is in memory: what is pending when a worker dies is lost (at most one
join window of impressions).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from rtrec.events import Event

DEFAULT_LABEL_ACTIONS = frozenset({"click", "like", "share", "purchase"})
POSITIVE_ONLY_ACTIONS = frozenset({"click", "like", "share", "purchase", "rating"})


@dataclass(frozen=True)
class LabelledExample:
    """One example of an impression, or a positive-only action (``joined=False``).

    Attributes:
        event: the impression (or the action, when not joined).
        label: the click label of a ``click`` or ``negative`` example (1.0 / 0.0).
        joined: True for examples of an impression.
        kind: ``"click"`` (click head only), ``"final"`` (every head but the click, from
            ``actions``), ``"negative"`` (every head 0) or ``"positive_only"``.
        actions: the label actions seen on the impression within its window (``final`` only).
        features: what the caller attached to the impression when it arrived (or to the action).
    """

    event: Event
    label: float
    joined: bool
    kind: str = "positive_only"
    actions: frozenset[str] = frozenset()
    features: Any = None


@dataclass
class JoinStats:
    positives: int = 0
    negatives: int = 0
    positive_only: int = 0
    evicted: int = 0
    unmatched_late: int = 0


@dataclass
class _Pending:
    """An impression in the window: its features and the actions seen on it so far."""

    event: Event
    partition: int
    features: Any
    actions: set[str] = field(default_factory=set)


@dataclass
class Joiner:
    """Joins impressions with their actions in event time (see module docstring).

    >>> j = Joiner(window_s=60)
    >>> imp = Event("1", "u", "i", "impression", 100.0, request_id="r")
    >>> [(x.kind, x.label) for x in j.add_many([imp, Event("2", "u", "i", "click", 105.0, request_id="r")])]
    [('click', 1.0)]
    >>> [(x.kind, sorted(x.actions)) for x in j.add_many([Event("3", "u", "k", "impression", 170.0, request_id="s")])]
    [('final', ['click'])]
    """

    window_s: float = 300.0
    max_pending: int = 200_000
    label_actions: frozenset[str] = DEFAULT_LABEL_ACTIONS
    positive_only_actions: frozenset[str] = POSITIVE_ONLY_ACTIONS
    stats: JoinStats = field(default_factory=JoinStats)
    watermarks: dict[int, float] = field(default_factory=dict)
    _pending: dict[tuple[str, str], _Pending] = field(default_factory=dict)
    _deadlines: dict[int, list[tuple[float, tuple[str, str]]]] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def watermark(self) -> float:
        """The lowest partition watermark (0 before any event)."""
        return min(self.watermarks.values(), default=0.0)

    def add_many(self, events: Iterable[Event], partitions: Sequence[int] | None = None,
                 features: Sequence[Any] | None = None) -> list[LabelledExample]:
        """Feed events in arrival order; returns the examples that became complete.

        ``partitions[n]`` is the Kafka partition of event ``n`` (all 0 when None);
        ``features[n]`` is kept with impression ``n`` (or a positive-only action) and handed back
        on its examples.
        """
        out: list[LabelledExample] = []
        touched: set[int] = set()
        for n, event in enumerate(events):  # a join is per-event state-machine work; dict and heap ops only
            partition = partitions[n] if partitions is not None else 0
            payload = features[n] if features is not None else None
            if event.ts > self.watermarks.get(partition, 0.0):
                self.watermarks[partition] = event.ts
            touched.add(partition)
            if event.action == "impression":
                self._hold(event, partition, payload, out)
            elif event.action in self.label_actions and event.request_id is not None:
                self._label(event, out)
            elif event.action in self.positive_only_actions:
                out.append(LabelledExample(event, 1.0, joined=False, features=payload))
                self.stats.positive_only += 1
        for partition in touched:
            self._close_due(partition, out)
        return out

    def flush(self) -> list[LabelledExample]:
        """Close every pending impression (shutdown, end of a replay)."""
        out = [self._final(p) for p in self._pending.values()]
        self._pending.clear()
        self._deadlines.clear()
        return out

    def _hold(self, event: Event, partition: int, features: Any, out: list[LabelledExample]) -> None:
        if event.request_id is None:
            return  # an impression nobody can act on by request: nothing to join
        key = (event.request_id, event.item_id)
        if key in self._pending:
            return  # redelivered impression
        self._pending[key] = _Pending(event, partition, features)
        deadline = event.ts + self.window_s
        heapq.heappush(self._deadlines.setdefault(partition, []), (deadline, key))
        while len(self._pending) > self.max_pending:
            if self._close(self._pop_earliest(), out):
                self.stats.evicted += 1

    def _label(self, event: Event, out: list[LabelledExample]) -> None:
        pending = self._pending.get((event.request_id, event.item_id))  # type: ignore[arg-type]
        if pending is None:
            self.stats.unmatched_late += 1  # closed, or never seen
            return
        if not pending.actions:  # the first action: the click label, at once
            out.append(LabelledExample(pending.event, 1.0, joined=True, kind="click", features=pending.features))
            self.stats.positives += 1
        pending.actions.add(event.action)

    def _close_due(self, partition: int, out: list[LabelledExample]) -> None:
        heap = self._deadlines.get(partition, [])
        watermark = self.watermarks.get(partition, 0.0)
        while heap and heap[0][0] <= watermark:
            _, key = heapq.heappop(heap)
            self._close(key, out)

    def _pop_earliest(self) -> tuple[str, str]:
        """The key with the earliest deadline over all partitions (a few heaps: one per partition)."""
        heap = min((h for h in self._deadlines.values() if h), key=lambda h: h[0])
        return heapq.heappop(heap)[1]

    def _close(self, key: tuple[str, str], out: list[LabelledExample]) -> bool:
        """Close a pending impression; False if it was closed already (stale heap entry)."""
        pending = self._pending.pop(key, None)
        if pending is None:
            return False
        out.append(self._final(pending))
        return True

    def _final(self, pending: _Pending) -> LabelledExample:
        if pending.actions:
            return LabelledExample(pending.event, 1.0, joined=True, kind="final",
                                   actions=frozenset(pending.actions), features=pending.features)
        self.stats.negatives += 1
        return LabelledExample(pending.event, 0.0, joined=True, kind="negative", features=pending.features)
