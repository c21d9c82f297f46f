"""Expiry of stale rows: IDs that stopped appearing give their memory back.

Time is *event time* (the ``ts`` of the pushed examples), not the wall clock, so a replay of old
logs expires rows exactly as the live stream would have, and a paused stream expires nothing.

>>> stale_rows(np.array([0.0, 70.0, 100.0]), np.array([True, True, False]), now=120.0, ttl_s=60.0).tolist()
[True, False, False]
"""

from __future__ import annotations

import numpy as np

__all__ = ["stale_rows", "next_check"]


def stale_rows(last_update_ts: np.ndarray, live: np.ndarray, now: float, ttl_s: float) -> np.ndarray:
    """A live row expires when its last update is more than ``ttl_s`` seconds of event time before ``now``."""
    return live & (last_update_ts < now - ttl_s)


def next_check(now: float, ttl_s: float) -> float:
    """Scan for stale rows again after a tenth of the TTL, so rows live at most 1.1 TTL."""
    return now + ttl_s / 10.0
