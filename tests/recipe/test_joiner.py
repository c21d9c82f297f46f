"""The online joiner, step by step: positives at once, negatives when the window closes, bounded state."""

from __future__ import annotations

from rtrec.events import Event
from rtrec.recipe.joiner import Joiner


def imp(eid: str, item: str, ts: float, req: str = "r1") -> Event:
    return Event(eid, "u", item, "impression", ts, request_id=req)


def act(eid: str, item: str, ts: float, action: str = "click", req: str | None = "r1") -> Event:
    return Event(eid, "u", item, action, ts, request_id=req)


def test_click_turns_its_impression_positive_immediately_and_only_once() -> None:
    j = Joiner(window_s=60)
    assert j.add_many([imp("1", "a", 0), imp("2", "b", 0)]) == []
    out = j.add_many([act("3", "a", 5)])
    assert [(x.event.event_id, x.label, x.joined) for x in out] == [("1", 1.0, True)]
    assert j.add_many([act("4", "a", 6, "like")]) == []  # already labelled
    assert j.pending == 1 and j.stats.unmatched_late == 1


def test_impression_without_action_becomes_negative_when_the_watermark_passes_its_window() -> None:
    j = Joiner(window_s=60)
    j.add_many([imp("1", "a", 0)])
    assert j.add_many([act("x", "other", 59.9, req="r9")]) == []
    out = j.add_many([imp("2", "b", 60.0, req="r2")])
    assert [(x.event.event_id, x.label) for x in out] == [("1", 0.0)]
    assert j.pending == 1


def test_actions_without_impression_are_positive_only_examples() -> None:
    j = Joiner()
    out = j.add_many([act("1", "a", 1, "rating", req=None), act("2", "b", 2, "click", req=None),
                      act("3", "c", 3, "skip", req=None)])
    assert [(x.event.event_id, x.joined) for x in out] == [("1", False), ("2", False)]


def test_redelivered_impression_is_held_once() -> None:
    j = Joiner(window_s=10)
    j.add_many([imp("1", "a", 0), imp("1", "a", 0)])
    assert j.pending == 1
    assert len(j.add_many([imp("2", "z", 100, req="r2")])) == 1


def test_state_is_bounded_by_closing_the_oldest_as_negatives() -> None:
    j = Joiner(window_s=1_000, max_pending=3)
    out = j.add_many([imp(str(k), f"i{k}", k) for k in range(5)])
    assert [x.event.event_id for x in out] == ["0", "1"] and all(x.label == 0.0 for x in out)
    assert j.pending == 3 and j.stats.evicted == 2


def test_flush_closes_everything_pending_as_negatives() -> None:
    j = Joiner()
    j.add_many([imp("1", "a", 0), imp("2", "b", 0)])
    assert sorted(x.event.event_id for x in j.flush()) == ["1", "2"] and j.pending == 0
