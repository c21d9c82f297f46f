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

In Redis, the rings of one entity and action are one binary string (:class:`RingLayout`): per
window, the newest bucket written ``L`` (stored as ``L + 1``, 0 for none yet), then the ``slots``
counts, little-endian ``uint32``. Slot ``s`` holds bucket ``L - ((L - s) mod slots)``; the writer (``apply_events.lua``) zeroes the slots
it passes when ``L`` moves on, and drops an event older than ``L - slots + 1``, which is what a
ring of slots tagged with their bucket does. A reader sums many entities' strings at once with
numpy (:meth:`RingLayout.sums`): no script and no per-entity Python on the read path.

An item's ranking vector (:class:`VectorLayout`) is the rings of a few actions back to back and the
item's trending log-score, one string per item, so that ranking reads every candidate with one
MGET and decodes all of them with one ``numpy.frombuffer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

__all__ = ["WindowSpec", "DEFAULT_WINDOWS", "RingLayout", "VectorLayout"]


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


@dataclass(frozen=True)
class RingLayout:
    """The binary string of one entity's counts of one action over ``windows`` (module docstring).

    >>> layout = RingLayout((WindowSpec("5m", 300, 5), WindowSpec("1h", 3600, 12)))
    >>> layout.words, layout.nbytes
    (19, 76)
    """

    windows: tuple[WindowSpec, ...]

    @cached_property
    def words(self) -> int:
        """``uint32`` words of one string: per window its newest bucket and its slots."""
        return sum(1 + w.slots for w in self.windows)

    @cached_property
    def nbytes(self) -> int:
        return 4 * self.words

    def decode(self, blobs: Sequence[bytes | None]) -> np.ndarray:
        """``uint32 (len(blobs), words)``; a missing string (None) reads as zeros."""
        size = self.nbytes
        empty = bytes(size)
        joined = b"".join([b if b is not None and len(b) == size else empty for b in blobs])
        return np.frombuffer(joined, dtype="<u4").reshape(len(blobs), self.words)

    def sums(self, words: np.ndarray, window: str, watermark: float) -> np.ndarray:
        """``int64 (n,)``: per string, the counts of ``window``'s slots live at ``watermark``
        (a window not in the layout is a KeyError)."""
        spec, at = self._where[window]
        newest = words[:, at].astype(np.int64)[:, None] - 1
        bucket = newest - (newest - np.arange(spec.slots)) % spec.slots  # the bucket each slot holds
        live = (bucket >= spec.live_range(watermark)[0]) & (newest >= 0)
        return np.einsum("ij,ij->i", words[:, at + 1:at + 1 + spec.slots], live, dtype=np.int64)

    @cached_property
    def _where(self) -> dict[str, tuple[WindowSpec, int]]:
        """Each window's spec and the index of its newest-bucket word (its slots follow)."""
        out, at = {}, 0
        for w in self.windows:
            out[w.name] = (w, at)
            at += 1 + w.slots
        return out


@dataclass(frozen=True)
class VectorLayout:
    """An item's ranking vector: the :class:`RingLayout` string of each of ``actions``, in order,
    then the item's trending log-score as a little-endian float64 (``-inf``: none yet). Written by
    ``apply_events.lua`` with the rings it copies; the window sums stay exact at any watermark
    because they are taken at read (:meth:`RingLayout.sums` of :meth:`words`), as for any ring.

    >>> layout = VectorLayout(RingLayout((WindowSpec("5m", 300, 5),)), ("impression", "click"))
    >>> layout.nbytes, layout.decode([None])[1].tolist()
    (56, [-inf])
    """

    rings: RingLayout
    actions: tuple[str, ...]

    @cached_property
    def dtype(self) -> np.dtype:
        return np.dtype([("rings", "<u4", (len(self.actions), self.rings.words)), ("trending", "<f8")])

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize

    def decode(self, blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """``uint32 (len(blobs), len(actions), words)`` rings and ``float64 (len(blobs),)`` trending
        log-scores; a missing string (None, or one of another layout) reads as zeros and ``-inf``."""
        size, blank = self.nbytes, self.blank
        return self.decode_joined(b"".join([b if b is not None and len(b) == size else blank for b in blobs]),
                                  len(blobs))

    def decode_joined(self, joined: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`decode` of ``n`` vectors already joined into one string (blanks where none)."""
        if len(joined) != n * self.nbytes:
            raise ValueError(f"expected {n} vectors of {self.nbytes} bytes, got {len(joined)} bytes")
        rows = np.frombuffer(joined, dtype=self.dtype)
        return rows["rings"], rows["trending"]

    def words(self, rings: np.ndarray, action: str) -> np.ndarray:
        """The :class:`RingLayout` words ``(n, words)`` of one action out of :meth:`decode`'s rings."""
        return rings[:, self.actions.index(action)]

    @cached_property
    def blank(self) -> bytes:
        """The vector of an item without one: zero counts, no trending score."""
        return np.array([(0, -np.inf)], dtype=self.dtype).tobytes()
