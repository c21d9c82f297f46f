"""The training step of a worker: the joiner's examples → one example batch → one trainer update.

Joined impressions train as they are (label = an action followed); positive-only actions
(ratings, clicks with no impression) get ``negatives_per_positive`` sampled negatives with log-Q
correction. Each example sees the user's recent items and real-time features as they were before
this batch: :meth:`TrainingStep.prepare` runs before the batch is applied to Redis,
:meth:`TrainingStep.fit` after.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from features.reader import FeatureReader
from features.realtime import read_realtime_features
from rtrec.events import Event
from rtrec.recipe.examples import ExampleBatch, RecentItems
from rtrec.recipe.joiner import LabelledExample
from rtrec.recipe.negatives import NegativeSampler, add_sampled_negatives
from rtrec.recipe.trainer import OnlineTrainer, TrainStats

log = logging.getLogger(__name__)


class TrainingStep:
    """Callable used by :class:`stream_workers.pipeline.BatchPipeline` to train on a batch."""

    def __init__(self, trainer: OnlineTrainer, negatives_per_positive: int = 4,
                 recent: RecentItems | None = None, sampler: NegativeSampler | None = None,
                 reader: FeatureReader | None = None) -> None:
        self.trainer = trainer
        self.reader = reader
        self.negatives_per_positive = negatives_per_positive
        self.recent = recent or RecentItems()
        self.sampler = sampler or NegativeSampler()

    def __call__(self, examples: Sequence[LabelledExample], events: Sequence[Event],
                 offsets: Mapping[str, Mapping[int, int]] | None = None) -> TrainStats | None:
        """prepare + fit, for callers that do not interleave the feature write."""
        batch = self.prepare(examples, events)
        return None if batch is None else self.fit(batch, offsets)

    def fit(self, batch: ExampleBatch, offsets: Mapping[str, Mapping[int, int]] | None = None) -> TrainStats:
        """One trainer update; ``offsets`` travel with the push into parameter-server snapshots."""
        return self.trainer.train_many(batch, offsets=offsets)

    def prepare(self, examples: Sequence[LabelledExample], events: Sequence[Event]) -> ExampleBatch | None:
        """The example batch with recent items and real-time features as of before ``events``."""
        batches = []
        joined = [x for x in examples if x.joined]
        if joined:
            recent = self.recent.lookup_many([x.event.user_id for x in joined])
            batches.append(ExampleBatch.from_impressions([(x.event, x.label) for x in joined], recent=recent))
        positives = [x.event for x in examples if not x.joined]
        if positives:
            recent = self.recent.lookup_many([e.user_id for e in positives])
            batch = ExampleBatch.from_positives(positives, recent=recent)
            batches.append(add_sampled_negatives(batch, self.sampler, self.negatives_per_positive))
        self.recent.add_many(events)
        if not batches:
            return None
        batch = batches[0] if len(batches) == 1 else ExampleBatch.concat(batches)
        return batch if self.reader is None else batch.with_dense(self._dense(batch))

    def _dense(self, batch: ExampleBatch) -> np.ndarray:
        """Real-time features of every row (one Redis round trip)."""
        assert self.reader is not None
        return read_realtime_features(self.reader, batch.users.astype(str).tolist(), batch.items.astype(str).tolist())
