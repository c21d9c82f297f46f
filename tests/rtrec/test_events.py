"""The event contract: what parse_event accepts, the precise reasons it rejects, and that it never raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtrec.events import MAX_EVENT_BYTES, Event, Invalid, encode_event, parse_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "click", "ts": 1_700_000_000.5}


def raw(**changes: object) -> bytes:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def test_valid_event_with_all_fields_round_trips() -> None:
    event = Event("e1", "u1", "i1", "purchase", 1.7e9, value=30.0, request_id="r1",
                  context={"device": "ios"}, item={"category": "shoes", "price": 30})
    assert parse_event(encode_event(event)) == event


def test_unknown_lowercase_action_is_accepted_because_actions_are_extensible() -> None:
    assert isinstance(parse_event(raw(action="add_to_cart")), Event)


def test_integer_ts_becomes_float() -> None:
    event = parse_event(raw(ts=1_700_000_000))
    assert isinstance(event, Event) and event.ts == 1.7e9 and isinstance(event.ts, float)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", "not UTF-8: byte 0"),
        (b"{nope", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (raw(user_id=...), "missing field: user_id"),
        (raw(ts=None), "missing field: ts"),
        (raw(user_id=42), "user_id must be a string, got int"),
        (raw(item_id=""), "item_id must have 1 to 256 characters"),
        (raw(event_id="x" * 257), "event_id must have 1 to 256 characters"),
        (raw(action="Click!"), "action must be a lowercase identifier"),
        (raw(ts=1_700_000_000_000), "ts must be seconds since the epoch"),
        (raw(ts=-1), "ts must be seconds since the epoch"),
        (raw(ts=True), "ts must be seconds since the epoch"),
        (raw(ts="1700000000"), "ts must be seconds since the epoch"),
        (b'{"event_id":"e","user_id":"u","item_id":"i","action":"click","ts":NaN}', "not JSON"),
        (raw(value="3"), "value must be a finite number"),
        (raw(request_id=7), "request_id must be a string"),
        (raw(context=[1]), "context must be an object"),
        (raw(item={"tags": ["a"]}), "item.tags must be a string, number or boolean"),
        (raw(context={f"k{i}": i for i in range(33)}), "context has more than 32 keys"),
        (b" " * (MAX_EVENT_BYTES + 1), "event too large"),
    ],
)
def test_invalid_event_gets_precise_reason(data: bytes, reason: str) -> None:
    result = parse_event(data)
    assert isinstance(result, Invalid)
    assert result.reason.startswith(reason), result.reason


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_parse_event_never_raises_on_any_bytes(data: bytes) -> None:
    assert isinstance(parse_event(data), (Event, Invalid))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD, "value", "request_id", "context", "item", "x"]), json_values))
def test_parse_event_never_raises_on_any_json_object(obj: dict) -> None:
    result = parse_event(json.dumps({**GOOD, **obj}).encode())
    assert isinstance(result, (Event, Invalid))
    if isinstance(result, Event):  # anything accepted survives a round trip unchanged
        assert parse_event(encode_event(result)) == result


def test_deeply_nested_json_is_rejected_not_crashing() -> None:
    assert isinstance(parse_event(b"[" * 10_000 + b"]" * 10_000), Invalid)
