"""The pure arithmetic of benchmarks/adaptation.py: post-shift event indices and recovery points."""

from __future__ import annotations

import doctest
from types import SimpleNamespace

import numpy as np

import benchmarks.adaptation as adaptation
from benchmarks.adaptation import adaptation_figures, first_recovery, post_shift_index, sums_by


def test_post_shift_index_counts_each_users_events_from_the_shift() -> None:
    users = np.array([2, 0, 2, 0, 2, 1])
    ts = np.array([1.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    assert post_shift_index(users, ts, 5.0).tolist() == [0, 1, 1, 2, 2, 1]
    assert post_shift_index(users, ts, 100.0).tolist() == [0] * 6


def test_first_recovery_pools_a_window_and_skips_empty_positions() -> None:
    hits, counts = np.array([0.0, 0.0, 2.0, 2.0]), np.array([2, 2, 2, 2])
    assert first_recovery(hits, counts, 0.75, 1) == 2
    assert first_recovery(hits, counts, 0.5, 2) == 1  # (0 + 2) / 4
    assert first_recovery(np.array([0.0, 0.0, 1.0]), np.array([1, 0, 1]), 0.5, 2) == 2  # position 1 has no events
    assert first_recovery(hits, counts, 1.01, 1) is None


def test_sums_by_drops_positions_out_of_range() -> None:
    total, n = sums_by(np.array([0, 2, 2, 5, -1]), np.array([1.0, 1.0, 0.0, 1.0, 1.0]), 3)
    assert total.tolist() == [1.0, 0.0, 1.0] and n.tolist() == [1, 0, 2]


def test_figures_of_a_user_who_recovers_after_four_misses() -> None:
    """One shifted user (0): HR 0.8 before; after the shift 5 misses, then hits. One control user (1)."""
    rows = [(0, 50.0 + 10 * n, hit) for n, hit in enumerate([1, 1, 1, 0, 1])]
    rows += [(0, 100.0 + 10 * k, 0 if k < 5 else 1) for k in range(15)]
    rows += [(1, 55.0, 1), (1, 65.0, 0), (1, 115.0, 1), (1, 125.0, 1)]
    rows.sort(key=lambda r: r[1])
    users, ts, hits = (np.array(col) for col in zip(*rows))
    stream = SimpleNamespace(users=users, ts=ts.astype(float))
    fig = adaptation_figures(stream, np.arange(len(rows)), hits.astype(float), np.array([True, False]),
                             shift_ts=100.0, pre_s=100.0, bin_s=20.0)
    assert fig["hr_pre"] == 0.8 and fig["hr_right_after"] == 0.0
    assert fig["recovery_events"] == 4  # clicks 5-9 after the shift: 4 of 5 hits >= 0.64
    assert fig["recovery_s"] == 40  # bins [40, 80) s after the shift: 3 of 4 hits
    assert fig["control_pre"] == 0.5 and fig["control_post"] == 1.0
    assert fig["hr_until_refresh"] == fig["hr_post_day"] == round(10 / 15, 4)  # all within the day


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(adaptation).failed == 0
