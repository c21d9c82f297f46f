"""Recovery on the real stack: a parameter-server shard killed with SIGKILL restarts from its
snapshot, and the worker retrains into it every event after the snapshot (no update lost)."""

from __future__ import annotations

import os
import signal
import time
import uuid

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from features.ids import feature_ids
from param_server.client import ParamServerClient
from producers.client import EventProducer
from rtrec.metrics_http import scrape
from tests.integration.test_worker import ITEM_SLOT, Pipeline, traffic, wait_until


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, redis_url: str):  # type: ignore[no-untyped-def]
    """The module's worker trains without experience replay: a replay after a restore retrains the
    same examples, but cannot redraw the same earlier batches the first run replayed at random, so
    rows are compared with replay off (with it on they are retrained, not reproduced)."""
    p = Pipeline(tmp_path_factory.mktemp("pipeline"), kafka_bootstrap, redis_url, {"RTREC_REPLAY_BATCHES": "0"})
    try:
        p.add_worker()
        yield p
    finally:
        p.stop()

pytestmark = pytest.mark.integration


def end_offsets(kafka: str, topic: str) -> dict[str, int]:
    """Next offset per partition, by reading the topic (Tansu's ListOffsets answers were seen stale)."""
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends: dict[str, int] = {}
        while batch := consumer.poll(timeout_ms=2000):
            for tp, records in batch.items():
                ends[str(tp.partition)] = max(ends.get(str(tp.partition), 0), records[-1].offset + 1)
        return ends
    finally:
        consumer.close()


def client_of(pipeline: Pipeline) -> ParamServerClient:
    host, port = pipeline.param_server["param_server"].rsplit(":", 1)
    return ParamServerClient(host, int(port))


def rows_trained(client: ParamServerClient, ids: np.ndarray) -> bool:
    return bool(np.all(np.abs(client.pull_many(ids)).sum(axis=1) > 0))


def quiet_snapshot(client: ParamServerClient) -> dict:
    """Snapshot the shard and return its stats as of that snapshot: taken again until no push
    landed between the stats before and after it (the worker may still be training)."""
    while True:
        version = client.stats()["version"]
        client.snapshot()
        stats = client.stats()
        if stats["version"] == version:
            return stats
        time.sleep(0.2)


def test_a_killed_shard_restores_its_snapshot_and_the_worker_retrains_what_came_after(pipeline: Pipeline) -> None:
    before, after, trigger = (uuid.uuid4().hex[:6] for _ in range(3))
    items_before = feature_ids(ITEM_SLOT, [f"{before}-item{k}" for k in range(0, 10, 2)])
    items_after = feature_ids(ITEM_SLOT, [f"{after}-item{k}" for k in range(0, 10, 2)])
    with EventProducer(pipeline.kafka, pipeline.topic) as producer:
        producer.send_many(traffic(before))
    with client_of(pipeline) as client:
        wait_until(lambda: rows_trained(client, items_before), what="rows of the first traffic")
        snapshot = quiet_snapshot(client)
    with EventProducer(pipeline.kafka, pipeline.topic) as producer:
        producer.send_many(traffic(after))
    with client_of(pipeline) as client:
        wait_until(lambda: rows_trained(client, items_after), what="rows of the traffic after the snapshot")
        rows_before_kill = client.pull_many(items_after)

    shard = next(p for p in pipeline.processes if p.name.startswith("param-server"))
    os.killpg(shard.pid, signal.SIGKILL)  # no final snapshot: what came after the last one is gone
    shard.proc.wait()
    port = pipeline.param_server["param_server"].rsplit(":", 1)[1]
    pipeline.start("param-server", {"RTREC_PS_PORT": port, "RTREC_SNAPSHOT_DIR": str(pipeline.tmp / "snapshots")})
    with client_of(pipeline) as client:
        restored = client.stats()
        assert restored["epoch"] != snapshot["epoch"]
        assert restored["restored_offsets"] == snapshot["offsets"]
        assert rows_trained(client, items_before) and not np.abs(client.pull_many(items_after)).any()

    # The worker notices the new epoch at its next batch and replays from the snapshot's offsets.
    with EventProducer(pipeline.kafka, pipeline.topic) as producer:
        producer.send_many(traffic(trigger, users=1, per_user=1))
    ends = end_offsets(pipeline.kafka, pipeline.topic)
    with client_of(pipeline) as client:
        wait_until(lambda: rows_trained(client, items_after), what="rows retrained after the restore")
        wait_until(lambda: client.stats()["offsets"].get(pipeline.topic) == ends,
                   what=f"offsets up to the end {ends}: {client.stats()['offsets']}, snapshot {snapshot['offsets']}")
        rows_recovered = client.pull_many(items_after)
    assert sum(scrape(w["metrics"]).get("rtrec_worker_recovery_replays_total", 0) for w in pipeline.workers) >= 1
    # Trained on the same examples from the same start, in other batches: close, not bit-equal.
    cosine = (rows_recovered * rows_before_kill).sum(1) / (
        np.linalg.norm(rows_recovered, axis=1) * np.linalg.norm(rows_before_kill, axis=1))
    assert cosine.min() > 0.9, cosine


def test_shard_epoch_is_new_per_start_and_stable_while_it_runs(pipeline: Pipeline) -> None:
    with client_of(pipeline) as client:
        assert client.epoch() == client.epoch() == client.stats()["epoch"]
