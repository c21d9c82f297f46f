"""A batch of consecutive events of an :class:`~evaluation.stream.EvalStream`, as rankers see it.

Rankers score a whole batch at once (one matrix product) and learn from it afterwards; what each
event may know about its user was fixed by the stream, so the batch size only decides how stale
the *learned* state is (at most the batch's own earlier events are missing).

>>> from rtrec.events import Event
>>> from evaluation.stream import EvalStream
>>> stream = EvalStream.from_events([Event(str(n), u, i, "click", float(n)) for n, (u, i) in
...     enumerate([("a", "x"), ("a", "y"), ("b", "z"), ("a", "z")])])
>>> batch = EvalBatch(stream, np.array([2, 3]))
>>> batch.candidates().astype(int).tolist()
[[1, 1, 0], [0, 0, 1]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.stream import EvalStream

__all__ = ["EvalBatch"]


@dataclass
class EvalBatch:
    """Events ``events`` (indices into ``stream``, in order) and their per-event arrays.

    ``as_of``: per event, the event whose history the deployed system had applied when it was
    asked (the user's first event of the worker's slice: what serving can know); None = the event
    itself (the exact history, which no live system has for events of the same slice).
    """

    stream: EvalStream
    events: np.ndarray
    as_of: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.events.size)

    @property
    def users(self) -> np.ndarray:
        return self.stream.users[self.events]

    @property
    def items(self) -> np.ndarray:
        return self.stream.items[self.events]

    @property
    def ts(self) -> np.ndarray:
        return self.stream.ts[self.events]

    @property
    def recent(self) -> np.ndarray:
        return self.stream.recent[self.events]

    @property
    def applied_recent(self) -> np.ndarray:
        """:attr:`recent` as of :attr:`as_of`: the user's last items the system had applied."""
        return self.recent if self.as_of is None else self.stream.recent[self.as_of]

    @property
    def n_seen(self) -> np.ndarray:
        return self.stream.n_seen[self.events]

    def histories(self, window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Flat (row in batch, item) pairs of each user's earlier items (the last ``window`` only)."""
        rows, items = self.stream.histories(self.events)
        if window is None or rows.size == 0:
            return rows, items
        lengths = np.bincount(rows, minlength=len(self))
        from_end = np.repeat(np.cumsum(lengths), lengths) - np.arange(rows.size)  # 1 = the latest
        keep = from_end <= window
        return rows[keep], items[keep]

    def candidates(self, exact: bool = False) -> np.ndarray:
        """``(B, n_items)`` mask: items seen before each event that its user has not acted on, as of
        :attr:`as_of` (what the system had applied; ``exact``: as of the event itself)."""
        known = self.events if exact or self.as_of is None else self.as_of
        mask = np.arange(self.stream.n_items)[None, :] < self.stream.n_seen[known][:, None]
        rows, items = self.stream.histories(known)
        mask[rows, items] = False
        return mask


def micro_batches(ts: np.ndarray, within_s: float, max_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the worker's micro-batches over events in time order.

    A worker consuming the stream live takes what arrives within ``within_s`` of the first event
    of a batch, at most ``max_size`` events (``worker_batch_within_s``, ``worker_batch_size``);
    replayed at its own pace, a log arrives by event time, so the cut is made on event time.

    >>> micro_batches(np.array([0., 0.1, 0.2, 0.5, 0.6, 0.6, 0.6]), 0.2, 2)
    [(0, 2), (2, 3), (3, 5), (5, 7)]
    """
    bounds: list[tuple[int, int]] = []
    start, n = 0, int(np.size(ts))
    while start < n:  # one step per batch; the search inside is vectorised
        end = int(np.searchsorted(ts, ts[start] + within_s, side="right"))
        end = min(max(end, start + 1), start + max_size, n)
        bounds.append((start, end))
        start = end
    return bounds
