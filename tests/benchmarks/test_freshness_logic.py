"""The pure arithmetic of benchmarks/freshness.py: nearest-rank percentiles with timeouts, and rounding."""

from __future__ import annotations

import doctest
import math

import pytest

import benchmarks.freshness as freshness
from benchmarks.freshness import Samples, as_ms, nearest_rank, ratio


def test_nearest_rank_picks_an_observed_value() -> None:
    values = [float(n) for n in range(1, 101)]
    assert nearest_rank(values, 50) == 50.0
    assert nearest_rank(values, 99) == 99.0
    assert nearest_rank(values, 100) == 100.0
    assert nearest_rank([3.0], 99) == 3.0


def test_a_percentile_that_lands_on_a_timeout_is_infinite() -> None:
    values = [0.1] * 98 + [math.inf] * 2  # 2 % timed out: p99 is a timeout, p98 is not
    assert nearest_rank(values, 98) == 0.1
    assert nearest_rank(values, 99) == math.inf
    assert as_ms(nearest_rank(values, 99)) is None


def test_nearest_rank_refuses_nonsense() -> None:
    assert math.isnan(nearest_rank([], 50))
    with pytest.raises(ValueError):
        nearest_rank([1.0], 0)


def test_ms_and_ratios_for_the_json_line() -> None:
    assert as_ms(0.12345) == 123.5
    assert ratio(1.0, 0.5) == 2.0
    assert ratio(math.inf, 0.5) is None and ratio(1.0, 0.0) is None


def test_kafka_baseline_counts_unseen_probes_as_timeouts() -> None:
    samples = Samples(sent_at={"a": 1.0, "b": 2.0}, consumed_at={20: {"a": 1.25}})
    assert samples.kafka(20) == [0.25, math.inf]
    assert samples.kafka(1500) == [math.inf, math.inf]


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(freshness).failed == 0
