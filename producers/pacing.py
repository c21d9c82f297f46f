"""Pacing: release time-stamped events when the wall clock reaches them.

Shared by the simulator and the replay so both emit at a controlled rate and in event-time order.
"""

from __future__ import annotations

import time
from typing import Callable


class Pacer:
    """Maps event time to wall time: an event at ``ts`` is due at ``wall0 + (ts - ts0) / speed``."""

    def __init__(self, ts0: float, speed: float, clock: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.ts0 = ts0
        self.speed = speed
        self.clock = clock
        self.wall0 = clock()

    def due_ts(self) -> float:
        """The latest event time that is due now."""
        return self.ts0 + (self.clock() - self.wall0) * self.speed

    def wait_for(self, ts: float, max_sleep_s: float = 0.5) -> None:
        """Sleep until ``ts`` is due (in slices of at most ``max_sleep_s`` so callers stay responsive)."""
        delay = (ts - self.ts0) / self.speed - (self.clock() - self.wall0)
        if delay > 0:
            time.sleep(min(delay, max_sleep_s))
