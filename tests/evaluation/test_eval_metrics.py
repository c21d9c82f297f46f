"""Ranking metrics against hand-computed values; ranks with ties, exclusions and unknown targets."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import MetricLog, hit_rate, ndcg, reciprocal_rank, target_ranks


def test_metrics_of_known_ranks_match_hand_computed_values() -> None:
    ranks = np.array([1, 2, 10, 11, np.inf])
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 0, 0]
    assert ndcg(ranks, 10) == pytest.approx([1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0])
    assert reciprocal_rank(ranks) == pytest.approx([1.0, 0.5, 0.1, 0.0, 0.0])  # cut at 10, as MRR@10


def test_rank_counts_only_candidates_scoring_higher() -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.7], [0.9, 0.1, 0.5, 0.7]])
    candidates = np.array([[True, True, True, True], [False, True, True, False]])
    ranks = target_ranks(scores, np.array([2, 2]), candidates, np.arange(4))
    assert ranks.tolist() == [3.0, 1.0]  # the second row excludes the two better items


def test_ties_are_broken_by_the_fixed_priorities() -> None:
    scores = np.zeros((2, 3))
    ranks = target_ranks(scores, np.array([0, 2]), np.ones((2, 3), bool), np.array([5, 9, 1]))
    assert ranks.tolist() == [2.0, 3.0]


def test_a_target_that_is_not_a_candidate_has_infinite_rank() -> None:
    ranks = target_ranks(np.ones((1, 3)), np.array([1]), np.array([[True, False, True]]), np.arange(3))
    assert ranks.tolist() == [np.inf]


def test_metric_log_summarises_overall_and_per_period() -> None:
    log = MetricLog()
    log.add_many(np.array([0.0, 5.0]), np.array([1.0, 20.0]))
    log.add_many(np.array([12.0]), np.array([2.0]))
    assert log.summary()["hr@10"] == pytest.approx(2 / 3)
    assert log.summary()["mrr"] == pytest.approx((1 + 0.0 + 0.5) / 3)  # rank 20 is beyond 10
    starts, means, counts = log.over_time(10.0)
    assert starts.tolist() == [0.0, 10.0] and counts.tolist() == [2, 1]
    assert means["hr@10"].tolist() == [0.5, 1.0]
