"""Validation of a consumed batch: the event-time bound dead-letters events from the future.

One event stamped far ahead of the worker's clock would move every watermark it reaches (features,
joiner, parameter-server expiry); it goes to ``actions.dlq`` with a readable reason instead.
Old events (replays of 1997 logs) stay valid: the bound is only on the future side.
"""

from __future__ import annotations

import json
import time

import pytest

from rtrec.settings import Settings, load_settings
from stream_workers.validation import split_batch

NOW = 1_700_000_000.0


def raw_event(ts: float, event_id: str = "e1") -> bytes:
    return json.dumps({"event_id": event_id, "user_id": "u1", "item_id": "i1", "action": "click",
                       "ts": ts}).encode()


def test_an_event_a_day_ahead_is_dead_lettered_with_a_readable_reason() -> None:
    events, dead = split_batch([raw_event(NOW + 86_400)], now=NOW, max_ahead_s=3600)
    assert events == []
    assert [d.reason for d in dead] == [
        "ts 1700086400 is 86400 s ahead of the worker clock (bound 3600 s)"]
    assert json.loads(dead[0].to_json())["raw"] == raw_event(NOW + 86_400).decode()


def test_the_bound_is_inclusive_and_configurable() -> None:
    batch = [raw_event(NOW + 3600, "at"), raw_event(NOW + 3601, "over")]
    events, dead = split_batch(batch, now=NOW, max_ahead_s=3600)
    assert [e.event_id for e in events] == ["at"]
    assert len(dead) == 1 and "3601 s ahead" in dead[0].reason and "\n" not in dead[0].reason
    events, dead = split_batch(batch, now=NOW, max_ahead_s=10_000)
    assert (len(events), dead) == (2, [])


def test_replays_of_old_logs_stay_valid() -> None:
    events, dead = split_batch([raw_event(880_000_000.0), raw_event(1.0, "e2")], now=NOW, max_ahead_s=3600)
    assert (len(events), dead) == (2, [])


def test_by_default_the_worker_clock_is_the_wall_clock_and_the_bound_the_settings_default() -> None:
    now = time.time()
    events, dead = split_batch([raw_event(now + 60, "soon"), raw_event(now + 86_400, "tomorrow")])
    assert [e.event_id for e in events] == ["soon"]
    assert len(dead) == 1 and "ahead of the worker clock (bound 3600 s)" in dead[0].reason
    assert Settings.model_fields["max_event_ahead_s"].default == 3600.0


def test_the_bound_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_MAX_EVENT_AHEAD_S", "60")
    assert load_settings().max_event_ahead_s == 60.0
    monkeypatch.setenv("RTREC_MAX_EVENT_AHEAD_S", "-1")
    with pytest.raises(ValueError):
        load_settings()


def test_other_invalid_messages_keep_their_reasons() -> None:
    events, dead = split_batch([None, b"x", raw_event(NOW)], now=NOW, max_ahead_s=3600)
    assert len(events) == 1
    assert [d.reason[:8] for d in dead] == ["empty me", "not JSON"]


def test_the_worker_pipeline_dead_letters_it_and_moves_no_watermark() -> None:
    """Through the worker's own pipeline: the joiner and the feature writer never see the event."""
    from features.writer import WriteResult
    from rtrec.recipe.joiner import Joiner
    from stream_workers.pipeline import BatchPipeline

    class RecordingWriter:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def write_many(self, events):  # noqa: ANN001, ANN201 -- the FeatureWriter interface
            self.seen += [e.ts for e in events]
            return WriteResult(len(events), 0)

    now = time.time()
    writer, joiner = RecordingWriter(), Joiner(window_s=60)
    pipeline = BatchPipeline(writer, joiner)  # type: ignore[arg-type]
    result = pipeline.process([raw_event(now, "live"), raw_event(now + 86_400 * 365, "next-year")])
    assert result.events == 1
    assert [d.reason.split(" is ")[1] for d in result.dead_letters] == [
        "31536000 s ahead of the worker clock (bound 3600 s)"]
    assert writer.seen == [now]
    assert joiner.watermark <= now
