"""Ranking metrics of one target per event, and their running aggregates overall and per period.

With ``r`` the 1-based rank of the target among the candidates (``inf`` when it is not one):

    HR@k   = [r <= k]                    (= Recall@k with one relevant item)
    NDCG@k = [r <= k] / log2(r + 1)      (the ideal DCG of one relevant item is 1)
    RR@k   = [r <= k] / r                (the ``mrr`` of a report is its mean: MRR@10)

The reciprocal rank is cut at ``k`` too, because serving returns only its top ``k``: a rank
beyond it is unknown for the served variants, so it counts 0 for every variant alike.

>>> r = np.array([1, 3, 11, np.inf])
>>> hit_rate(r, 10).tolist(), ndcg(r, 10).round(3).tolist(), reciprocal_rank(r, 10).round(3).tolist()
([1.0, 1.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0], [1.0, 0.333, 0.0, 0.0])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["hit_rate", "ndcg", "reciprocal_rank", "target_ranks", "list_ranks", "MetricLog", "METRIC_NAMES"]

METRIC_NAMES = ("hr@10", "ndcg@10", "mrr")


def hit_rate(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """``[r <= k]`` per event, as float."""
    return (np.asarray(ranks, dtype=np.float64) <= k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """``[r <= k] / log2(r + 1)`` per event."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = np.zeros(ranks.shape)
    hit = ranks <= k
    out[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return out


def reciprocal_rank(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """``[r <= k] / r`` per event (0 beyond ``k`` and for a target that was not a candidate)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / ranks, 0.0)


def target_ranks(scores: np.ndarray, targets: np.ndarray, candidates: np.ndarray,
                 tiebreak: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target among that row's candidates; ``inf`` if not a candidate.

    ``scores`` ``(B, n)``, ``candidates`` a boolean ``(B, n)`` mask, ``tiebreak`` ``(n,)`` distinct
    priorities: equal scores are ordered by them, i.e. ties are broken at random but the same way
    in every run with one seed (counting ties as wins or as losses would flatter or punish
    constant scorers like popularity early on).

    >>> s = np.array([[0.5, 0.9, 0.5, 0.1]])
    >>> target_ranks(s, np.array([2]), np.ones((1, 4), bool), np.array([3, 0, 1, 2])).tolist()
    [3.0]
    >>> target_ranks(s, np.array([2]), np.array([[1, 0, 1, 1]], bool), np.array([0, 1, 2, 3])).tolist()
    [1.0]
    """
    rows = np.arange(targets.size)
    own = scores[rows, targets][:, None]
    above = (scores > own) | ((scores == own) & (tiebreak[None, :] > tiebreak[targets][:, None]))
    ranks = 1.0 + (above & candidates).sum(axis=1)
    return np.where(candidates[rows, targets], ranks, np.inf)


def list_ranks(lists: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """1-based position of each target in its served list; ``inf`` when the list lacks it.

    >>> list_ranks([["a", "b"], ["c"]], ["b", "x"]).tolist()
    [2.0, inf]
    """
    out = np.full(len(targets), np.inf)
    for row, (names, target) in enumerate(zip(lists, targets)):  # lists of k: a short scan each
        if target in names:
            out[row] = list(names).index(target) + 1
    return out


@dataclass
class MetricLog:
    """Per-event metric values of one variant with their event times, summarised on demand."""

    ts: list[np.ndarray] = field(default_factory=list)
    ranks: list[np.ndarray] = field(default_factory=list)

    def add_many(self, ts: np.ndarray, ranks: np.ndarray) -> None:
        self.ts.append(np.asarray(ts, dtype=np.float64))
        self.ranks.append(np.asarray(ranks, dtype=np.float64))

    def values(self) -> dict[str, np.ndarray]:
        """Every metric per event, in event order."""
        ranks = np.concatenate(self.ranks) if self.ranks else np.zeros(0)
        return {"hr@10": hit_rate(ranks), "ndcg@10": ndcg(ranks), "mrr": reciprocal_rank(ranks)}

    def summary(self) -> dict[str, float]:
        """Means over all logged events (NaN when there are none)."""
        return {name: float(v.mean()) if v.size else float("nan") for name, v in self.values().items()}

    def over_time(self, period_s: float) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Means per event-time period: (period start times, metric -> means, events per period)."""
        ts = np.concatenate(self.ts) if self.ts else np.zeros(0)
        if ts.size == 0:
            return np.zeros(0), {name: np.zeros(0) for name in METRIC_NAMES}, np.zeros(0, np.int64)
        period = np.floor(ts / period_s).astype(np.int64)
        keys, inverse, counts = np.unique(period, return_inverse=True, return_counts=True)
        means = {name: np.bincount(inverse, weights=v) / counts for name, v in self.values().items()}
        return keys * period_s, means, counts
