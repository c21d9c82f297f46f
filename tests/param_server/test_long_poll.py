"""A DELTA that long-polls: it answers as soon as another connection's push changes the shard,
waits out its ``wait_ms`` when nothing changes, and holds up no other request meanwhile."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import numpy as np
import pytest

from features.ids import feature_ids
from param_server.client import ParamServerClient
from param_server.server import ServerThread
from param_server.sharding import ShardedClient
from param_server.store import ParamStore


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with ServerThread(ParamStore()) as running:
        yield running


def push_one(client: ParamServerClient, raw: int, times: int = 2) -> int:
    """Push a gradient of one item ID ``times`` (admitted at its second sighting: param_server/config.py)."""
    for _ in range(times):
        version = client.push_many(feature_ids(2, [raw]), np.ones((1, 32), dtype=np.float32), ts=1.0)
    return version


def test_a_waiting_delta_answers_as_soon_as_a_push_lands(server: ServerThread) -> None:
    with ParamServerClient(server.host, server.port) as poller, ParamServerClient(server.host, server.port) as worker:
        push_one(worker, 7, times=1)
        since = poller.delta(0).version
        got: dict = {}

        def poll() -> None:
            started = time.monotonic()
            got["delta"], got["seconds"] = poller.delta(since, wait_s=5.0), time.monotonic() - started

        thread = threading.Thread(target=poll)
        thread.start()
        time.sleep(0.3)  # the poll is waiting; a push on another connection is served meanwhile
        pushed_at = time.monotonic()
        version = push_one(worker, 7, times=1)
        thread.join(5.0)
        assert got["delta"].version == version > since
        assert got["delta"].tables["item_id"].ids.tolist() == feature_ids(2, [7]).tolist()
        assert got["seconds"] < 0.3 + (time.monotonic() - pushed_at) + 1.0 < 5.0


def test_a_waiting_delta_with_nothing_new_answers_empty_after_its_wait(server: ServerThread) -> None:
    with ParamServerClient(server.host, server.port) as client:
        version = push_one(client, 3)
        started = time.monotonic()
        delta = client.delta(version, wait_s=0.4)
        assert 0.35 < time.monotonic() - started < 3.0
        assert delta.version == version and all(t.ids.size == 0 for t in delta.tables.values())
        started = time.monotonic()
        assert client.delta(version - 1, wait_s=5.0).version == version  # already behind: at once
        assert time.monotonic() - started < 1.0


def test_the_sharded_client_long_polls_every_shard_at_once() -> None:
    with ServerThread(ParamStore(shard=0, num_shards=2)) as a, ServerThread(ParamStore(shard=1, num_shards=2)) as b:
        params = ShardedClient.connect([(a.host, a.port), (b.host, b.port)])
        worker = ShardedClient.connect([(a.host, a.port), (b.host, b.port)])  # a client waits on its connections
        ids = feature_ids(2, list(range(40)))  # spread over both shards

        def push() -> None:  # the second sighting admits them
            worker.push_many(ids, np.ones((40, 32), dtype=np.float32), ts=1.0)

        push()
        since = params.delta(0).version
        timer = threading.Timer(0.3, push)
        timer.start()
        started = time.monotonic()
        delta = params.delta(since, wait_s=5.0)
        timer.join()
        assert time.monotonic() - started < 3.0  # 40 IDs land on both shards: both answer at the push
        assert delta.tables["item_id"].ids.size == 40
        params.close()
        worker.close()
