"""Property tests of the event parser beyond "never raises" (that is in test_events.py):
every event the schema allows is accepted unchanged, whatever is accepted obeys the limits, and
corrupted events are refused with a short reason, never an exception."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from rtrec.events import (ACTIONS, MAX_ATTRIBUTES, MAX_EVENT_BYTES, MAX_ID_CHARS, MAX_TS, Event, Invalid,
                          encode_event, parse_event)

ids = st.text(min_size=1, max_size=40)
numbers = st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False, width=64)
attribute_values = st.text(max_size=30) | st.booleans() | numbers
attributes = st.none() | st.dictionaries(st.text(max_size=20), attribute_values, max_size=6)
actions = st.sampled_from(sorted(ACTIONS)) | st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)

valid_events = st.builds(
    Event, event_id=ids, user_id=ids, item_id=ids, action=actions,
    ts=st.floats(min_value=1e-3, max_value=MAX_TS - 1.0, allow_nan=False),
    value=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    request_id=st.none() | ids, context=attributes, item=attributes,
)


def check_limits(event: Event) -> None:
    for name in ("event_id", "user_id", "item_id"):
        value = getattr(event, name)
        assert isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS
    assert 0.0 < event.ts < MAX_TS
    for attrs in (event.context, event.item):
        assert attrs is None or len(attrs) <= MAX_ATTRIBUTES


@settings(max_examples=400, deadline=None)
@given(valid_events)
def test_every_event_the_schema_allows_is_accepted_unchanged(event: Event) -> None:
    data = encode_event(event)
    if len(data) > MAX_EVENT_BYTES:
        return
    assert parse_event(data) == event


@settings(max_examples=600, deadline=None)
@given(valid_events, st.data())
def test_corrupted_events_are_refused_with_a_short_reason_or_accepted_within_limits(event: Event,
                                                                                    data: st.DataObject) -> None:
    raw = bytearray(encode_event(event))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(raw)))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and where < len(raw):
            raw[where] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            raw[where:where] = data.draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del raw[where:where + data.draw(st.integers(1, 4))]
        else:
            del raw[where:]
    result = parse_event(bytes(raw))
    if isinstance(result, Invalid):
        assert 0 < len(result.reason) <= 200
    else:
        check_limits(result)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["event_id", "user_id", "item_id", "action", "ts", "value",
                                        "request_id", "context", "item"]),
                       st.none() | st.booleans() | numbers | st.text(max_size=300)
                       | st.dictionaries(st.text(max_size=300), attribute_values, max_size=40)
                       | st.lists(st.integers(), max_size=3)))
def test_whatever_is_accepted_obeys_the_limits(obj: dict) -> None:
    result = parse_event(json.dumps(obj).encode())
    assert isinstance(result, (Event, Invalid))
    if isinstance(result, Event):
        check_limits(result)


def test_huge_numbers_and_odd_json_are_refused_not_crashing() -> None:
    base = '{"event_id":"e","user_id":"u","item_id":"i","action":"click","ts":%s}'
    for ts in ("1e400", "-0", "99999999999999999999999999", "1.7e9x", "NaN", "Infinity", "[1]", "true"):
        assert isinstance(parse_event((base % ts).encode()), Invalid), ts
