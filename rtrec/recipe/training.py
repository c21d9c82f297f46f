"""The training step of a worker: events → point-in-time inputs → the joiner's examples → one update.

Per micro-batch, before the batch is applied to the feature store:

1. :meth:`TrainingStep.snapshot` reads, for every impression and every positive-only action of
   the batch, the user's recent items and the pair's real-time features as they are *now* --
   what serving saw when it ranked that impression. The joiner keeps them with the pending
   impression, so its click, its final labels and its negative all carry the same inputs
   (point-in-time, as Monolith logs features at serving time), never values from after the label;
2. :meth:`TrainingStep.prepare` turns the joiner's examples into one :class:`ExampleBatch`:
   impression examples as they are, positive-only actions with ``negatives_per_positive`` sampled
   negatives (their own item features read at once, still before the batch is applied);
3. :meth:`TrainingStep.fit` is one trainer update.

With a :class:`~features.reader.FeatureReader` the recent items are the feature store's (the list
serving reads, first :data:`~rtrec.recipe.examples.RECENT_FOR_TOWER`); without one (unit tests,
benchmarks of the trainer alone) an in-memory :class:`RecentItems` stands in and real-time
features are absent.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from features.reader import FeatureReader
from features.realtime import read_realtime_features
from rtrec.events import Event
from rtrec.recipe.examples import RECENT_FOR_TOWER, ExampleBatch, RecentItems, labels_of
from rtrec.recipe.joiner import DEFAULT_LABEL_ACTIONS, POSITIVE_ONLY_ACTIONS, LabelledExample
from rtrec.recipe.negatives import NegativeSampler, add_sampled_negatives, add_softmax_candidates
from rtrec.recipe.trainer import OnlineTrainer, TrainStats

log = logging.getLogger(__name__)

__all__ = ["PointInTime", "TrainingStep", "SOFTMAX_CANDIDATES"]

#: Items drawn from the negative sampler per batch as extra candidates of the towers' softmax.
SOFTMAX_CANDIDATES = 512
#: Experience replay: up to this many earlier example batches, drawn from the last
#: ``REPLAY_WINDOW``, are trained again with each new one while the step stays under
#: ``REPLAY_MAX_ROWS`` rows -- small live batches leave the trainer idle, a burst of large ones
#: (catching up on lag) trains only the new examples.
REPLAY_BATCHES = 2
REPLAY_WINDOW = 200
REPLAY_MAX_ROWS = 2048


@dataclass(frozen=True)
class PointInTime:
    """The inputs of one event as of its arrival: the user's recent items and its dense features."""

    recent: tuple[str, ...]
    dense: np.ndarray | None


class TrainingStep:
    """Used by :class:`stream_workers.pipeline.BatchPipeline` (and ``rtrec eval``) to train on a batch."""

    def __init__(self, trainer: OnlineTrainer, negatives_per_positive: int = 4,
                 recent: RecentItems | None = None, sampler: NegativeSampler | None = None,
                 reader: FeatureReader | None = None, softmax_candidates: int = SOFTMAX_CANDIDATES,
                 replay_batches: int = REPLAY_BATCHES, seed: int = 0) -> None:
        self.trainer = trainer
        self.softmax_candidates = softmax_candidates
        self.replay_batches = replay_batches
        self._replay: deque[ExampleBatch] = deque(maxlen=REPLAY_WINDOW)
        self._rng = np.random.default_rng(seed)
        self.reader = reader
        self.negatives_per_positive = negatives_per_positive
        self.recent = recent or RecentItems(size=RECENT_FOR_TOWER)
        self.sampler = sampler or NegativeSampler()

    def snapshot(self, events: Sequence[Event]) -> list[PointInTime | None]:
        """Point-in-time inputs of each impression and positive-only action (None for the others).

        Call before the events are applied to the feature store (one Redis round trip each for
        recent items and real-time features).
        """
        rows = [n for n, e in enumerate(events) if _needs_inputs(e)]
        out: list[PointInTime | None] = [None] * len(events)
        if rows:
            users = [events[n].user_id for n in rows]
            recent = self._recent(users)
            dense = self._dense(users, [events[n].item_id for n in rows])
            for k, n in enumerate(rows):  # per row: one small object each
                out[n] = PointInTime(tuple(recent[k]), None if dense is None else dense[k])
        if self.reader is None:
            self.recent.add_many(events)  # the in-memory stand-in for the feature store's list
        return out

    def prepare(self, examples: Sequence[LabelledExample]) -> ExampleBatch | None:
        """The example batch of the joiner's ``examples`` (inputs as their snapshots said)."""
        batches = []
        joined = [x for x in examples if x.joined]
        if joined:
            batches.append(self._batch(joined, labels_of(joined)))
        positives = [x for x in examples if not x.joined]
        if positives:
            batches.append(self._with_negatives(positives))
        if not batches:
            return None
        batch = batches[0] if len(batches) == 1 else ExampleBatch.concat(batches)
        batch = self._with_replay(batch)
        return add_softmax_candidates(batch, self.sampler, self.softmax_candidates)

    def fit(self, batch: ExampleBatch, offsets: Mapping[str, Mapping[int, int]] | None = None) -> TrainStats:
        """One trainer update; ``offsets`` travel with the push into parameter-server snapshots."""
        return self.trainer.train_many(batch, offsets=offsets)

    def train_events(self, joiner: Any, events: Sequence[Event],
                     offsets: Mapping[str, Mapping[int, int]] | None = None) -> TrainStats | None:
        """snapshot → join → prepare → fit, for callers that do not interleave the feature write."""
        batch = self.prepare(joiner.add_many(events, None, self.snapshot(events)))
        return None if batch is None else self.fit(batch, offsets)

    # -- internals -----------------------------------------------------------------------------

    def _with_replay(self, batch: ExampleBatch) -> ExampleBatch:
        """``batch`` plus earlier batches drawn from the replay window (see :data:`REPLAY_BATCHES`)."""
        past: list[ExampleBatch] = []
        rows = len(batch)
        if self._replay and self.replay_batches > 0:
            for k in self._rng.integers(len(self._replay), size=self.replay_batches).tolist():
                if rows + len(self._replay[k]) > REPLAY_MAX_ROWS:
                    break
                past.append(self._replay[k])
                rows += len(self._replay[k])
        self._replay.append(batch)
        if not past:
            return batch
        fresh = replace(batch, replayed=np.zeros(len(batch), dtype=bool))
        return ExampleBatch.concat([fresh, *(replace(b, replayed=np.ones(len(b), dtype=bool)) for b in past)])

    def _batch(self, examples: Sequence[LabelledExample], labels: np.ndarray) -> ExampleBatch:
        inputs = [x.features if isinstance(x.features, PointInTime) else None for x in examples]
        recent = [list(p.recent) if p is not None else [] for p in inputs]
        batch = ExampleBatch.from_events([x.event for x in examples], labels, recent)
        if self.reader is None:
            return batch
        dense = np.zeros((len(examples), self.trainer.model.config.n_dense), dtype=np.float32)
        for n, p in enumerate(inputs):  # per row: copy of a small vector
            if p is not None and p.dense is not None:
                dense[n] = p.dense
        return batch.with_dense(dense)

    def _with_negatives(self, positives: Sequence[LabelledExample]) -> ExampleBatch:
        """Positive-only rows with sampled negatives; a negative's item features are read now."""
        stream = self._batch(positives, labels_of(positives))
        dense = stream.dense
        batch = add_sampled_negatives(replace(stream, dense=None), self.sampler, self.negatives_per_positive)
        if dense is None:
            return batch
        negatives = batch.sampled
        extra = self._dense(batch.users[negatives].astype(str).tolist(), batch.items[negatives].astype(str).tolist())
        full = np.zeros((len(batch), dense.shape[1]), dtype=np.float32)
        full[~negatives] = dense
        if extra is not None:
            full[negatives] = extra
        return batch.with_dense(full)

    def _recent(self, users: list[str]) -> list[list[str]]:
        if self.reader is None:
            return self.recent.lookup_many(users)
        return self.reader.recent_items_many(users, limit=RECENT_FOR_TOWER)

    def _dense(self, users: list[str], items: list[str]) -> np.ndarray | None:
        if self.reader is None:
            return None
        if not users:
            return np.zeros((0, self.trainer.model.config.n_dense), dtype=np.float32)
        return read_realtime_features(self.reader, users, items)


def _needs_inputs(event: Event) -> bool:
    """Impressions the joiner holds, and actions that become positive-only examples."""
    if event.action == "impression":
        return event.request_id is not None
    joinable = event.action in DEFAULT_LABEL_ACTIONS and event.request_id is not None
    return event.action in POSITIVE_ONLY_ACTIONS and not joinable

