"""The evaluated stream: first-appearance indices, what each event may know, dropped negatives."""

from __future__ import annotations

import numpy as np

from evaluation.batches import EvalBatch
from evaluation.stream import EvalStream
from rtrec.events import Event


def _stream(pairs: list[tuple[str, str]], actions: list[str] | None = None, recent_len: int = 3) -> EvalStream:
    actions = actions or ["click"] * len(pairs)
    events = [Event(str(n), u, i, a, float(10 * n)) for n, ((u, i), a) in enumerate(zip(pairs, actions))]
    return EvalStream.from_events(events[::-1], recent_len)  # given out of order: sorted by ts


def test_indices_follow_first_appearance_in_time_order() -> None:
    s = _stream([("a", "x"), ("b", "y"), ("a", "y"), ("c", "z")])
    assert s.user_ids == ["a", "b", "c"] and s.item_ids == ["x", "y", "z"]
    assert s.items.tolist() == [0, 1, 1, 2]
    assert s.n_seen.tolist() == [0, 1, 2, 2]


def test_recent_items_and_history_hold_only_the_users_past() -> None:
    s = _stream([("a", "x"), ("a", "y"), ("b", "x"), ("a", "z"), ("a", "w")], recent_len=2)
    assert s.recent.tolist() == [[-1, -1], [-1, 0], [-1, -1], [0, 1], [1, 2]]
    assert s.history_of(4).tolist() == [0, 1, 2]
    rows, items = s.histories(np.array([3, 4]))
    assert rows.tolist() == [0, 0, 1, 1, 1] and items.tolist() == [0, 1, 0, 1, 2]


def test_repeats_are_flagged_and_negative_actions_dropped() -> None:
    s = _stream([("a", "x"), ("a", "y"), ("a", "x"), ("a", "z")], ["click", "impression", "click", "click"])
    assert len(s) == 3 and s.dropped == 1
    assert s.repeat.tolist() == [False, True, False]


def test_candidates_exclude_the_users_items_and_items_not_seen_yet() -> None:
    s = _stream([("a", "x"), ("b", "y"), ("a", "z"), ("a", "y")])
    batch = EvalBatch(s, np.array([2, 3]))
    assert batch.candidates().tolist() == [[False, True, False], [False, True, False]]
    assert batch.histories(window=1)[1].tolist() == [0, 2]
