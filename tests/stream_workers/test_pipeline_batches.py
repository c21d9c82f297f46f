"""A micro-batch through the pipeline: a retried batch trains exactly what a first-time success would,
and an impression's examples carry the inputs of the instant it was served."""

from __future__ import annotations

import numpy as np
import pytest

from features.writer import WriteResult
from param_server.store import ParamStore
from producers.client import encode_event
from rtrec.events import Event
from rtrec.recipe.examples import ExampleBatch
from rtrec.recipe.joiner import Joiner
from rtrec.recipe.trainer import OnlineTrainer
from rtrec.recipe.training import TrainingStep
from stream_workers.pipeline import BatchPipeline


class Writer:
    """The feature writer's interface; fails the first ``failures`` calls (Redis away)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures

    def write_many(self, events: list[Event]) -> WriteResult:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis away")
        return WriteResult(applied=len(events), duplicates=0)


class Recording(TrainingStep):
    """The real training step; records every batch it fits, and fails the first ``failures`` fits."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__(OnlineTrainer(ParamStore()))
        self.fitted: list[ExampleBatch] = []
        self.failures = failures

    def fit(self, batch, offsets=None):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise ConnectionError("shard away")
        self.fitted.append(batch)
        return super().fit(batch, offsets)


BATCHES = [
    [Event("1", "u", "a", "impression", 1.0, request_id="r1"), Event("2", "u", "b", "impression", 1.0, request_id="r1"),
     Event("3", "v", "c", "rating", 1.0, value=4.0)],
    [Event("4", "u", "a", "click", 5.0, request_id="r1"), Event("5", "v", "d", "rating", 6.0, value=5.0)],
    [Event("6", "w", "z", "impression", 100.0, request_id="r2")],
]


def _run(writer: Writer, step: Recording) -> list[ExampleBatch]:
    pipeline = BatchPipeline(writer, Joiner(window_s=60), step)  # type: ignore[arg-type]
    for n, events in enumerate(BATCHES):
        values = [encode_event(e) for e in events]
        starts = {"actions": {0: 10 * n}}
        while True:  # the worker's retry loop: the same batch until it succeeds
            try:
                pipeline.process(values, {"actions": {0: 10 * n + len(values)}}, starts)
                break
            except ConnectionError:
                continue
    return step.fitted


def _rows(batch: ExampleBatch) -> list[tuple]:
    return sorted(zip(batch.users.tolist(), batch.items.tolist(), np.nan_to_num(batch.labels, nan=-1).tolist(),
                      batch.recent.tolist(), batch.sampled.tolist() if batch.sampled is not None else [None] * len(batch)),
                  key=repr)


def _labelled(batch: ExampleBatch) -> list[tuple]:
    """(user, item, labels, recent items) of the batch's own positives (not replayed, not sampled)."""
    own = [n for n in range(len(batch)) if not (batch.replayed is not None and batch.replayed[n])
           and np.nan_to_num(batch.labels[n]).max() > 0]
    return sorted((str(batch.users[n]), str(batch.items[n]), np.nan_to_num(batch.labels[n], nan=-1).tolist(),
                   batch.recent[n].tolist()) for n in own)


@pytest.mark.parametrize("writer_failures, fit_failures", [(1, 0), (0, 1), (2, 2)])
def test_a_retried_batch_trains_exactly_the_examples_of_a_batch_that_succeeds_at_once(writer_failures: int,
                                                                                       fit_failures: int) -> None:
    reference = _run(Writer(), Recording())
    retried = _run(Writer(writer_failures), Recording(fit_failures))
    assert len(retried) == len(reference) == 3
    for got, want in zip(retried, reference):
        assert _rows(got) == _rows(want)
    clicked = [r for r in _rows(reference[1]) if r[1] == "a"]
    assert clicked and clicked[0][2][0] == 1.0  # the click found its impression


def test_an_impressions_examples_carry_the_inputs_of_the_instant_it_was_served() -> None:
    step = Recording()
    pipeline = BatchPipeline(Writer(), Joiner(window_s=60), step)  # type: ignore[arg-type]
    batches = [[Event("1", "u", "a", "impression", 1.0, request_id="r1"),
                Event("2", "u", "b", "impression", 1.0, request_id="r1")],
               [Event("3", "u", "a", "click", 5.0, request_id="r1"), Event("4", "u", "y", "purchase", 6.0)],
               [Event("5", "w", "z", "impression", 100.0, request_id="r2")]]
    for events in batches:
        pipeline.process([encode_event(e) for e in events])
    impression_rows = [(str(b.items[n]), b.recent[n].tolist()) for b in step.fitted for n in range(len(b))
                       if b.users[n] == "u" and b.items[n] in ("a", "b") and b.weights[n] > 0
                       and not (b.replayed is not None and b.replayed[n])]
    # the click on "a" (batch 2), its final labels and the negative "b" (batch 3) all see the user as
    # served: no recent items yet, neither the click on "a" nor the purchase of "y" that came after
    assert sorted(impression_rows) == [("a", [""]), ("a", [""]), ("b", [""])]


def test_staged_slices_write_features_at_once_and_train_together_with_their_offsets() -> None:
    written: list[int] = []

    class Counting(Writer):
        def write_many(self, events: list[Event]) -> WriteResult:
            written.append(len(events))
            return super().write_many(events)

    step = Recording(failures=1)
    offsets: list[object] = []
    fit = step.fit
    step.fit = lambda batch, ends=None: (offsets.append(ends), fit(batch, ends))[1]  # type: ignore[method-assign]
    pipeline = BatchPipeline(Counting(), Joiner(window_s=60), step)  # type: ignore[arg-type]
    first, second = BATCHES[0], BATCHES[1]
    staged = pipeline.process([encode_event(e) for e in first], {"actions": {0: 3}}, {"actions": {0: 0}},
                              train=False)
    assert not staged.trained and step.fitted == [] and written == [3]  # features now, training later
    pipeline.process([encode_event(e) for e in second], {"actions": {1: 7}}, {"actions": {1: 5}}, train=False)
    assert written == [3, 2]
    with pytest.raises(ConnectionError):  # the shard is away: nothing staged is lost
        pipeline.process([], train=True)
    result = pipeline.process([], train=True, attempt=1)
    assert result.trained and len(step.fitted) == 1
    reference = _run(Writer(), Recording())
    # one batch holding the positives of both slices: what the two batches trained, in one
    assert len(_labelled(step.fitted[0])) >= 2
    assert _labelled(step.fitted[0]) == sorted(_labelled(reference[0]) + _labelled(reference[1]))
    assert offsets[-1] == {"actions": {0: 3, 1: 7}}  # the offsets both slices brought the consumer to
    pipeline.process([], train=True)
    assert len(step.fitted) == 1  # nothing staged any more: nothing to train
