"""Window arithmetic: buckets, live ranges, the binary rings readers sum."""

from __future__ import annotations

import numpy as np
import pytest

from features.windows import RingLayout, WindowSpec


def count_in_window(window: WindowSpec, blob: bytes | None, watermark: float) -> int:
    layout = RingLayout((window,))
    return int(layout.sums(layout.decode([blob]), window.name, watermark)[0])


def test_live_range_covers_exactly_slots_buckets_ending_at_the_watermark() -> None:
    w = WindowSpec("1h", 3600, 12)
    first, last = w.live_range(7_200.0)
    assert (first, last) == (13, 24) and last - first + 1 == w.slots


def test_count_sums_the_slots_whose_bucket_is_live_at_the_watermark() -> None:
    w = WindowSpec("5m", 300, 5)
    # newest bucket 16 (stored as 17); slots 0..4 hold buckets 15, 16, 12, 13, 14
    blob = np.array([17, 2, 3, 7, 0, 1], dtype="<u4").tobytes()
    assert count_in_window(w, blob, 1_000.0) == 13  # live buckets 12..16
    assert count_in_window(w, blob, 1_100.0) == 6  # live 14..18: buckets 14, 15, 16
    assert count_in_window(w, blob, 2_000.0) == 0 and count_in_window(w, None, 1_000.0) == 0


def test_a_ring_at_bucket_zero_is_not_empty() -> None:
    w = WindowSpec("5m", 300, 5)
    assert count_in_window(w, np.array([1, 4, 0, 0, 0, 0], dtype="<u4").tobytes(), 10.0) == 4


def test_invalid_window_is_refused() -> None:
    with pytest.raises(ValueError):
        WindowSpec("bad", 0, 5)
