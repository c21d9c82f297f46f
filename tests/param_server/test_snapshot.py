"""Snapshots are atomic, never pickle, carry Kafka offsets, and restore bit-identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from features.ids import feature_ids
from param_server.client import ParamServerClient
from param_server.config import DEFAULT_TABLES
from param_server.snapshot import latest_snapshot, read_snapshot, write_snapshot
from param_server.store import ParamStore

REPO = Path(__file__).resolve().parents[2]


def busy_store(directory: Path) -> ParamStore:
    store = ParamStore(DEFAULT_TABLES, directory)
    rng = np.random.default_rng(3)
    users, items = feature_ids(1, np.arange(300)), feature_ids(2, np.arange(500))
    for step in range(5):
        for ids in (users[rng.integers(0, 300, 400)], items[rng.zipf(1.2, 400) % 500]):
            store.push_many(ids, rng.standard_normal((ids.size, 32)).astype(np.float32),
                            ts=1.7e9 + 20 * 86_400 * step, offsets={"actions": {step % 4: 100 * step}})
    store.push_dense({"head.w": rng.standard_normal((16, 4))})
    return store


def test_snapshot_round_trip_is_bit_identical(tmp_path: Path) -> None:
    store = busy_store(tmp_path)
    assert sum(t.evictions for t in store.tables.values()) > 0
    path = store.snapshot({"actions": {7: 5}})
    arrays, meta = read_snapshot(path)
    restored = ParamStore.from_state(arrays, meta, DEFAULT_TABLES, tmp_path)

    again, meta_again = restored.export_state()
    before, meta_before = store.export_state()
    assert meta_again == meta_before
    assert again.keys() == before.keys()
    for name in before:
        assert again[name].dtype == before[name].dtype
        assert again[name].tobytes() == before[name].tobytes(), name
    assert restored.offsets == {"actions": {0: 400, 1: 100, 2: 200, 3: 300, 7: 5}}
    for since in (0, 3, store.version - 1):
        for name, want in store.delta(since).tables.items():
            got = restored.delta(since).tables[name]
            assert got.ids.tobytes() == want.ids.tobytes() and got.rows.tobytes() == want.rows.tobytes()
            assert got.evicted.tobytes() == want.evicted.tobytes()


def test_restored_store_trains_on_exactly_like_the_original(tmp_path: Path) -> None:
    store = busy_store(tmp_path)
    restored = ParamStore.from_state(*read_snapshot(store.snapshot()), DEFAULT_TABLES)
    ids = feature_ids(1, np.arange(350))  # known, pending and new users
    g = np.ones((ids.size, 32), dtype=np.float32)
    for s in (store, restored):
        s.push_many(ids, g, ts=1.8e9)
    assert store.pull_many(ids).tobytes() == restored.pull_many(ids).tobytes()


def test_snapshot_file_loads_without_pickle_and_names_its_version(tmp_path: Path) -> None:
    store = busy_store(tmp_path)
    path = Path(store.snapshot())
    assert path.name == f"snapshot-v{store.version:012d}.npz"
    with np.load(path, allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)


def test_write_is_atomic_and_old_snapshots_are_pruned(tmp_path: Path) -> None:
    for version in range(1, 6):
        write_snapshot(tmp_path, ({"a": np.arange(version)}, {"version": version, "shard": 0}), keep=2)
    names = sorted(p.name for p in (tmp_path / "shard-0").iterdir())
    assert names == ["snapshot-v000000000004.npz", "snapshot-v000000000005.npz"]  # no temp files left
    assert latest_snapshot(tmp_path, 0).name.endswith("5.npz")  # type: ignore[union-attr]


def test_corrupt_snapshot_is_a_clear_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read snapshot"):
        read_snapshot(bad)


def start_shard(snapshot_dir: Path) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "RTREC_PS_PORT": "0", "RTREC_METRICS_PORT": "0",
           "RTREC_SNAPSHOT_DIR": str(snapshot_dir), "RTREC_SNAPSHOT_INTERVAL_S": "60"}
    process = subprocess.Popen([sys.executable, "-m", "param_server.main"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()  # type: ignore[union-attr]
    return process, json.loads(line)


def test_main_prints_one_ready_line_stops_fast_on_sigterm_and_restores(tmp_path: Path) -> None:
    process, ready = start_shard(tmp_path)
    try:
        assert ready["ready"] is True and ready["metrics"].startswith("http://127.0.0.1:")
        host, port = ready["param_server"].rsplit(":", 1)
        ids = feature_ids(2, ["a", "b"])
        with ParamServerClient(host, int(port)) as client:
            client.push_many(ids, np.ones((2, 32), np.float32), ts=1.0, offsets={"actions": {0: 42}})
            rows = client.pull_many(ids)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 3.0
        assert process.stdout.read() == ""  # type: ignore[union-attr]  # exactly one line on stdout
    finally:
        process.kill()
    process, ready = start_shard(tmp_path)
    try:
        host, port = ready["param_server"].rsplit(":", 1)
        with ParamServerClient(host, int(port)) as client:
            assert client.pull_many(ids).tobytes() == rows.tobytes()
            assert client.stats()["offsets"] == {"actions": {"0": 42}}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
