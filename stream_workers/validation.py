"""Validation of a consumed batch: events to process, and dead letters with their reasons."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from rtrec.events import Event, Invalid, parse_event


@dataclass(frozen=True)
class DeadLetter:
    """An invalid message as it goes to the dead-letter topic (CONTRACT.md)."""

    reason: str
    raw: bytes

    def to_json(self) -> bytes:
        """``{"reason": ..., "raw": <original bytes as text>}``; undecodable bytes become U+FFFD."""
        text = self.raw.decode("utf-8", errors="replace")
        return json.dumps({"reason": self.reason, "raw": text}, ensure_ascii=False).encode()


def split_batch(values: Sequence[bytes | None]) -> tuple[list[Event], list[DeadLetter]]:
    """Parse every message of a batch; never raises (a message value may even be missing).

    >>> events, dead = split_batch([b'{"event_id":"e","user_id":"u","item_id":"i","action":"click","ts":5}', b"x"])
    >>> len(events), dead[0].reason[:8]
    (1, 'not JSON')
    """
    events: list[Event] = []
    dead: list[DeadLetter] = []
    for value in values:  # per-message parse: JSON decoding is inherently per message
        if value is None:
            dead.append(DeadLetter("empty message (no value)", b""))
            continue
        result = parse_event(value)
        if isinstance(result, Invalid):
            dead.append(DeadLetter(result.reason, bytes(value)))
        else:
            events.append(result)
    return events, dead
