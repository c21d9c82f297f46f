"""One micro-batch through the worker: validate → features → join → train.

Plain synchronous code with no Kafka in it, so it is tested without a broker; the Faust app
(``stream_workers/app.py``) only feeds it batches and ships the dead letters.

The trainer's example batch (with real-time features read as they were before this batch) is
prepared first; then the Redis write runs in a helper thread while the trainer works: the feature
script executes inside Redis (another process, another core), so the two overlap instead of
adding up. If the write fails after training, the batch is retried whole: training is
at-least-once, feature effects stay exactly-once (event_id idempotency).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from contextlib import nullcontext
from typing import Any, Mapping, Protocol, Sequence

from features.writer import FeatureWriter, WriteResult
from rtrec.events import Event, action_label
from stream_workers import metrics
from rtrec.recipe.joiner import Joiner, LabelledExample
from stream_workers.validation import DeadLetter, split_batch

log = logging.getLogger(__name__)

class Trainer(Protocol):
    """What the pipeline trains with (:class:`rtrec.recipe.training.TrainingStep`)."""

    def prepare(self, examples: list[LabelledExample], events: list[Event]) -> Any: ...

    def fit(self, batch: Any, offsets: Mapping[str, Mapping[int, int]] | None) -> object: ...


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    events: int
    dead_letters: list[DeadLetter]
    features: WriteResult
    examples: int


class BatchPipeline:
    """Processes consumed message values; ``train`` receives the examples the joiner completed."""

    def __init__(self, writer: FeatureWriter, joiner: Joiner, train: Trainer | None = None,
                 recovery: Any | None = None) -> None:
        self.writer = writer
        self.joiner = joiner
        self.train = train
        self.recovery = recovery  # stream_workers.recovery.Recovery: replays what a restarted shard lost
        self._redis_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-writer")

    def process(self, values: Sequence[bytes | None],
                offsets: Mapping[str, Mapping[int, int]] | None = None,
                starts: Mapping[str, Mapping[int, int]] | None = None) -> BatchResult:
        """Apply a batch; raises only if Redis or training fail (then the batch is not committed).

        ``offsets`` (topic → partition → next offset) are what this batch brings the consumer to;
        they travel with the gradient push so parameter-server snapshots record them. ``starts``
        (the batch's first offsets) tell recovery where a replay for a restarted shard ends.
        """
        start = time.perf_counter()
        events, dead = split_batch(values)
        counts = _count_actions(events)
        for action, n in counts.items():
            metrics.EVENTS_CONSUMED.labels(action).inc(n)
        try:
            return self._process(values, events, dead, counts, offsets, starts, start)
        except Exception:
            metrics.BATCH_FAILURES.inc()  # the caller logs it and retries the batch
            raise

    def _process(self, values: Sequence[bytes | None], events: list[Event], dead: list[DeadLetter],
                 counts: Mapping[str, int], offsets: Mapping[str, Mapping[int, int]] | None,
                 starts: Mapping[str, Mapping[int, int]] | None, start: float) -> BatchResult:
        replayed = self.recovery.before_batch(offsets, starts) if self.recovery is not None else frozenset()
        examples = self.joiner.add_many(events)
        batch = self.train.prepare(examples, events) if self.train is not None else None  # features before this batch
        writing = self._redis_thread.submit(self.writer.write_many, events)
        try:
            if batch is not None:
                with self.recovery.pushing_to_all_but(replayed) if replayed else nullcontext():
                    self.train.fit(batch, offsets)  # type: ignore[union-attr]
        finally:
            written = writing.result()  # re-raises a Redis error: the batch is then retried
        self._observe(events, counts, dead, examples, time.perf_counter() - start, len(values))
        metrics.JOINER_PENDING.set(self.joiner.pending)
        return BatchResult(len(events), dead, written, len(examples))

    @staticmethod
    def _observe(events: list[Event], counts: Mapping[str, int], dead: list[DeadLetter],
                 examples: list[LabelledExample], seconds: float, size: int) -> None:
        for action, n in counts.items():
            metrics.EVENTS_PROCESSED.labels(action).inc(n)
        for letter in dead:  # dead letters are rare: a second look at each is cheap
            metrics.EVENTS_DEAD_LETTERED.labels(metrics.dead_letter_action(letter.raw)).inc()
        positives = sum(1 for x in examples if x.label > 0)
        metrics.EXAMPLES.labels("positive").inc(positives)
        metrics.EXAMPLES.labels("negative").inc(len(examples) - positives)
        metrics.BATCH_SIZE.observe(size)
        metrics.BATCH_SECONDS.observe(seconds)
        if events:
            metrics.EVENT_LAG.set(time.time() - max(e.ts for e in events))


def _count_actions(events: Sequence[Event]) -> dict[str, int]:
    """Events per action label (bounded: unknown actions count as ``other``)."""
    counts: dict[str, int] = {}
    for e in events:  # one dict update per event; the JSON parse before it costs far more
        label = action_label(e.action)
        counts[label] = counts.get(label, 0) + 1
    return counts
