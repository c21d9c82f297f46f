"""Each baseline on a tiny hand-made stream: scores before learning, then after."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.baselines import Cooccurrence, Popularity, Trending
from evaluation.batches import EvalBatch
from evaluation.stream import EvalStream
from rtrec.events import Event

DAY = 86_400.0


def _stream(rows: list[tuple[str, str, float]]) -> EvalStream:
    return EvalStream.from_events([Event(str(n), u, i, "click", ts) for n, (u, i, ts) in enumerate(rows)])


def test_popularity_counts_every_positive_so_far() -> None:
    s = _stream([("a", "x", 0), ("b", "y", 1), ("c", "y", 2), ("d", "x", 3), ("e", "y", 4)])
    pop = Popularity(s.n_items)
    assert pop.scores(EvalBatch(s, np.array([0])))[0].tolist() == [0.0, 0.0]
    pop.learn(EvalBatch(s, np.arange(4)))
    assert pop.scores(EvalBatch(s, np.array([4])))[0].tolist() == [2.0, 2.0]


def test_trending_halves_a_count_every_half_life() -> None:
    s = _stream([("a", "x", 0.0), ("b", "y", DAY), ("c", "y", 2 * DAY)])
    trend = Trending(s.n_items, half_life_s=DAY)
    trend.learn(EvalBatch(s, np.array([0, 1])))
    assert trend.counts.tolist() == pytest.approx([0.5, 1.0])
    trend.learn(EvalBatch(s, np.array([2])))
    assert trend.counts.tolist() == pytest.approx([0.25, 1.5])


def test_cooccurrence_scores_items_that_shared_users_with_the_last_items() -> None:
    s = _stream([("a", "x", 0), ("a", "y", 1), ("b", "x", 2), ("b", "z", 3), ("c", "x", 4), ("c", "q", 5)])
    co = Cooccurrence(s.n_items, query_len=1)
    co.learn(EvalBatch(s, np.arange(4)))
    assert co.table[0].tolist() == [0.0, 1.0, 1.0, 0.0]  # x met y (user a) and z (user b)
    scores = co.scores(EvalBatch(s, np.array([5])))  # user c's last item is x
    assert scores[0].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_cooccurrence_window_limits_pairs_to_recent_actions() -> None:
    s = _stream([("a", "x", 0), ("a", "y", 1), ("a", "z", 2)])
    co = Cooccurrence(s.n_items, window=1)
    co.learn(EvalBatch(s, np.arange(3)))
    assert co.table[0, 2] == 0 and co.table[1, 2] == 1 and co.table[0, 1] == 1


def test_cooccurrence_queries_the_history_the_system_had_applied_and_the_exact_variant_all_of_it() -> None:
    # user c acts on x (batch 1), then on y and q in batch 2: when q is asked, the system has applied
    # only x (c's first event of batch 2 is y), the oracle also knows y
    s = _stream([("a", "x", 0), ("a", "z", 1), ("b", "y", 2), ("b", "w", 3), ("c", "x", 4), ("c", "y", 5),
                 ("c", "q", 6)])
    applied, exact = (Cooccurrence(s.n_items, query_len=1, exact_history=flag) for flag in (False, True))
    assert (applied.name, exact.name) == ("cooccurrence", "cooccurrence_exact")
    for ranker in (applied, exact):
        ranker.learn(EvalBatch(s, np.arange(5)))
    asked = EvalBatch(s, np.array([6]), as_of=np.array([5]))
    z, w = s.item_ids.index("z"), s.item_ids.index("w")
    assert applied.scores(asked)[0][z] == 1.0 and applied.scores(asked)[0][w] == 0.0  # co-visited with x
    assert exact.scores(asked)[0][w] == 1.0 and exact.scores(asked)[0][z] == 0.0  # co-visited with y


def test_candidates_as_of_the_applied_history_keep_the_items_of_the_same_batch() -> None:
    # c acts on x (applied), then y and q in one batch: asked for q, the system has applied only x,
    # so y (not applied yet) is still a candidate; exactly, y is already the user's
    s = _stream([("a", "x", 0), ("a", "y", 1), ("a", "q", 2), ("c", "x", 3), ("c", "y", 4), ("c", "q", 5)])
    asked = EvalBatch(s, np.array([5]), as_of=np.array([4]))
    x, y = s.item_ids.index("x"), s.item_ids.index("y")
    assert not asked.candidates()[0][x] and asked.candidates()[0][y]
    assert not asked.candidates(exact=True)[0][y]
