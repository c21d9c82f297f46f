"""Worker metrics are counted where the batch runs: retries in the process that runs the pipeline
(the one serving the metrics), and consumer lag only for the partitions assigned to this worker."""

from __future__ import annotations

import asyncio

import pytest
from faust.types import TP
from prometheus_client import REGISTRY, CollectorRegistry

from features.writer import WriteResult
from rtrec.events import Event, encode_event
from rtrec.recipe.joiner import Joiner
from stream_workers import app as worker_app
from stream_workers.app import _process_with_retry, assigned_partitions, send_assignment
from stream_workers.batch_frames import decode_batch_request, decode_result, encode_request
from stream_workers.metrics import ConsumerLagMonitor, owned_lag
from stream_workers.pipeline import BatchPipeline, BatchResult
from stream_workers.pipeline_process import PipelineError, answer
from tests.stream_workers.test_pipeline_batches import Writer

RETRIES = "rtrec_worker_batch_retries_total"
LAG = "rtrec_worker_consumer_lag_messages"




def retries() -> float:
    return REGISTRY.get_sample_value(RETRIES) or 0.0


def lag_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {(s.labels["topic"], s.labels["partition"]): s.value
            for f in registry.collect() for s in f.samples if s.name == LAG}


# ---------------------------------------------------------------------------------------------
# retries


def test_a_retried_batch_is_counted_by_the_pipeline_that_runs_it() -> None:
    pipeline = BatchPipeline(Writer(failures=1), Joiner())  # type: ignore[arg-type]
    values = [encode_event(Event("r1", "u", "i", "click", 1.0))]
    before = retries()
    with pytest.raises(ConnectionError):
        pipeline.process(values, attempt=0)
    assert retries() == before  # a first attempt is no retry, even when it fails
    pipeline.process(values, attempt=1)
    assert retries() == before + 1


def test_the_faust_side_numbers_its_attempts_and_counts_nothing_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_app, "RETRY_BACKOFF_S", (0.0,))

    class Flaky:
        """A pipeline whose first two attempts fail like a Redis outage; records what it was given."""

        def __init__(self) -> None:
            self.calls: list[tuple[int, list[tuple[str, int]] | None]] = []

        def process(self, values, offsets=None, starts=None, partitions=None, *, attempt=0, assignment=None,
                    message_offsets=None, train=True):
            self.calls.append((attempt, assignment))
            if len(self.calls) < 3:
                raise ConnectionError("redis away")
            return BatchResult(len(values), [], WriteResult(len(values), 0), 0)

    flaky = Flaky()
    assignments = iter([[("actions", 0), ("actions", 1)], [("actions", 1)], [("actions", 1)]])
    before = retries()
    asyncio.run(_process_with_retry(flaky, [b"x"], {}, {}, [0], lambda: next(assignments)))  # type: ignore[arg-type]
    # each attempt carries its number and the assignment read just before it (a rebalance between)
    assert flaky.calls == [(0, [("actions", 0), ("actions", 1)]), (1, [("actions", 1)]), (2, [("actions", 1)])]
    assert retries() == before  # counted by the pipeline (here a fake), not by the Faust process


def test_attempt_and_assignment_travel_in_the_request_frame() -> None:
    request = decode_batch_request(encode_request([b"a", None], {"actions": {2: 8}}, {"actions": {2: 6}}, [2, 2],
                                                  attempt=3, assignment={("actions", 2), ("actions", 0)}))
    assert (request.values, request.partitions, request.attempt) == ([b"a", None], [2, 2], 3)
    assert request.assignment == [("actions", 0), ("actions", 2)]
    unknown = decode_batch_request(encode_request([b"a"], None))
    assert (unknown.attempt, unknown.assignment, unknown.train) == (0, None, True)
    assert not decode_batch_request(encode_request([b"a"], None, train=False)).train


# ---------------------------------------------------------------------------------------------
# consumer lag by assignment


def test_owned_lag_keeps_only_the_assigned_partitions_and_nothing_before_an_assignment() -> None:
    lag = {("actions", 0): 5, ("actions", 1): 7, ("actions", 2): 0}
    assert owned_lag(lag, {("actions", 1), ("actions", 2)}) == {("actions", 1): 7, ("actions", 2): 0}
    assert owned_lag(lag, {("other", 1)}) == {}  # same partition number, other topic
    assert owned_lag(lag, set()) == {}
    assert owned_lag(lag, None) == {}


def test_two_workers_of_a_group_export_disjoint_partitions_whose_sum_is_the_group_lag() -> None:
    group = {("actions", p): lag for p, lag in enumerate([10, 20, 30, 40])}
    exported = []
    for owned in ([0, 2], [1, 3]):
        registry = CollectorRegistry()
        monitor = ConsumerLagMonitor("127.0.0.1:1", "g", "actions", registry=registry)
        monitor.lag = dict(group)  # both read the whole group's offsets from Kafka
        assert lag_samples(registry) == {}  # no assignment known yet: nothing exported
        monitor.assign([("actions", p) for p in owned])
        exported.append(lag_samples(registry))
    assert exported[0] == {("actions", "0"): 10, ("actions", "2"): 30}
    assert not exported[0].keys() & exported[1].keys()
    assert sum(exported[0].values()) + sum(exported[1].values()) == sum(group.values())


def test_the_pipeline_hands_each_batch_assignment_to_the_monitor_and_keeps_the_last_one() -> None:
    registry = CollectorRegistry()
    monitor = ConsumerLagMonitor("127.0.0.1:1", "g", "actions", registry=registry)
    monitor.lag = {("actions", 0): 3, ("actions", 1): 4}
    pipeline = BatchPipeline(Writer(failures=1), Joiner())  # type: ignore[arg-type]
    pipeline.on_assignment = monitor.assign
    value = [encode_event(Event("a1", "u", "i", "click", 1.0))]
    with pytest.raises(ConnectionError):  # a failing batch still reports whose partitions these are
        pipeline.process(value, assignment=[("actions", 0), ("actions", 1)])
    assert lag_samples(registry) == {("actions", "0"): 3, ("actions", "1"): 4}
    pipeline.process(value, attempt=1, assignment=[("actions", 1)])  # a rebalance took partition 0
    assert lag_samples(registry) == {("actions", "1"): 4}
    pipeline.process([encode_event(Event("a2", "u", "i", "click", 2.0))])  # no assignment given: keep the last
    assert lag_samples(registry) == {("actions", "1"): 4}


def test_an_assignment_between_batches_reaches_the_monitor_and_leaves_a_failed_batch_to_its_retry() -> None:
    registry = CollectorRegistry()
    monitor = ConsumerLagMonitor("127.0.0.1:1", "g", "actions", registry=registry)
    monitor.lag = {("actions", 0): 3, ("actions", 1): 4}
    writer = Writer(failures=1)
    pipeline = BatchPipeline(writer, Joiner())  # type: ignore[arg-type]
    pipeline.on_assignment = monitor.assign
    batch = [encode_event(Event("b1", "u", "i", "impression", 1.0, request_id="r"))]
    failed = decode_result(answer(pipeline, decode_batch_request(encode_request(batch, None))))
    assert isinstance(failed, str) and "redis away" in failed
    kept = pipeline._attempt
    # what PipelineProcess.assign sends: a frame without messages
    reply = decode_result(answer(pipeline, decode_batch_request(encode_request([], None, assignment=[("actions", 1)], train=False))))
    assert isinstance(reply, BatchResult) and reply.events == 0
    assert lag_samples(registry) == {("actions", "1"): 4}
    assert pipeline._attempt is kept  # not replaced by an empty "batch": the retry still trains its examples
    retried = decode_result(answer(pipeline, decode_batch_request(encode_request(batch, None, attempt=1))))
    assert isinstance(retried, BatchResult) and retried.events == 1


def test_a_failed_assignment_report_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Away:
        def assign(self, assignment):  # type: ignore[no-untyped-def]
            raise PipelineError("pipeline process died")

    class Recording:
        def __init__(self) -> None:
            self.assignments: list[list[tuple[str, int]]] = []

        def assign(self, assignment):  # type: ignore[no-untyped-def]
            self.assignments.append(assignment)

    asyncio.run(send_assignment(Away(), lambda: [("actions", 0)]))  # type: ignore[arg-type]
    assert "could not report the partition assignment" in caplog.text
    recording = Recording()
    asyncio.run(send_assignment(recording, lambda: [("actions", 2)]))  # type: ignore[arg-type]
    assert recording.assignments == [[("actions", 2)]]


def test_faust_assignment_becomes_sorted_topic_partition_pairs() -> None:
    assert assigned_partitions({TP("actions", 3), TP("actions", 0), TP("actions.dlq", 1)}) == \
        [("actions", 0), ("actions", 3), ("actions.dlq", 1)]
    assert assigned_partitions(set()) == []
