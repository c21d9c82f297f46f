"""When serving pulls dense weights (and rebuilds its index): processes started together stay apart."""

from __future__ import annotations

import pytest

from serving.sync import SyncLoop


def dense_pulls(phase: float, seconds: int, interval_s: float = 20.0) -> list[int]:
    """The seconds at which a sync loop, asked once a second, pulls dense weights."""
    now = [0.0]
    loop = SyncLoop(None, None, None, None, None, None,  # type: ignore[arg-type]  # the schedule alone
                    dense_interval_s=interval_s, clock=lambda: now[0], dense_phase=phase)
    pulls = []
    for t in range(seconds + 1):
        now[0] = float(t)
        if loop._dense_due():
            pulls.append(t)
    return pulls


def test_two_processes_started_together_rebuild_their_indexes_half_an_interval_apart() -> None:
    assert dense_pulls(0.0, 60) == [0, 20, 40, 60]
    assert dense_pulls(0.5, 60) == [0, 30, 50]  # both at start (a model to serve), then 10 s apart


def test_a_phase_outside_one_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        dense_pulls(1.0, 1)
