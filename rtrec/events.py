"""The event schema of topic ``actions`` (CONTRACT.md) and its validation at the boundary.

:func:`parse_event` is the one door from untrusted bytes to a typed :class:`Event`: it never
raises, it returns either an ``Event`` or an :class:`Invalid` with a one-line reason that the
stream workers put on the dead-letter topic.

>>> e = parse_event(b'{"event_id":"e1","user_id":"u1","item_id":"i9","action":"click","ts":1.5}')
>>> e.user_id, e.action, e.ts
('u1', 'click', 1.5)
>>> parse_event(b'{"event_id":"e1"}').reason
'missing field: user_id'
"""

from __future__ import annotations

import json
import math
import re

import orjson
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ACTIONS",
    "MAX_EVENT_BYTES",
    "Event",
    "Invalid",
    "action_label",
    "encode_event",
    "future_ts_reason",
    "parse_event",
    "validate_fields",
]

#: Actions rtrec knows; any other lowercase identifier is accepted too (the set is extensible).
ACTIONS = frozenset({"impression", "click", "like", "share", "purchase", "skip", "rating"})
#: Largest event accepted, so one bad producer cannot make a worker buffer megabytes.
MAX_EVENT_BYTES = 16 * 1024
MAX_ID_CHARS = 256
MAX_ATTRIBUTES = 32
#: Event time must lie after 1970 and before 2100: catches milliseconds sent as seconds.
MAX_TS = 4_102_444_800.0

_ACTION_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_REQUIRED_IDS = ("event_id", "user_id", "item_id")


@dataclass(frozen=True, slots=True)
class Event:
    """One user action; field meanings are in CONTRACT.md."""

    event_id: str
    user_id: str
    item_id: str
    action: str
    ts: float
    value: float | None = None
    request_id: str | None = None
    context: dict[str, str | float | bool] | None = None
    item: dict[str, str | float | bool] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this event, without the optional fields that are unset."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why some bytes are not an event; ``reason`` is one line for the dead-letter topic."""

    reason: str


def action_label(action: str) -> str:
    """The action as a metric label: known actions by name, any other as ``other`` (bounded cardinality)."""
    return action if action in ACTIONS else "other"


def encode_event(event: Event) -> bytes:
    """The wire form of an event: compact UTF-8 JSON."""
    return json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def parse_event(raw: bytes) -> Event | Invalid:
    """Turn raw bytes from Kafka into a validated event, or say precisely why not. Never raises."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return Invalid(f"expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_EVENT_BYTES:
        return Invalid(f"event too large: {len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(f"not UTF-8: byte {exc.start}")
    try:
        obj = orjson.loads(raw)  # strict RFC 8259: no NaN/Infinity, integers within 64 bits
    except (orjson.JSONDecodeError, RecursionError) as exc:
        return Invalid(f"not JSON: {str(exc)[:120]}")
    if not isinstance(obj, dict):
        return Invalid(f"expected a JSON object, got {type(obj).__name__}")
    return validate_fields(obj)


def validate_fields(obj: dict[str, Any]) -> Event | Invalid:
    """Validate an already-decoded JSON object (producers use it before sending)."""
    for name in (*_REQUIRED_IDS, "action", "ts"):
        if name not in obj or obj[name] is None:
            return Invalid(f"missing field: {name}")
    for name in _REQUIRED_IDS:
        if (reason := _check_id(name, obj[name])) is not None:
            return Invalid(reason)
    action = obj["action"]
    if not isinstance(action, str) or not _ACTION_RE.fullmatch(action):
        return Invalid("action must be a lowercase identifier of at most 32 characters")
    ts = obj["ts"]
    if not _is_number(ts) or not 0.0 < float(ts) < MAX_TS:
        return Invalid(f"ts must be seconds since the epoch in (0, {MAX_TS:.0f}), got {ts!r:.40}")
    value = obj.get("value")
    if value is not None and not _is_number(value):
        return Invalid("value must be a finite number")
    request_id = obj.get("request_id")
    if request_id is not None and (reason := _check_id("request_id", request_id)) is not None:
        return Invalid(reason)
    attrs: dict[str, dict | None] = {}
    for name in ("context", "item"):
        attrs[name], reason = _check_attributes(name, obj.get(name))
        if reason is not None:
            return Invalid(reason)
    return Event(
        event_id=obj["event_id"],
        user_id=obj["user_id"],
        item_id=obj["item_id"],
        action=action,
        ts=float(ts),
        value=None if value is None else float(value),
        request_id=request_id,
        context=attrs["context"],
        item=attrs["item"],
    )


def future_ts_reason(ts: float, now: float, max_ahead_s: float) -> str | None:
    """Why ``ts`` lies beyond the event-time bound (more than ``max_ahead_s`` after ``now``), or None.

    Producers stamp event time, so one clock error (or a hostile producer) could move every
    watermark and expiry clock that follows it; consumers refuse what is too far ahead of their
    own clock. Past times are never refused: replays of old logs are valid events.

    >>> future_ts_reason(1_700_086_400.0, now=1_700_000_000.0, max_ahead_s=3600)
    'ts 1700086400 is 86400 s ahead of the worker clock (bound 3600 s)'
    >>> future_ts_reason(880_000_000.0, now=1_700_000_000.0, max_ahead_s=3600) is None
    True
    """
    ahead = ts - now
    if ahead <= max_ahead_s:
        return None
    return f"ts {ts:.0f} is {ahead:.0f} s ahead of the worker clock (bound {max_ahead_s:.0f} s)"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_id(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a string, got {type(value).__name__}"
    if not value or len(value) > MAX_ID_CHARS:
        return f"{name} must have 1 to {MAX_ID_CHARS} characters"
    return None


def _check_attributes(name: str, value: object) -> tuple[dict | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, f"{name} must be an object"
    if len(value) > MAX_ATTRIBUTES:
        return None, f"{name} has more than {MAX_ATTRIBUTES} keys"
    for key, item in value.items():
        if len(key) > MAX_ID_CHARS:
            return None, f"{name} key longer than {MAX_ID_CHARS} characters"
        if isinstance(item, str):
            if len(item) > MAX_ID_CHARS:
                return None, f"{name}.{key[:40]} longer than {MAX_ID_CHARS} characters"
        elif not (isinstance(item, bool) or _is_number(item)):
            return None, f"{name}.{key[:40]} must be a string, number or boolean"
    return value, None
