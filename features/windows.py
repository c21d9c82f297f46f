"""Event-time sliding windows as rings of buckets, and the arithmetic both writer and reader share.

A window of ``seconds`` is cut into ``slots`` buckets of ``seconds / slots``; an event at ``ts``
falls in bucket ``b = floor(ts / bucket_s)`` and is stored in ring slot ``b % slots`` tagged with
``b``. At watermark ``T`` (the newest event time seen) the window count is the sum over slots whose
tag lies in ``(B_T - slots, B_T]`` with ``B_T = floor(T / bucket_s)``: a sliding window with
bucket resolution, in constant memory per entity. An event too late for every slot of a window
(its bucket already reused by a newer one) simply no longer counts there, as it would not in a
recount at ``T``.

>>> w = WindowSpec("5m", 300, 5)
>>> w.bucket_s, w.bucket(1_000.0), w.live_range(1_000.0)
(60.0, 16, (12, 16))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

__all__ = ["WindowSpec", "DEFAULT_WINDOWS", "count_in_window", "parse_slot_value"]


@dataclass(frozen=True)
class WindowSpec:
    """A sliding event-time window: a name used in feature names, its length, its resolution."""

    name: str
    seconds: float
    slots: int

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.slots < 1:
            raise ValueError(f"window {self.name}: seconds and slots must be positive")

    @property
    def bucket_s(self) -> float:
        return self.seconds / self.slots

    def bucket(self, ts: float) -> int:
        """The bucket index of event time ``ts``."""
        return math.floor(ts / self.bucket_s)

    def live_range(self, watermark: float) -> tuple[int, int]:
        """The first and last bucket counted at ``watermark`` (inclusive)."""
        last = self.bucket(watermark)
        return last - self.slots + 1, last


#: 5 minutes at 1-minute, 1 hour at 5-minute and 24 hours at 1-hour resolution.
DEFAULT_WINDOWS = (WindowSpec("5m", 300, 5), WindowSpec("1h", 3600, 12), WindowSpec("24h", 86400, 24))


def parse_slot_value(value: bytes | str) -> tuple[int, int]:
    """A stored slot value ``"<bucket>:<count>"`` as ``(bucket, count)``."""
    text = value.decode() if isinstance(value, bytes) else value
    bucket, _, count = text.partition(":")
    return int(float(bucket)), int(count)


def count_in_window(window: WindowSpec, slot_values: Iterable[bytes | str], watermark: float) -> int:
    """Sum of the slots of one (window, action) that are live at ``watermark``."""
    first, last = window.live_range(watermark)
    total = 0
    for value in slot_values:
        bucket, count = parse_slot_value(value)
        if first <= bucket <= last:
            total += count
    return total
