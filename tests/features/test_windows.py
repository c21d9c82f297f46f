"""Window arithmetic: buckets, live ranges, slot parsing."""

from __future__ import annotations

import pytest

from features.windows import WindowSpec, count_in_window


def test_live_range_covers_exactly_slots_buckets_ending_at_the_watermark() -> None:
    w = WindowSpec("1h", 3600, 12)
    first, last = w.live_range(7_200.0)
    assert (first, last) == (13, 24) and last - first + 1 == w.slots


def test_count_ignores_slots_tagged_outside_the_window() -> None:
    w = WindowSpec("5m", 300, 5)
    values = [b"16:3", b"12:2", b"11:7", b"17:1"]  # at watermark 1000 the live buckets are 12..16
    assert count_in_window(w, values, 1_000.0) == 5


def test_invalid_window_is_refused() -> None:
    with pytest.raises(ValueError):
        WindowSpec("bad", 0, 5)
