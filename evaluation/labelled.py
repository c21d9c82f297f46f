"""Prequential AUC and log loss of the ranking head's click predictions (streams with impressions).

The trainer predicts every example's click probability before it updates on the batch and hands
those predictions to its metrics (``TrainerMetrics.observe_batch``, the source of the live
``rtrec_trainer_auc``). :func:`record_predictions` wraps that one call of a trainer so the whole
stream's predictions are kept, without changing how the trainer learns.

>>> log_ = LabelledLog()
>>> log_.add(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1.0, 0.0, 1.0, 0.0]))
>>> log_.summary()
{'examples': 4, 'positives': 2, 'auc': 1.0, 'log_loss': 0.3375}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtrec.recipe.trainer import binary_auc

__all__ = ["LabelledLog", "record_predictions"]

_EPS = 1e-7


@dataclass
class LabelledLog:
    """Click predictions (made before the update) and their labels, batch after batch."""

    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.scores.append(np.asarray(scores, dtype=np.float64).copy())
        self.labels.append(np.asarray(labels, dtype=np.float64).copy())

    def summary(self) -> dict[str, float]:
        """Examples, positives, AUC and mean log loss over every prediction logged."""
        p = np.concatenate(self.scores) if self.scores else np.zeros(0)
        y = np.concatenate(self.labels) if self.labels else np.zeros(0)
        if p.size == 0:
            return {"examples": 0, "positives": 0, "auc": float("nan"), "log_loss": float("nan")}
        q = np.clip(p, _EPS, 1 - _EPS)
        loss = -(y * np.log(q) + (1 - y) * np.log(1 - q)).mean()
        return {"examples": int(p.size), "positives": int((y > 0).sum()), "auc": round(binary_auc(p, y), 4),
                "log_loss": round(float(loss), 4)}


class _Recording:
    """Forwards everything to the trainer's metrics; also logs each batch's predictions."""

    def __init__(self, inner: Any, log_: LabelledLog) -> None:
        self._inner, self._log = inner, log_

    def observe_batch(self, stats: Any, scores: np.ndarray, labels: np.ndarray) -> None:
        self._log.add(scores, labels)
        self._inner.observe_batch(stats, scores, labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def record_predictions(trainer: Any) -> LabelledLog:
    """Start logging ``trainer``'s (an :class:`~rtrec.recipe.trainer.OnlineTrainer`) click predictions."""
    log_ = LabelledLog()
    trainer.metrics = _Recording(trainer.metrics, log_)
    return log_
