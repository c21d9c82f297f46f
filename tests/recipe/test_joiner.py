"""The online joiner, step by step: a click at once, every head once, per-partition watermarks, bounded state."""

from __future__ import annotations

import numpy as np

from rtrec.events import Event
from rtrec.recipe.examples import labels_of
from rtrec.recipe.joiner import Joiner


def imp(eid: str, item: str, ts: float, req: str = "r1") -> Event:
    return Event(eid, "u", item, "impression", ts, request_id=req)


def act(eid: str, item: str, ts: float, action: str = "click", req: str | None = "r1") -> Event:
    return Event(eid, "u", item, action, ts, request_id=req)


def test_click_makes_a_click_example_at_once_and_only_once() -> None:
    j = Joiner(window_s=60)
    assert j.add_many([imp("1", "a", 0), imp("2", "b", 0)]) == []
    out = j.add_many([act("3", "a", 5)])
    assert [(x.event.event_id, x.kind, x.label, x.joined) for x in out] == [("1", "click", 1.0, True)]
    assert j.add_many([act("4", "a", 6, "click")]) == []  # a second click labels nothing new
    assert j.pending == 2 and j.stats.positives == 1


def test_every_action_within_the_window_reaches_its_head() -> None:
    j = Joiner(window_s=60)
    j.add_many([imp("1", "a", 0)])
    first = j.add_many([act("2", "a", 5, "click")])
    later = j.add_many([act("3", "a", 10, "like"), act("4", "a", 20, "share")])
    closed = j.add_many([imp("5", "z", 61, req="r9")])
    assert later == [] and [x.kind for x in first + closed] == ["click", "final"]
    assert closed[0].actions == {"click", "like", "share"}
    # click head from the click example, like and share heads from the final one: each exactly once
    np.testing.assert_array_equal(labels_of(first + closed), [[1.0, np.nan, np.nan], [np.nan, 1.0, 1.0]])


def test_a_like_without_a_click_is_a_click_and_a_like() -> None:
    j = Joiner(window_s=60)
    j.add_many([imp("1", "a", 0)])
    out = j.add_many([act("2", "a", 5, "like"), imp("3", "z", 100, req="r9")])
    labels = labels_of(out)
    assert [x.kind for x in out] == ["click", "final"]
    assert labels[0, 0] == 1.0 and labels[1, 1] == 1.0 and labels[1, 2] == 0.0


def test_impression_without_action_becomes_a_negative_of_every_head_when_the_watermark_passes_its_window() -> None:
    j = Joiner(window_s=60)
    j.add_many([imp("1", "a", 0)])
    assert j.add_many([act("x", "other", 59.9, req="r9")]) == []
    out = j.add_many([imp("2", "b", 60.0, req="r2")])
    assert [(x.event.event_id, x.kind, x.label) for x in out] == [("1", "negative", 0.0)]
    assert labels_of(out).tolist() == [[0.0, 0.0, 0.0]]
    assert j.pending == 1


def test_watermarks_are_per_partition_so_a_lagging_partition_keeps_its_impressions() -> None:
    j = Joiner(window_s=60)
    j.add_many([imp("1", "a", 0)], partitions=[1])
    assert j.add_many([imp("2", "b", 1000, req="r2")], partitions=[0]) == []  # partition 0 ran ahead
    assert j.pending == 2
    out = j.add_many([act("3", "a", 30)], partitions=[1])  # the click on the lagging partition still joins
    assert [(x.event.event_id, x.kind) for x in out] == [("1", "click")]
    assert j.watermark == 30.0


def test_features_attached_to_an_impression_come_back_on_all_its_examples() -> None:
    j = Joiner(window_s=60)
    j.add_many([imp("1", "a", 0), imp("2", "b", 0)], features=["at-0-a", "at-0-b"])
    clicked = j.add_many([act("3", "a", 5)], features=["at-5"])
    closed = j.add_many([imp("4", "z", 70, req="r9")], features=["at-70"])
    assert [x.features for x in clicked] == ["at-0-a"]
    assert sorted((x.event.event_id, x.features) for x in closed) == [("1", "at-0-a"), ("2", "at-0-b")]


def test_actions_without_impression_are_positive_only_examples() -> None:
    j = Joiner()
    out = j.add_many([act("1", "a", 1, "rating", req=None), act("2", "b", 2, "click", req=None),
                      act("3", "c", 3, "skip", req=None)])
    assert [(x.event.event_id, x.joined, x.kind) for x in out] == [("1", False, "positive_only"),
                                                                    ("2", False, "positive_only")]


def test_redelivered_impression_is_held_once() -> None:
    j = Joiner(window_s=10)
    j.add_many([imp("1", "a", 0), imp("1", "a", 0)])
    assert j.pending == 1
    assert len(j.add_many([imp("2", "z", 100, req="r2")])) == 1


def test_state_is_bounded_by_closing_the_oldest() -> None:
    j = Joiner(window_s=1_000, max_pending=3)
    out = j.add_many([imp(str(k), f"i{k}", k) for k in range(5)], partitions=[k % 2 for k in range(5)])
    assert [x.event.event_id for x in out] == ["0", "1"] and all(x.kind == "negative" for x in out)
    assert j.pending == 3 and j.stats.evicted == 2


def test_flush_closes_everything_pending() -> None:
    j = Joiner()
    j.add_many([imp("1", "a", 0), imp("2", "b", 0)])
    j.add_many([act("3", "a", 1)])
    assert sorted((x.event.event_id, x.kind) for x in j.flush()) == [("1", "final"), ("2", "negative")]
    assert j.pending == 0
