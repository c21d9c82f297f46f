"""Prequential AUC and log loss of click predictions on streams with impressions: the ranking head
as deployed, and a logistic regression on counts computed in the same pass.

The examples are the joiner's impression examples (``kind`` ``"click"`` or ``"negative"``: an
impression and whether it was clicked within the join window), each counted once, in the batch in
which the worker trains on it. Not counted: positive-only actions and their sampled negatives
(no impression was shown), the ``final`` examples (other heads), the softmax candidates, and the
earlier batches the training step replays with each new one (already learned from).

The model's predictions are the trainer's own: it predicts every example's click probability before
it updates on the batch and hands the predictions of the rows with a known click label to its
metrics (``TrainerMetrics.observe_batch``, the source of the live ``rtrec_trainer_auc``).
:func:`record_predictions` wraps that call and the training step's ``prepare`` of one
:class:`~rtrec.recipe.training.TrainingStep`, without changing how it learns, and keeps the
predictions of the impression examples. The baseline (:class:`CountsLR`) predicts the same
examples at the same moment (before the batch), then learns them.

>>> log_ = LabelledLog()
>>> log_.add(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1.0, 0.0, 1.0, 0.0]))
>>> log_.summary()
{'examples': 4, 'positives': 2, 'auc': 1.0, 'log_loss': 0.3375}
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from rtrec.events import Event
from rtrec.recipe.trainer import binary_auc

__all__ = ["CountsLR", "IMPRESSION_KINDS", "LabelledLog", "LabelledRun", "record_predictions"]

log = logging.getLogger(__name__)

_EPS = 1e-7
#: The joiner's example kinds that are an impression with its click label.
IMPRESSION_KINDS = frozenset({"click", "negative"})


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


class CountsLR:
    """Logistic regression on counts known before each example, learned online (AdaGrad per batch).

    ``logit p = logit(g) + b + w . x``: ``g`` is the click rate of every example learned so far
    (smoothed, an offset so an untrained model predicts the base rate), and ``x`` holds, for the
    item, the user (context key) and the (user, item category) pair: ``log1p`` of their examples so
    far and the log-odds of their smoothed click rate relative to ``g`` (``(clicks + m g) / (n + m)``,
    ``m`` = :attr:`prior`); plus a one-hot of the impression's ``position`` (``context``) if it
    has one. :meth:`predict` then :meth:`learn` on each batch: prequential.

    >>> lr = CountsLR()
    >>> hot, cold = Event("1", "u", "hot", "impression", 0.0), Event("2", "u", "cold", "impression", 0.0)
    >>> for _ in range(50):
    ...     p = lr.predict([hot, cold]); lr.learn([hot, cold], np.array([1.0, 0.0]))
    >>> p = lr.predict([hot, cold]); bool(p[0] > 0.8 > 0.2 > p[1])
    True
    """

    POSITIONS = 8
    N_FEATURES = 3 * 2 + POSITIONS

    def __init__(self, lr: float = 0.1, prior: float = 20.0) -> None:
        self.lr, self.prior = lr, prior
        self.w = np.zeros(self.N_FEATURES + 1)  # last: the bias b
        self._g2 = np.full(self.N_FEATURES + 1, 1e-8)
        self.n = 0.0
        self.clicks = 0.0
        self._counts: list[defaultdict[str, list[float]]] = [defaultdict(lambda: [0.0, 0.0]) for _ in range(3)]

    def _keys(self, e: Event) -> tuple[str, str, str]:
        category = str((e.item or {}).get("category", ""))
        return e.item_id, e.user_id, f"{e.user_id}\x00{category}"

    def _base(self) -> float:
        """The smoothed click rate of everything learned so far."""
        return (self.clicks + 0.5) / (self.n + 1.0)

    def features(self, events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray]:
        """``(x, offset)``: the features of each event (with a trailing 1) and ``logit(g)``."""
        g = self._base()
        logit_g = np.log(g / (1 - g))
        x = np.zeros((len(events), self.N_FEATURES + 1))
        x[:, -1] = 1.0
        for row, e in enumerate(events):  # per example: three dict lookups
            for k, key in enumerate(self._keys(e)):
                n, c = self._counts[k].get(key, (0.0, 0.0))
                rate = (c + self.prior * g) / (n + self.prior)
                x[row, 2 * k] = np.log1p(n)
                x[row, 2 * k + 1] = np.log(rate / (1 - rate)) - logit_g
            position = (e.context or {}).get("position")
            if position is not None:
                try:
                    x[row, 6 + int(float(position)) % self.POSITIONS] = 1.0
                except ValueError:
                    pass
        return x, np.full(len(events), logit_g)

    def predict(self, events: Sequence[Event]) -> np.ndarray:
        x, offset = self.features(events)
        return 1.0 / (1.0 + np.exp(-(offset + x @ self.w)))

    def learn(self, events: Sequence[Event], labels: np.ndarray) -> None:
        """One AdaGrad step on the batch's mean log loss, then count the batch."""
        if not len(events):
            return
        labels = np.asarray(labels, dtype=np.float64)
        x, offset = self.features(events)
        p = 1.0 / (1.0 + np.exp(-(offset + x @ self.w)))
        grad = x.T @ (p - labels) / len(events)
        self._g2 += grad ** 2
        self.w -= self.lr * grad / np.sqrt(self._g2)
        for e, y in zip(events, labels.tolist()):
            for k, key in enumerate(self._keys(e)):
                counts = self._counts[k][key]
                counts[0] += 1.0
                counts[1] += y
        self.n += len(events)
        self.clicks += float(labels.sum())


@dataclass
class LabelledRun:
    """The model's and the counts baseline's predictions of the same impression examples."""

    model: LabelledLog = field(default_factory=LabelledLog)
    counts_lr: LabelledLog = field(default_factory=LabelledLog)
    baseline: CountsLR = field(default_factory=CountsLR)

    def observe(self, events: Sequence[Event], scores: np.ndarray, labels: np.ndarray) -> None:
        """One batch's impression examples: the model's predictions, the baseline's, then it learns."""
        if not len(events):
            return
        self.model.add(scores, labels)
        self.counts_lr.add(self.baseline.predict(events), labels)
        self.baseline.learn(events, labels)

    def summary(self) -> dict[str, dict[str, float]]:
        return {"model": self.model.summary(), "counts_lr": self.counts_lr.summary()}


@dataclass
class _Selection:
    """Which of a prepared batch's click predictions are impression examples, and their events."""

    batch: Any
    positions: np.ndarray  # indices into the trainer's click-known predictions of the batch
    events: list[Event]
    labels: np.ndarray


class _Recorder:
    """Forwards everything to the trainer's metrics; keeps the predictions of impression examples."""

    def __init__(self, inner: Any, run: LabelledRun) -> None:
        self._inner, self._run = inner, run
        self._pending: dict[int, _Selection] = {}
        self._current: _Selection | None = None

    def select(self, examples: Sequence[Any], batch: Any) -> None:
        """After ``prepare``: the batch's impression rows (its first rows are the joined examples)."""
        if batch is None:
            return
        joined = [x for x in examples if x.joined]
        click_known = ~np.isnan(batch.labels[:, 0]) & (batch.weights > 0)  # as the trainer masks them
        rows = [r for r, x in enumerate(joined) if x.kind in IMPRESSION_KINDS and click_known[r]]
        for r in rows:  # the row order of TrainingStep.prepare: joined examples first, in order
            if str(batch.items[r]) != joined[r].event.item_id or str(batch.users[r]) != joined[r].event.user_id:
                raise RuntimeError("TrainingStep.prepare no longer puts the joined examples first; "
                                   "evaluation.labelled cannot tell impression rows apart")
        positions = (np.cumsum(click_known) - 1)[rows] if rows else np.zeros(0, dtype=np.int64)
        selection = _Selection(batch, positions, [joined[r].event for r in rows],
                               batch.labels[rows, 0].astype(np.float64))
        if len(self._pending) > 8:  # a batch that failed and was never retried
            self._pending.pop(next(iter(self._pending)))
        self._pending[id(batch)] = selection

    def training(self, batch: Any) -> None:
        self._current = self._pending.get(id(batch))
        if self._current is not None and self._current.batch is not batch:
            self._current = None

    def observe_batch(self, stats: Any, scores: np.ndarray, labels: np.ndarray) -> None:
        sel, self._current = self._current, None
        if sel is not None:
            self._pending.pop(id(sel.batch), None)
            picked = np.asarray(scores)[sel.positions]
            if not np.array_equal(np.asarray(labels)[sel.positions], sel.labels):
                raise RuntimeError("the trainer's click labels do not line up with the impression examples")
            self._run.observe(sel.events, picked, sel.labels)
        self._inner.observe_batch(stats, scores, labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def record_predictions(step: Any) -> LabelledRun:
    """Start logging the impression examples' click predictions of ``step`` (a
    :class:`~rtrec.recipe.training.TrainingStep`, e.g. ``TrainedSystem.pipeline.train``) and of a
    :class:`CountsLR` fed the same examples in the same order."""
    run = LabelledRun()
    trainer = step.trainer
    recorder = _Recorder(trainer.metrics, run)
    trainer.metrics = recorder
    prepare, train_many = step.prepare, trainer.train_many

    def prepare_and_select(examples: Sequence[Any]) -> Any:
        batch = prepare(examples)
        recorder.select(examples, batch)
        return batch

    def train_selected(batch: Any, *args: Any, **kwargs: Any) -> Any:
        recorder.training(batch)
        try:
            return train_many(batch, *args, **kwargs)
        finally:
            recorder._current = None

    step.prepare = prepare_and_select
    trainer.train_many = train_selected
    return run
