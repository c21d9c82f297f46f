"""Validation of a consumed batch: events to process, and dead letters with their reasons.

Besides the schema (:func:`rtrec.events.parse_event`), event time is bounded on the future side:
an event stamped more than ``max_ahead_s`` after the worker's clock would push the feature
store's watermark, the joiner's and the parameter server's expiry clock ahead for good, so it is
dead-lettered before it reaches any of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Sequence, TypeVar

from rtrec.events import Event, Invalid, future_ts_reason, parse_event
from rtrec.settings import DEFAULT_MAX_EVENT_AHEAD_S

T = TypeVar("T")


@dataclass(frozen=True)
class DeadLetter:
    """An invalid message as it goes to the dead-letter topic (CONTRACT.md)."""

    reason: str
    raw: bytes

    def to_json(self) -> bytes:
        """``{"reason": ..., "raw": <original bytes as text>}``; undecodable bytes become U+FFFD."""
        text = self.raw.decode("utf-8", errors="replace")
        return json.dumps({"reason": self.reason, "raw": text}, ensure_ascii=False).encode()


@dataclass(frozen=True)
class UndecodableBatch:
    """A Kafka record batch the consumer could not decode (a codec it lacks, a corrupt compressed
    payload): skipped so the partition moves on, and recorded in the dead-letter topic by where it
    was, since there is no message to keep."""

    topic: str
    partition: int
    first_offset: int
    next_offset: int
    reason: str

    def dead_letter(self) -> DeadLetter:
        """The dead letter of the batch: the reason names topic, partition and offsets; ``raw`` is empty.

        >>> UndecodableBatch("actions", 2, 40, 45, "lz4: bad block").dead_letter().reason
        'undecodable record batch: actions/2 offsets 40-44 (5 messages) skipped: lz4: bad block'
        """
        count = self.next_offset - self.first_offset
        return DeadLetter(f"undecodable record batch: {self.topic}/{self.partition} offsets "
                          f"{self.first_offset}-{self.next_offset - 1} ({count} messages) skipped: {self.reason}", b"")

    def as_dict(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "first_offset": self.first_offset,
                "next_offset": self.next_offset, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> "UndecodableBatch":
        return cls(str(d["topic"]), int(d["partition"]), int(d["first_offset"]), int(d["next_offset"]),
                   str(d["reason"]))


def split_batch(values: Sequence[bytes | None], now: float | None = None,
                max_ahead_s: float = DEFAULT_MAX_EVENT_AHEAD_S) -> tuple[list[Event], list[DeadLetter]]:
    """Parse every message of a batch; never raises (a message value may even be missing).

    ``now`` is the worker's clock (default: the wall clock, read once per batch); events with a
    ``ts`` more than ``max_ahead_s`` after it are dead-lettered (``RTREC_MAX_EVENT_AHEAD_S``).

    >>> events, dead = split_batch([b'{"event_id":"e","user_id":"u","item_id":"i","action":"click","ts":5}', b"x"])
    >>> len(events), dead[0].reason[:8]
    (1, 'not JSON')
    >>> split_batch([b'{"event_id":"e","user_id":"u","item_id":"i","action":"click","ts":9000}'], now=1000)[1][0].reason
    'ts 9000 is 8000 s ahead of the worker clock (bound 3600 s)'
    """
    events, _, dead = split_tagged(values, None, now, max_ahead_s)
    return events, dead


def split_tagged(values: Sequence[bytes | None], tags: Sequence[T] | None, now: float | None = None,
                 max_ahead_s: float = DEFAULT_MAX_EVENT_AHEAD_S) -> tuple[list[Event], list[T], list[DeadLetter]]:
    """:func:`split_batch` that also returns the ``tags[n]`` of each valid event's message (e.g. its
    Kafka offset); no tags (None) gives an empty list.

    >>> events, offsets, dead = split_tagged([b"x", b'{"event_id":"e","user_id":"u","item_id":"i","action":"click","ts":5}'], [7, 8])
    >>> [e.event_id for e in events], offsets, len(dead)
    (['e'], [8], 1)
    """
    now = time.time() if now is None else now
    events: list[Event] = []
    kept: list[T] = []
    dead: list[DeadLetter] = []
    for n, value in enumerate(values):  # per-message parse: JSON decoding is inherently per message
        if value is None:
            dead.append(DeadLetter("empty message (no value)", b""))
            continue
        result = parse_event(value)
        if not isinstance(result, Invalid) and (reason := future_ts_reason(result.ts, now, max_ahead_s)):
            result = Invalid(reason)
        if isinstance(result, Invalid):
            dead.append(DeadLetter(result.reason, bytes(value)))
        else:
            events.append(result)
            if tags is not None:
                kept.append(tags[n])
    return events, kept, dead
