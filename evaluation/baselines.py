"""Baseline rankers: most popular so far, recently trending, and item-to-item co-occurrence.

Every ranker has the two verbs of the prequential loop: ``scores(batch)`` gives a score per item
for each event of the batch (higher = ranked first; the runner masks non-candidates), and
``learn(batch)`` then takes the batch in. Both work on whole batches with numpy.

>>> from rtrec.events import Event
>>> from evaluation.batches import EvalBatch
>>> from evaluation.stream import EvalStream
>>> stream = EvalStream.from_events([Event(str(n), u, i, "click", float(n)) for n, (u, i) in
...     enumerate([("a", "x"), ("b", "x"), ("b", "y"), ("c", "x")])])
>>> pop = Popularity(stream.n_items)
>>> pop.learn(EvalBatch(stream, np.arange(3)))
>>> pop.scores(EvalBatch(stream, np.array([3])))[0].tolist()
[2.0, 1.0]
"""

from __future__ import annotations

import numpy as np

from evaluation.batches import EvalBatch

__all__ = ["Popularity", "Trending", "Cooccurrence", "MAX_COOCCURRENCE_ITEMS"]

#: Largest catalogue the dense item-by-item co-occurrence matrix is built for (4 bytes per pair).
MAX_COOCCURRENCE_ITEMS = 40_000


class Popularity:
    """Score = how many positive events the item had so far."""

    name = "popularity"

    def __init__(self, n_items: int) -> None:
        self.counts = np.zeros(n_items, dtype=np.float64)

    def scores(self, batch: EvalBatch) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(batch), self.counts.size))

    def learn(self, batch: EvalBatch) -> None:
        self.counts += np.bincount(batch.items, minlength=self.counts.size)


class Trending:
    """Score = exponentially decayed count, ``sum_k 2 ** (-(t - t_k) / half_life_s)`` over past events.

    The counts are kept as of the latest event time and decayed when time moves on, so an update
    costs one pass over the item vector.
    """

    name = "trending"

    def __init__(self, n_items: int, half_life_s: float = 86_400.0) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        self.half_life_s = half_life_s
        self.counts = np.zeros(n_items, dtype=np.float64)
        self.now = -np.inf

    def scores(self, batch: EvalBatch) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(batch), self.counts.size))

    def learn(self, batch: EvalBatch) -> None:
        latest = float(batch.ts.max())
        if np.isfinite(self.now):
            self.counts *= 2.0 ** (-(latest - self.now) / self.half_life_s)
        self.now = max(self.now, latest)
        weights = 2.0 ** (-(self.now - batch.ts) / self.half_life_s)
        self.counts += np.bincount(batch.items, weights=weights, minlength=self.counts.size)

    def log_counts(self) -> np.ndarray:
        """``log(1 + count)`` per item: the model's real-time popularity feature."""
        return np.log1p(self.counts)


class Cooccurrence:
    """Item-to-item: score of ``j`` = sum over the user's last ``query_len`` items ``h`` of ``C[h, j]``.

    ``C[a, b]`` counts users who acted on both ``a`` and ``b``, the later one within ``window`` of
    the user's actions after the earlier one (``window=None``: anywhere in the history). That is
    the "customers who bought this also bought" table (Linden et al. 2003) without normalisation.

    The query reads the user's items as the deployed system had applied them when asked
    (:attr:`EvalBatch.applied_recent`), as a co-occurrence recommender running in the same
    system would; ``exact_history`` reads every earlier item instead, even those of the same
    slice of a micro-batch, an oracle no live system has (variant ``cooccurrence_exact``; the runner also
    excludes the user's items as of the target itself for it).
    """

    def __init__(self, n_items: int, query_len: int = 5, window: int | None = None,
                 exact_history: bool = False) -> None:
        if n_items > MAX_COOCCURRENCE_ITEMS:
            raise ValueError(f"{n_items} items: the dense co-occurrence table stops at {MAX_COOCCURRENCE_ITEMS}")
        self.query_len, self.window, self.exact_history = query_len, window, exact_history
        self.name = "cooccurrence_exact" if exact_history else "cooccurrence"
        self.table = np.zeros((n_items, n_items), dtype=np.float32)

    def scores(self, batch: EvalBatch) -> np.ndarray:
        recent = (batch.recent if self.exact_history else batch.applied_recent)[:, -self.query_len:]
        valid = recent >= 0
        rows = self.table[np.where(valid, recent, 0)] * valid[:, :, None]
        return rows.sum(axis=1)

    def learn(self, batch: EvalBatch) -> None:
        rows, history = batch.histories(self.window)
        targets = batch.items[rows]
        np.add.at(self.table, (history, targets), 1.0)
        np.add.at(self.table, (targets, history), 1.0)
