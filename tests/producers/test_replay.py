"""Replay input handling: column mapping, malformed rows counted not fatal, event-time order, idempotent ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producers.pacing import Pacer
from producers.replay import load_events, parse_columns, replay


def test_column_mapping_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="bad column mapping"):
        parse_columns("userid=userId")
    with pytest.raises(ValueError, match="bad column mapping"):
        parse_columns("user_id")


def test_csv_with_mapping_is_sorted_by_time_and_malformed_rows_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(
        "userId,movieId,rating,timestamp\n"
        "1,10,4.0,300\n"
        "2,20,3.5,100\n"
        ",30,3.0,200\n"          # no user
        "3,40,x,250\n"          # bad value
        "4,50,5.0,yesterday\n"  # bad ts
        "5,60,2.0,200\n"
    )
    loaded = load_events(path, parse_columns("user_id=userId,item_id=movieId,ts=timestamp,value=rating"),
                         default_action="rating")
    assert [e.user_id for e in loaded.events] == ["2", "5", "1"]
    assert [e.event_id for e in loaded.events] == ["ratings.csv:3", "ratings.csv:7", "ratings.csv:2"]
    assert all(e.action == "rating" for e in loaded.events)
    assert loaded.skipped == {"missing field: user_id": 1, "value is not a number: 'x'": 1,
                              "ts is not a number: 'yesterday'": 1}


def test_jsonl_keeps_its_own_event_ids_and_skips_garbage_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"event_id": "a", "user_id": 1, "item_id": "x", "action": "like", "ts": 5}),
             "{broken", "[1]", "",
             json.dumps({"event_id": "b", "user_id": "2", "item_id": "y", "ts": "2024-01-01T00:00:00+00:00"})]
    path.write_text("\n".join(lines) + "\n")
    loaded = load_events(path, {}, default_action="click")
    assert [(e.event_id, e.user_id, e.action) for e in loaded.events] == [("a", "1", "like"), ("b", "2", "click")]
    assert loaded.events[1].ts == 1704067200.0
    assert loaded.skipped == {"not JSON": 1, "not a JSON object": 1}


def test_limit_stops_reading_early(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("user_id,item_id,ts\n" + "".join(f"u{i},i{i},{i + 1}\n" for i in range(100)))
    assert len(load_events(path, {}, limit=7).events) == 7


def test_paced_replay_takes_event_time_divided_by_speed(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("user_id,item_id,ts\n" + "".join(f"u{i},i{i},{1000 + i * 0.5}\n" for i in range(5)))
    events = load_events(path, {}).events  # spans 2 s of event time
    sent: list[str] = []
    summary = replay(events, len(events), lambda e: sent.append(e.event_id), speed=4.0, progress=False)
    assert summary["sent"] == 5 and len(sent) == 5
    assert 0.4 <= summary["seconds"] < 1.5


def test_pacer_rejects_non_positive_speed() -> None:
    with pytest.raises(ValueError):
        Pacer(0.0, 0.0)
