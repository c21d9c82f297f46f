"""The whole loop on the local stack: clicks into Kafka -> worker features and training -> parameter
server -> serving's sync -> a user's recommendations, and the served list back into Kafka."""

from __future__ import annotations

import json
import time
import uuid
from typing import Callable, Iterator

import httpx
import pytest
import redis
from kafka import KafkaConsumer

from producers.client import EventProducer
from rtrec.events import Event
from rtrec.settings import load_settings
from rtrec.stack.launcher import LocalStack, StackOptions
from rtrec.stack.redis_cluster import LocalRedisCluster

pytestmark = pytest.mark.integration


def wait_for(probe: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module", params=[0, 3], ids=["one-redis", "redis-cluster-3"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """``rtrec up`` on one Redis, and as ``rtrec up --redis-cluster 3`` starts it: a 3-master Redis
    Cluster holding the features in 3 shards, one per master."""
    with pytest.MonkeyPatch.context() as env:  # the components read these from their environment
        env.setenv("RTREC_JOIN_WINDOW_S", "2")
        env.setenv("RTREC_SYNC_INTERVAL_S", "1")
        env.setenv("RTREC_WORKER_BATCH_WITHIN_S", "0.1")
        stack = LocalStack(load_settings(), StackOptions(simulate=False, workdir=tmp_path_factory.mktemp("e2e"),
                                                         redis_cluster=request.param))
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


def browsing(run: str, t0: float) -> list[Event]:
    """Other users' impressions and clicks over 30 items in 3 categories (a catalogue to rank)."""
    events = []
    for u in range(20):
        for n in range(6):
            item = f"{run}-i{(u * 7 + n * 5) % 30}"
            rid = f"{run}-r{u}-{n}"
            ts = t0 + u + n / 10
            cat = {"category": f"c{int(item.rsplit('i', 1)[1]) % 3}"}
            events.append(Event(f"{rid}-imp", f"{run}-u{u}", item, "impression", ts, request_id=rid, item=cat))
            if n % 2 == 0:
                events.append(Event(f"{rid}-clk", f"{run}-u{u}", item, "click", ts + 0.5, request_id=rid, item=cat))
    return events


def test_a_users_clicks_reach_their_recommendations_and_served_lists_come_back_as_impressions(
        stack: LocalStack) -> None:
    run, base = uuid.uuid4().hex[:6], stack.info.serving
    alice, t0 = f"{run}-alice", time.time() - 120
    clicked = [f"{run}-i{k}" for k in (0, 3, 6)]
    alice_events = [Event(f"{run}-a{n}-{k}", alice, item, action, t0 + 30 + n + k / 10, item={"category": "c0"})
                    for n, item in enumerate(clicked) for k, action in enumerate(("impression", "click"))]
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get(f"/embeddings/user/{alice}").status_code == 404
        with EventProducer(stack.info.kafka) as producer:
            producer.send_many(browsing(run, t0) + alice_events[:2])
            producer.flush()
            time.sleep(2.0)  # her later clicks come in a later batch: a new ID is admitted on its 2nd push
            producer.send_many(alice_events[2:])

        # trained (alice admitted: seen in two batches), then synced into serving
        wait_for(lambda: http.get(f"/embeddings/user/{alice}").status_code == 200, 60, "alice's row in serving")
        # serving syncs as the training push lands, which can be before the same batch's feature
        # write (they overlap in the worker): her clicks block items once they are in Redis
        wait_for(lambda: set(clicked) <= set(http.get(f"/features/user/{alice}").json()["recent_items"]), 30,
                 "alice's clicks in her recent items")
        body = http.post("/recommend", json={"user_id": alice, "k": 5}).json()
        cold = http.post("/recommend", json={"user_id": f"{run}-nobody", "k": 5}).json()
        names = [it["item_id"] for it in body["items"]]
        assert len(names) == 5 and not set(names) & set(clicked)  # already-clicked items are not served again
        assert names != [it["item_id"] for it in cold["items"]]  # ranked by the model, not the cold-start list
        assert all(n.startswith(f"{run}-i") for n in names)  # string IDs retrievable via the catalogue

    if isinstance(stack.redis, LocalRedisCluster):  # the features spread over every master
        assert all(redis.Redis(host=stack.redis.host, port=port).dbsize() > 0 for port in stack.redis.ports)

    consumer = KafkaConsumer(stack.settings.actions_topic, bootstrap_servers=stack.info.kafka,
                             auto_offset_reset="earliest", consumer_timeout_ms=2_000)
    served = wait_for(lambda: [e for e in (json.loads(m.value) for m in consumer)
                               if e.get("request_id") == body["request_id"]], 30, "the served list in Kafka")
    consumer.close()
    assert sorted(e["item_id"] for e in served) == sorted(names)  # type: ignore[union-attr]
    assert {e["action"] for e in served} == {"impression"}  # type: ignore[union-attr]
