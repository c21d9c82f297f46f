"""The training step of a worker: the joiner's examples → example batches → one trainer update.

Joined impressions train as they are (label = an action followed); positive-only actions
(ratings, clicks with no impression) get ``negatives_per_positive`` sampled negatives with log-Q
correction. Each example sees the user's recent items as they were before this batch.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

from rtrec.events import Event
from stream_workers.examples import ExampleBatch, RecentItems
from stream_workers.joiner import LabelledExample
from stream_workers.negatives import NegativeSampler, add_sampled_negatives
from stream_workers.trainer import OnlineTrainer, TrainStats

log = logging.getLogger(__name__)


class TrainingStep:
    """Callable used by :class:`stream_workers.pipeline.BatchPipeline` to train on a batch."""

    def __init__(self, trainer: OnlineTrainer, negatives_per_positive: int = 4,
                 recent: RecentItems | None = None, sampler: NegativeSampler | None = None) -> None:
        self.trainer = trainer
        self.negatives_per_positive = negatives_per_positive
        self.recent = recent or RecentItems()
        self.sampler = sampler or NegativeSampler()

    def __call__(self, examples: Sequence[LabelledExample], events: Sequence[Event],
                 offsets: Mapping[str, Mapping[int, int]] | None = None) -> TrainStats | None:
        """Train on ``examples``; ``events`` (the whole batch) update the users' recent items after."""
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
        return self.trainer.train_many(batch, offsets=offsets)
