"""The stream worker end to end on the real stack: a Faust worker process consuming Kafka, writing
features to Redis, dead-lettering bad input, and training into a parameter-server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import redis

from features.ids import feature_ids
from features.reader import FeatureReader
from param_server.client import ParamServerClient
from param_server.config import DEFAULT_TABLES
from producers.client import EventProducer
from rtrec.events import Event
from rtrec.stack.broker import ensure_topics
from rtrec.metrics_http import scrape
from rtrec.stack.launcher import read_ready_line
from rtrec.stack.process import ManagedProcess
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration

ITEM_SLOT = next(t.slot for t in DEFAULT_TABLES if t.name == "item_id")


class Pipeline:
    """Topic names, a parameter server and a way to start workers, all private to this module."""

    def __init__(self, tmp: Path, kafka: str, redis_url: str, extra_env: dict[str, str] | None = None) -> None:
        run = uuid.uuid4().hex[:8]
        self.extra_env = extra_env or {}
        self.topic, self.dlq, self.group = f"act-{run}", f"dlq-{run}", f"workers-{run}"
        self.tmp, self.kafka, self.redis_url = tmp, kafka, redis_url
        ensure_topics(kafka, [self.topic, self.dlq], 4)
        self.processes: list[ManagedProcess] = []
        self.param_server = self.start("param-server", {"RTREC_PS_PORT": "0",
                                                        "RTREC_SNAPSHOT_DIR": str(tmp / "snapshots")})
        self.workers: list[dict] = []

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**os.environ, "RTREC_KAFKA": self.kafka, "RTREC_REDIS_URL": self.redis_url,
                "RTREC_ACTIONS_TOPIC": self.topic, "RTREC_DLQ_TOPIC": self.dlq,
                "RTREC_WORKER_GROUP": self.group, "RTREC_METRICS_PORT": "0", "RTREC_JOIN_WINDOW_S": "5",
                **self.extra_env, **extra}

    def start(self, command: str, extra: dict[str, str]) -> dict:
        n = len(self.processes)
        process = ManagedProcess(f"{command}-{n}", [sys.executable, "-m", "rtrec.cli", command],
                                 self.tmp / f"{command}-{n}.log", env=self.env(extra), stdout=subprocess.PIPE)
        self.processes.append(process)
        process.start()
        return read_ready_line(process, 60)

    def add_worker(self) -> dict:
        ready = self.start("worker", {"RTREC_PARAM_SERVERS": self.param_server["param_server"],
                                      "RTREC_DATA_DIR": str(self.tmp / f"data-{len(self.workers)}")})
        self.workers.append(ready)
        return ready

    def metric(self, name: str) -> list[float]:
        return [scrape(w["metrics"]).get(name, 0.0) for w in self.workers]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace_s=10)


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def traffic(run: str, users: int = 6, per_user: int = 10) -> list[Event]:
    """Impressions and clicks of fresh users, with request ids so the joiner pairs them."""
    t0 = time.time()
    events = []
    for u in range(users):
        for k in range(per_user):
            req = f"{run}-r{u}-{k}"
            events.append(Event(f"{run}-i{u}-{k}", f"{run}-u{u}", f"{run}-item{k}", "impression", t0 + k,
                                request_id=req, item={"category": "c1"}))
            if k % 2 == 0:
                events.append(Event(f"{run}-c{u}-{k}", f"{run}-u{u}", f"{run}-item{k}", "click", t0 + k + 0.5,
                                    request_id=req))
    return events


def test_valid_events_reach_features_and_invalid_ones_the_dlq_with_their_reason(pipeline: Pipeline) -> None:
    run = uuid.uuid4().hex[:6]
    events = traffic(run)
    bad = [b"{not json", b'{"event_id":"x","user_id":"u","item_id":"i","action":"click"}', b"\xff\xfe"]
    with EventProducer(pipeline.kafka, pipeline.topic) as producer:
        producer.send_many(events)
        for n, raw in enumerate(bad):
            producer.send_raw(f"bad{n}", raw)
    reader = FeatureReader(redis.Redis.from_url(pipeline.redis_url))

    def counted() -> list[tuple[int, int]]:
        return [(u["counts"].get("impression_24h", 0), u["counts"].get("click_24h", 0))
                for u in reader.users([f"{run}-u{u}" for u in range(6)])]

    # the events span several micro-batches: wait for every user's (a count past it times out too)
    wait_until(lambda: counted() == [(10, 5)] * 6, what="features")
    users = reader.users([f"{run}-u{u}" for u in range(6)])
    assert users[0]["recent_items"][:2] == [f"{run}-item8", f"{run}-item6"]
    dead = consume_all(pipeline.kafka, pipeline.dlq, 3)
    assert sorted(d["reason"].split(":")[0] for d in dead) == ["missing field", "not JSON", "not UTF-8"]
    assert {d["raw"] for d in dead} >= {"{not json"}


def test_clicks_are_trained_into_the_parameter_server(pipeline: Pipeline) -> None:
    run = uuid.uuid4().hex[:6]
    with EventProducer(pipeline.kafka, pipeline.topic) as producer:
        producer.send_many(traffic(run))
    host, port = pipeline.param_server["param_server"].rsplit(":", 1)
    ids = feature_ids(ITEM_SLOT, [f"{run}-item{k}" for k in range(0, 10, 2)])
    with ParamServerClient(host, int(port)) as client:
        wait_until(lambda: bool(np.all(np.abs(client.pull_many(ids)).sum(axis=1) > 0)), what="item rows")
    assert sum(pipeline.metric("rtrec_trainer_examples_total")) >= 30  # the clicked impressions at least


def test_redelivered_events_change_no_feature(pipeline: Pipeline) -> None:
    run = uuid.uuid4().hex[:6]
    events = traffic(run, users=2)
    reader = FeatureReader(redis.Redis.from_url(pipeline.redis_url))
    with EventProducer(pipeline.kafka, pipeline.topic) as producer:
        producer.send_many(events)
    wait_until(lambda: reader.users([f"{run}-u1"])[0]["counts"].get("click_24h") == 5, what="features")
    before = reader.users([f"{run}-u0", f"{run}-u1"])
    duplicates = sum(pipeline.metric("rtrec_features_events_duplicate_total"))
    with EventProducer(pipeline.kafka, pipeline.topic) as producer:
        producer.send_many(events)
    wait_until(lambda: sum(pipeline.metric("rtrec_features_events_duplicate_total")) >= duplicates + len(events),
               what="redelivered events")
    assert reader.users([f"{run}-u0", f"{run}-u1"]) == before


def child_pids(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_killed_pipeline_process_is_restarted_and_no_event_is_lost(pipeline: Pipeline) -> None:
    worker = next(p for p in pipeline.processes if p.name.startswith("worker"))
    (child,) = child_pids(worker.pid)
    os.kill(child, 9)
    run = uuid.uuid4().hex[:6]
    with EventProducer(pipeline.kafka, pipeline.topic) as producer:
        producer.send_many(traffic(run, users=2))
    reader = FeatureReader(redis.Redis.from_url(pipeline.redis_url))
    wait_until(lambda: reader.users([f"{run}-u1"])[0]["counts"].get("click_24h") == 5, what="features after restart")
    assert reader.users([f"{run}-u0"])[0]["counts"]["impression_24h"] == 10
    assert child_pids(worker.pid) != [child]


def test_a_second_worker_takes_over_part_of_the_partitions(pipeline: Pipeline) -> None:
    pipeline.add_worker()
    run = uuid.uuid4().hex[:6]
    consumed_before = pipeline.metric("rtrec_worker_events_consumed_total")

    def both_consumed() -> bool:
        with EventProducer(pipeline.kafka, pipeline.topic) as producer:
            producer.send_many(traffic(f"{run}-{time.monotonic_ns()}", users=20, per_user=2))
        after = pipeline.metric("rtrec_worker_events_consumed_total")
        return all(a > b for a, b in zip(after, consumed_before))

    wait_until(both_consumed, timeout_s=90, what="both workers consuming")
