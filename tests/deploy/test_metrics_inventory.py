"""The metrics inventory: every figure the operators' issue asks for exists, named by Prometheus rules.

Metrics are built here on fresh registries (or read from the default one, where the worker's
module-level metrics live), without servers. The worker's new figures (events processed vs
consumed, dead letters by action, batch failures, consumer lag, joiner outcomes) are pinned
step by step.
"""

from __future__ import annotations

import re
from typing import Iterable

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Metric

import features.writer  # noqa: F401 -- registers rtrec_features_* on the default registry
import producers.client  # noqa: F401 -- registers rtrec_producer_*
import stream_workers.recovery  # noqa: F401 -- registers rtrec_worker_recovery_*
from features.redis_metrics import RedisMemoryCollector
from features.writer import WriteResult
from param_server.metrics import ParamServerMetrics
from param_server.store import ParamStore
from rtrec.events import Event, encode_event
from serving.metrics import ServingMetrics
from stream_workers import metrics as worker_metrics
from rtrec.recipe.joiner import Joiner
from stream_workers.metrics import ConsumerLagMonitor, JoinerCollector, dead_letter_action, group_lag
from stream_workers.pipeline import BatchPipeline
from rtrec.recipe.trainer import TrainerMetrics
from rtrec.stack.supervision import StackMetrics

COMPONENTS = ("worker", "trainer", "features", "redis", "param_server", "serving", "producer", "stack")
NAME = re.compile(rf"rtrec_({'|'.join(COMPONENTS)})_[a-z0-9_]+")

# The issue's inventory -> (process, metric family as exposed, sample that must carry the figure).
INVENTORY = {
    "events consumed by action": ("worker", "rtrec_worker_events_consumed_total", {"action"}),
    "events processed by action": ("worker", "rtrec_worker_events_processed_total", {"action"}),
    "events dead-lettered by action": ("worker", "rtrec_worker_events_dead_lettered_total", {"action"}),
    "consumer lag": ("worker", "rtrec_worker_consumer_lag_messages", {"topic", "partition"}),
    "batch size histogram": ("worker", "rtrec_worker_batch_size_bucket", {"le"}),
    "batch latency histogram": ("worker", "rtrec_worker_batch_seconds_bucket", {"le"}),
    "Redis write latency": ("worker", "rtrec_features_redis_write_seconds_bucket", {"le"}),
    "Redis memory used": ("worker", "rtrec_redis_used_memory_bytes", set()),
    "Redis memory limit": ("worker", "rtrec_redis_maxmemory_bytes", set()),
    "joiner state size": ("worker", "rtrec_worker_joiner_pending", set()),
    "join rate": ("worker", "rtrec_worker_joiner_outcomes_total", {"outcome"}),
    "training examples": ("worker", "rtrec_trainer_examples_total", set()),
    "rolling loss": ("worker", "rtrec_trainer_loss", set()),
    "rolling AUC": ("worker", "rtrec_trainer_auc", set()),
    "rows per slot": ("param_server", "rtrec_param_server_table_rows", {"table", "slot"}),
    "admissions": ("param_server", "rtrec_param_server_admissions_total", {"table"}),
    "evictions": ("param_server", "rtrec_param_server_evictions_total", {"table"}),
    "pull/push latency": ("param_server", "rtrec_param_server_request_duration_seconds_bucket", {"op", "le"}),
    "snapshot age": ("param_server", "rtrec_param_server_snapshot_age_seconds", set()),
    "serving latency by endpoint": ("serving", "rtrec_serving_request_duration_seconds_bucket", {"endpoint", "le"}),
    "sync age": ("serving", "rtrec_serving_sync_age_seconds", set()),
    "model version": ("serving", "rtrec_serving_model_version", set()),
    "FAISS size": ("serving", "rtrec_serving_index_items", set()),
    "cold-start share": ("serving", "rtrec_serving_cold_start_share", set()),
    "component restarts": ("stack", "rtrec_stack_restarts_total", {"component"}),
}


class FakeWriter:
    """write_many of features.writer.FeatureWriter, optionally failing like a Redis outage."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def write_many(self, events: list[Event]) -> WriteResult:
        if self.fail:
            raise ConnectionError("redis away")
        return WriteResult(applied=len(events), duplicates=0)


class FakeRedis:
    """The one redis-py call RedisMemoryCollector makes."""

    def info(self, section: str) -> dict[str, int]:
        return {"used_memory": 1 << 20, "maxmemory": 0}


class FakeConsumer:
    """The kafka-python calls ConsumerLagMonitor makes."""

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def end_offsets(self, tps):
        return {tp: 100 for tp in tps}

    def beginning_offsets(self, tps):
        return {tp: 40 for tp in tps}

    def committed(self, tp):
        return {0: 100, 1: 75}.get(tp.partition)  # partition 2: nothing committed yet


def value(name: str, labels: dict[str, str] | None = None, registry: CollectorRegistry = REGISTRY) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def families(registry: CollectorRegistry) -> list[Metric]:
    return [f for f in registry.collect() if f.name.startswith("rtrec_")]


def process_registries() -> dict[str, CollectorRegistry]:
    """Each process's metrics, with one observation each so labelled families show samples."""
    worker = CollectorRegistry()
    trainer = TrainerMetrics(worker, auc_window=100, loss_window=10)
    trainer.examples.inc(0)
    lag = ConsumerLagMonitor("127.0.0.1:1", "g", "actions", registry=worker)
    lag.lag = {("actions", 0): 3}
    lag.assign([("actions", 0)])
    worker.register(JoinerCollector(Joiner()))
    worker.register(RedisMemoryCollector(FakeRedis()))

    class Both:  # the default registry (worker, features writer, producer) plus the trainer's
        def collect(self) -> Iterable[Metric]:
            yield from REGISTRY.collect()
            yield from worker.collect()

    merged = CollectorRegistry()
    merged.register(Both())  # type: ignore[arg-type]
    worker_metrics.EVENTS_CONSUMED.labels("click").inc(0)
    worker_metrics.EVENTS_PROCESSED.labels("click").inc(0)
    worker_metrics.EVENTS_DEAD_LETTERED.labels("unknown").inc(0)
    worker_metrics.BATCH_SIZE.observe(1)
    worker_metrics.BATCH_SECONDS.observe(0.01)
    features.writer.WRITE_SECONDS.observe(0.001)

    param_server = CollectorRegistry()
    ParamServerMetrics(param_server, ParamStore()).observe_request("pull", keys=1, seconds=0.001)

    serving = CollectorRegistry()
    ServingMetrics(serving).latency.labels("/recommend").observe(0.01)

    stack = CollectorRegistry()  # the `rtrec up` process's own
    StackMetrics(stack).restarts.labels("worker-0").inc(0)
    return {"worker": merged, "param_server": param_server, "serving": serving, "stack": stack}


# ---------------------------------------------------------------------------------------------
# inventory and naming


@pytest.mark.parametrize("item", sorted(INVENTORY))
def test_the_issue_inventory_is_exported(item: str):
    process, sample_name, labels = INVENTORY[item]
    samples = [s for f in process_registries()[process].collect() for s in f.samples if s.name == sample_name]
    assert samples, f"{item}: {sample_name} not exported by {process}"
    assert any(labels <= set(s.labels) for s in samples), f"{item}: {sample_name} lacks labels {labels}"


@pytest.mark.parametrize("process", ["worker", "param_server", "serving", "stack"])
def test_metric_names_follow_prometheus_conventions(process: str):
    for family in families(process_registries()[process]):
        name = family.name
        assert NAME.fullmatch(name), f"{name}: want rtrec_<component>_<what>_<unit>, component in {COMPONENTS}"
        assert not re.search(r"_(ms|millis|milliseconds|us|minutes|hours|kb|mb|percent)(_|$)", name), \
            f"{name}: use base units (seconds, bytes, ratios)"
        if family.type == "counter" and family.samples:  # a labelled counter never used has no sample
            assert f"{name}_total" in {s.name for s in family.samples}, f"{name}: counters end in _total"
        else:
            assert not name.endswith("_total"), f"{name}: only counters end in _total"
        if {"duration", "latency", "age", "time"} & set(name.split("_")):
            assert name.endswith("_seconds"), f"{name}: times are in seconds"


# ---------------------------------------------------------------------------------------------
# the worker's figures


def test_dead_letter_action_is_the_claimed_action_or_unknown():
    assert dead_letter_action(b'{"action": "like"}') == "like"
    assert dead_letter_action(b'{"action": "teleport"}') == "other"  # bounded cardinality
    assert dead_letter_action(b'{"action": 7}') == "unknown"
    assert dead_letter_action(b"[1, 2]") == "unknown"
    assert dead_letter_action(b"\xff\xfe") == "unknown"
    assert dead_letter_action(b"") == "unknown"


def test_group_lag_counts_from_the_beginning_when_nothing_is_committed():
    end = {("a", 0): 100, ("a", 1): 100, ("a", 2): 100}
    lag = group_lag(end, {("a", 0): 100, ("a", 1): 75, ("a", 2): None}, {("a", 2): 40})
    assert lag == {("a", 0): 0, ("a", 1): 25, ("a", 2): 60}
    assert group_lag({("a", 0): 5}, {("a", 0): 9}, {}) == {("a", 0): 0}  # never negative


def test_consumer_lag_monitor_exports_one_gauge_per_partition():
    registry = CollectorRegistry()
    monitor = ConsumerLagMonitor("127.0.0.1:1", "rtrec-worker", "actions", registry=registry)
    assert [s for f in registry.collect() for s in f.samples if s.name.endswith("_messages")] == []
    monitor.lag = monitor.read_once(FakeConsumer())
    monitor.assign([("actions", 0), ("actions", 1), ("actions", 2)])  # one worker owns every partition
    for partition, lag in {"0": 0, "1": 25, "2": 60}.items():
        assert value("rtrec_worker_consumer_lag_messages", {"topic": "actions", "partition": partition},
                     registry) == lag


def test_batch_counts_consumed_and_processed_by_action_and_dead_letters_by_claimed_action():
    watched = [("rtrec_worker_events_consumed_total", {"action": "click"}),
               ("rtrec_worker_events_processed_total", {"action": "click"}),
               ("rtrec_worker_events_processed_total", {"action": "impression"}),
               ("rtrec_worker_events_dead_lettered_total", {"action": "share"}),
               ("rtrec_worker_events_dead_lettered_total", {"action": "unknown"})]
    before = [value(name, labels) for name, labels in watched]
    values = [encode_event(Event("m1", "u", "i", "click", 1.0)), encode_event(Event("m2", "u", "j", "click", 2.0)),
              encode_event(Event("m3", "u", "k", "impression", 3.0, request_id="r")),
              b'{"event_id": "x", "action": "share"}', b"garbage", None]
    result = BatchPipeline(FakeWriter(), Joiner()).process(values)
    assert result.events == 3 and len(result.dead_letters) == 3
    after = [value(name, labels) for name, labels in watched]
    assert [a - b for a, b in zip(after, before)] == [2, 2, 1, 1, 2]


def test_a_failed_batch_is_consumed_and_counted_as_failure_but_not_processed():
    consumed = value("rtrec_worker_events_consumed_total", {"action": "like"})
    processed = value("rtrec_worker_events_processed_total", {"action": "like"})
    failures = value("rtrec_worker_batch_failures_total")
    with pytest.raises(ConnectionError):
        BatchPipeline(FakeWriter(fail=True), Joiner()).process([encode_event(Event("f1", "u", "i", "like", 1.0))])
    assert value("rtrec_worker_events_consumed_total", {"action": "like"}) == consumed + 1
    assert value("rtrec_worker_events_processed_total", {"action": "like"}) == processed
    assert value("rtrec_worker_batch_failures_total") == failures + 1


def test_joiner_outcomes_follow_the_joiner_step_by_step():
    joiner = Joiner(window_s=10)
    registry = CollectorRegistry()
    registry.register(JoinerCollector(joiner))

    def outcome(name: str) -> float:
        return value("rtrec_worker_joiner_outcomes_total", {"outcome": name}, registry)

    joiner.add_many([Event("1", "u", "i", "impression", 100.0, request_id="r"),
                     Event("2", "u", "j", "impression", 100.0, request_id="r")])
    assert (outcome("positive"), outcome("negative")) == (0, 0)
    joiner.add_many([Event("3", "u", "i", "click", 101.0, request_id="r")])
    assert (outcome("positive"), outcome("negative")) == (1, 0)
    joiner.add_many([Event("4", "v", "x", "skip", 200.0)])  # the watermark passes j's window
    assert (outcome("positive"), outcome("negative")) == (1, 1)
    joiner.add_many([Event("5", "u", "j", "click", 201.0, request_id="r")])  # too late
    assert outcome("unmatched_late") == 1


def test_every_exported_metric_is_in_the_readme_metrics_table():
    from tests.deploy.test_dashboards import readme_section

    documented = set(re.findall(r"^\| `(rtrec_[a-z0-9_]+)` \|", readme_section(), flags=re.MULTILINE))
    exported = {f.name + ("_total" if f.type == "counter" else "")
                for registry in process_registries().values() for f in families(registry)}
    assert sorted(exported - documented) == [], "exported but not in README's Operating rtrec table"
    assert sorted(documented - exported) == [], "in README's Operating rtrec table but exported by no process"
