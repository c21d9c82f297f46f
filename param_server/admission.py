"""Admission of new IDs: a rare ID gets a table row only after it has been seen often enough.

Most IDs of a real stream appear once or twice; giving each a row wastes memory and trains
noise. Sightings of IDs without a row are counted in a count-min sketch (fixed memory, counts
never under-estimated), and an ID is admitted when its estimate reaches the slot's threshold.
The sketch halves all its counters every ``decay_every`` sightings, so counts from long ago fade
and the sketch never saturates (the TinyLFU "reset").

>>> sketch = CountMinSketch(width=1024, depth=2)
>>> ids = np.array([7, 8], dtype=np.uint64)
>>> sketch.add(ids, np.array([1, 2])).tolist()
[1, 2]
>>> threshold_filter(sketch.add(ids, np.array([1, 1])), threshold=3).tolist()
[False, True]
"""

from __future__ import annotations

import numpy as np

from param_server.hash_index import mix64

__all__ = ["CountMinSketch", "threshold_filter"]


def threshold_filter(counts: np.ndarray, threshold: int) -> np.ndarray:
    """An ID is admitted once its (estimated) number of sightings reaches ``threshold``."""
    return np.asarray(counts) >= threshold


class CountMinSketch:
    """Approximate sighting counts of uint64 IDs in ``depth`` rows of ``width`` uint32 counters.

    Estimate = minimum over rows, so it over-counts only when an ID shares a counter with others
    in every row; with ``width`` well above the number of distinct pending IDs that is rare.
    """

    def __init__(self, width: int = 1 << 20, depth: int = 2, decay_every: int | None = None) -> None:
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be positive, got {width}, {depth}")
        self.width = width
        self.depth = depth
        self.decay_every = decay_every if decay_every is not None else 10 * width
        self.counters = np.zeros((depth, width), dtype=np.uint32)
        self.added = 0

    @property
    def nbytes(self) -> int:
        return self.counters.nbytes

    def add(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Count ``counts`` more sightings of each (distinct) ID; returns the new estimates."""
        cells = self._cells(ids)
        counts = np.asarray(counts, dtype=np.uint32)
        for row in range(self.depth):  # depth is 2-4: a loop over sketch rows, not over IDs
            np.add.at(self.counters[row], cells[row], counts)
        self.added += int(counts.sum())
        estimates = self.estimate(ids)
        if self.added >= self.decay_every:
            self.counters >>= np.uint32(1)
            self.added = 0
        return estimates

    def estimate(self, ids: np.ndarray) -> np.ndarray:
        """The estimated sightings of each ID (never below the true count since the last decay)."""
        cells = self._cells(ids)
        return np.min([self.counters[row][cells[row]] for row in range(self.depth)], axis=0)

    def _cells(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.uint64)
        return np.stack([(mix64(ids, seed=0x9E3779B97F4A7C15 * (row + 1) % 2**64) % np.uint64(self.width))
                         .astype(np.int64) for row in range(self.depth)])
