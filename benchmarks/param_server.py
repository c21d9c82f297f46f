"""Benchmark of the parameter server: push/pull throughput, memory per row, collisions, deltas, growth.

Workload: one slot, dim 16, Adagrad, a table of 1M rows, batches of 4096 IDs drawn Zipf-like
(a = 1.1, so about a third of a batch is distinct, like real click streams). Baseline, measured in
the same run: the same Adagrad update (same dedup and optimizer code) on a plain preallocated
numpy array indexed by position -- the speed limit of any table. The RPC figure pushes through
the network client over loopback to a shard in another process.

Growth, measured at 1M and 10M rows:

* ``delta_ms_*``: one ``delta(since)`` on the table when 1,000 / 100,000 distinct rows changed
  after ``since`` (pushed in batches of 4096, median of 5 calls); baseline ``scan_delta_ms_*``:
  what ``delta`` did before its change log, one pass over every row's version plus the same
  gather, on the same table at the same moment.
* ``max_stall_ms``: a shard (``python -m param_server.main``, its own process) grows from empty
  to 10M rows by pushes of 4096 new IDs, one at a time from one client, while a second client
  pings it every 5 ms: the longest ping round trip is the longest the shard's event loop could
  not answer (an upper bound: it includes the loopback and both processes' scheduling on this
  host). Baselines: the longest ping on the idle shard (``idle_ping_max_ms``), and
  ``one_go_growth_ms_10m``, what one growth step the old way costs at 10M rows on the
  in-process table: a copy of the row arrays into doubled ones and a rehash of the whole index.
* ``max_push_ms_in_process_10m`` / ``max_push_cpu_ms_in_process_10m``: the same growth in this
  process, straight on a table: the longest push in wall time and in this thread's CPU time (which
  leaves out time the host gave to other processes).
* ``bytes_per_row_10m``: ``nbytes / rows`` of the 10M-row table (arrays, index, change log).

Run: ``python -m benchmarks.param_server``; the last line is JSON.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from param_server.client import ParamServerClient
from param_server.config import EmbeddingConfig, tables_to_json
from param_server.hash_index import HashIndex
from param_server.optimizers import Adagrad
from param_server.table import EmbeddingTable, group_ids

ROWS = 1_000_000
BIG_ROWS = 10_000_000
BATCH = 4096
DIM = 16
SLOT = 2  # item_id, the only table of the RPC shard (dim 16, no expiry)
SECONDS = 2.0
PING_EVERY_S = 0.005
RAW_BYTES_PER_ROW = 8 + 4 * DIM + 4 * DIM  # key + embedding + Adagrad accumulator
SHARD_TABLES = tables_to_json([EmbeddingConfig("item_id", SLOT, dim=DIM, optimizer=Adagrad())])


def zipf_batches(ids: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of positions into ``ids``: Zipf ranks over a random permutation of the IDs."""
    ranks = (rng.zipf(1.1, size=(count, BATCH)) - 1) % ids.size
    return [ranks[i] for i in range(count)]


def rate(step: Callable[[int], None], batches: int) -> float:
    """Keys per second running ``step`` over batch numbers for about SECONDS (after a warm-up)."""
    step(0)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        step(done % batches)
        done += 1
    return done * BATCH / (time.perf_counter() - started)


def filled_table(ids: np.ndarray, chunk_size: int = 65536) -> tuple[EmbeddingTable, np.ndarray, np.ndarray]:
    """A table holding ``ids`` (pushed in chunks, version 1), and each push's wall and CPU ms."""
    table = EmbeddingTable(EmbeddingConfig("item_id", SLOT, dim=DIM, optimizer=Adagrad()))
    started = time.perf_counter()
    zeros = np.zeros((chunk_size, DIM), np.float32)
    wall, cpu = [], []
    for lo in range(0, ids.size, chunk_size):
        chunk = ids[lo: lo + chunk_size]
        began, began_cpu = time.perf_counter(), time.thread_time()
        table.push_many(chunk, zeros[: chunk.size], ts=0.0, version=1)
        cpu.append(time.thread_time() - began_cpu)
        wall.append(time.perf_counter() - began)
    print(f"filled a table with {len(table):,} rows in {time.perf_counter() - started:.2f}s")
    return table, np.array(wall) * 1e3, np.array(cpu) * 1e3


def in_process(ids: np.ndarray, batches: list[np.ndarray], grads: np.ndarray) -> tuple[dict, EmbeddingTable, int]:
    """Push and pull rates on a table of ``ids``; returns them, the table and its last version."""
    table, _, _ = filled_table(ids)
    version = [1]

    def push(i: int) -> None:
        version[0] += 1
        table.push_many(ids[batches[i]], grads, ts=1.0, version=version[0])

    push_rate = rate(push, len(batches))
    pull_rate = rate(lambda i: table.pull_many(ids[batches[i]]), len(batches))
    return {"push_keys_per_s": push_rate, "pull_keys_per_s": pull_rate}, table, version[0]


def median_ms(call: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3


def scan_delta(table: EmbeddingTable, since: int) -> tuple[np.ndarray, np.ndarray]:
    """The delta as it was before the change log: a pass over every row's version, then the gather."""
    rows = np.flatnonzero(table.versions[: table._used] > since)
    return table.keys[rows], table.weights[rows]


def delta_times(table: EmbeddingTable, ids: np.ndarray, version: int, changed: int,
                rng: np.random.Generator) -> tuple[float, float, bool, int]:
    """Push ``changed`` distinct existing IDs after ``version``; time delta(version) and the scan.

    Returns (delta ms, scan ms, whether both return exactly the changed IDs, the new version).
    """
    picked = rng.choice(ids, changed, replace=False)
    zeros = np.zeros((BATCH, DIM), np.float32)
    since = version
    for lo in range(0, changed, BATCH):
        version += 1
        chunk = picked[lo: lo + BATCH]
        table.push_many(chunk, zeros[: chunk.size], ts=1.0, version=version)
    delta = table.delta(since)
    scan_ids, _ = scan_delta(table, since)
    exact = (not delta.full and np.array_equal(np.sort(delta.ids), np.sort(picked))
             and np.array_equal(delta.ids, scan_ids))
    return median_ms(lambda: table.delta(since)), median_ms(lambda: scan_delta(table, since)), exact, version


def one_go_growth_ms(table: EmbeddingTable) -> float:
    """What one growth step cost before (at this size): row arrays copied into doubled ones, and
    the whole index rehashed into a doubled array, in one call."""
    started = time.perf_counter()
    used = table._used
    doubled = []
    for name in ("keys", "weights", "state", "last_ts", "updates", "versions"):
        current = getattr(table, name)
        grown = np.zeros((2 * used,) + current.shape[1:], dtype=current.dtype)
        grown[:used] = current[:used]
        doubled.append(grown)
    keys, rows = table.index.items()
    index = HashIndex(capacity=2 * table.index.capacity)
    index.insert(keys, rows)  # fits at once: one pass over every key
    seconds = time.perf_counter() - started
    del doubled, index, keys, rows
    return seconds * 1e3


def start_shard(snapshots: str) -> tuple[subprocess.Popen, str, int]:
    """A shard (``python -m param_server.main``) in another process, holding one dim-16 table."""
    env = {**os.environ, "RTREC_PS_PORT": "0", "RTREC_METRICS_PORT": "0", "RTREC_PS_TABLES": SHARD_TABLES,
           "RTREC_SNAPSHOT_DIR": snapshots, "RTREC_SNAPSHOT_INTERVAL_S": "3600", "RTREC_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "param_server.main"], env=env,
                              cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    host, port = json.loads(server.stdout.readline())["param_server"].rsplit(":", 1)  # type: ignore[union-attr]
    return server, host, int(port)


def stop_shard(server: subprocess.Popen) -> None:
    # Its final snapshot is not part of the measurement: stop it without one.
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)


class Pinger(threading.Thread):
    """Pings a shard every PING_EVERY_S from its own connection; keeps every round trip."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.client = ParamServerClient(host, port)
        self.round_trips: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        with self.client:
            while not self.done.is_set():
                started = time.perf_counter()
                self.client.ping()
                self.round_trips.append(time.perf_counter() - started)
                self.done.wait(PING_EVERY_S)

    def stop(self) -> np.ndarray:
        self.done.set()
        self.join()
        return np.array(self.round_trips) * 1e3


def rpc_growth(rows: int) -> dict:
    """Grow a shard from empty to ``rows`` rows by pushes of BATCH new IDs while pinging it."""
    ids = (np.uint64(SLOT) << np.uint64(56)) | np.random.default_rng(1).permutation(rows).astype(np.uint64)
    zeros = np.zeros((BATCH, DIM), np.float32)
    with tempfile.TemporaryDirectory() as snapshots:
        server, host, port = start_shard(snapshots)
        try:
            idle = Pinger(host, port)
            idle.start()
            time.sleep(2.0)
            idle_trips = idle.stop()
            pinger = Pinger(host, port)
            push_times = []
            with ParamServerClient(host, port) as client:
                pinger.start()
                started = time.perf_counter()
                for lo in range(0, rows, BATCH):
                    chunk = ids[lo: lo + BATCH]
                    began = time.perf_counter()
                    client.push_many(chunk, zeros[: chunk.size], ts=0.0)
                    push_times.append(time.perf_counter() - began)
                seconds = time.perf_counter() - started
                trips = pinger.stop()
                stats = client.stats()["tables"]["item_id"]
        finally:
            stop_shard(server)
    push_ms = np.array(push_times) * 1e3
    print(f"RPC growth to {stats['rows']:,} rows in {seconds:.1f}s ({len(push_ms)} pushes of {BATCH}): "
          f"ping max {trips.max():.1f} ms, p99 {np.percentile(trips, 99):.1f} ms, p50 {np.median(trips):.2f} ms "
          f"over {trips.size} pings; push max {push_ms.max():.1f} ms, p50 {np.median(push_ms):.1f} ms; "
          f"idle ping max {idle_trips.max():.2f} ms")
    return {"rows": stats["rows"], "max_stall_ms": float(trips.max()), "p99_ping_ms": float(np.percentile(trips, 99)),
            "pings": int(trips.size), "max_push_ms": float(push_ms.max()),
            "p50_push_ms": float(np.median(push_ms)), "idle_ping_max_ms": float(idle_trips.max()),
            "seconds": seconds}


def dense_baseline(batches: list[np.ndarray], grads: np.ndarray) -> float:
    """The same update on a preallocated array indexed by position: no hashing, no bookkeeping."""
    optimizer = Adagrad()
    weights = np.zeros((ROWS, DIM), np.float32)
    state = np.full((ROWS, DIM), optimizer.initial_accumulator, np.float32)

    def push(i: int) -> None:
        positions = batches[i].astype(np.uint64)
        uniq, order, starts, _ = group_ids(positions)
        summed = np.add.reduceat(grads[order], starts, axis=0)
        rows = uniq.astype(np.int64)
        w, s = weights[rows], state[rows]
        optimizer.apply(w, s, summed)
        weights[rows], state[rows] = w, s

    return rate(push, len(batches))


def collisions(table: EmbeddingTable, ids: np.ndarray) -> int:
    """Distinct IDs without their own row holding their own key (must be 0)."""
    rows = table.index.lookup(ids)
    found = rows >= 0
    wrong = np.count_nonzero(table.keys[rows[found]] != ids[found])
    return int(ids.size - np.unique(rows[found]).size + wrong + np.count_nonzero(~found))


def rpc_push(ids: np.ndarray, batches: list[np.ndarray], grads: np.ndarray) -> float:
    """Push through the network client to a shard (``python -m param_server.main``) in another process."""
    with tempfile.TemporaryDirectory() as snapshots:
        server, host, port = start_shard(snapshots)
        try:
            with ParamServerClient(host, port) as client:
                started = time.perf_counter()
                for lo in range(0, ids.size, 65536):
                    chunk = ids[lo: lo + 65536]
                    client.push_many(chunk, np.zeros((chunk.size, DIM), np.float32), ts=0.0)
                print(f"filled the RPC shard with {ids.size:,} rows in {time.perf_counter() - started:.2f}s")
                return rate(lambda i: client.push_many(ids[batches[i]], grads, ts=1.0), len(batches))
        finally:
            stop_shard(server)


def main() -> None:
    rng = np.random.default_rng(0)
    ids = (np.uint64(SLOT) << np.uint64(56)) | rng.permutation(ROWS).astype(np.uint64)
    batches = zipf_batches(ids, 256, rng)
    grads = (rng.standard_normal((BATCH, DIM)) * 0.01).astype(np.float32)
    distinct = np.mean([np.unique(b).size for b in batches[:32]]) / BATCH
    print(f"workload: {ROWS:,} rows, dim {DIM}, Adagrad, batches of {BATCH} with {distinct:.0%} distinct IDs")

    figures, table, version = in_process(ids, batches, grads)
    print(f"in-process push: {figures['push_keys_per_s']:,.0f} keys/s, pull: {figures['pull_keys_per_s']:,.0f} keys/s")
    dense = dense_baseline(batches, grads)
    print(f"dense-array baseline push: {dense:,.0f} keys/s")
    bytes_per_row = table.nbytes / len(table)
    print(f"memory: {bytes_per_row:.1f} bytes/row (raw {RAW_BYTES_PER_ROW}); capacity {table.capacity:,} rows, "
          f"index {table.index.capacity:,} entries")
    collided = collisions(table, ids)
    print(f"collisions among {ROWS:,} distinct IDs: {collided}")
    delta_1m, scan_1m, exact_1m, _ = delta_times(table, ids, version, 1000, rng)
    print(f"delta after 1,000 changed rows at {ROWS:,} rows: {delta_1m:.2f} ms "
          f"(scan of every version: {scan_1m:.2f} ms)")
    del table
    gc.collect()
    rpc = rpc_push(ids, batches, grads)
    print(f"RPC push over loopback: {rpc:,.0f} keys/s")
    # Before the 10M-row table of this process: freeing gigabytes just before made the next
    # process's first page faults slow on this VM (an idle shard missed pings for 170 ms).
    growth = rpc_growth(BIG_ROWS)

    big_ids = (np.uint64(SLOT) << np.uint64(56)) | rng.permutation(BIG_ROWS).astype(np.uint64)
    big, fill_wall, fill_cpu = filled_table(big_ids, BATCH)
    print(f"in-process pushes of {BATCH} new IDs up to {BIG_ROWS:,} rows: wall max {fill_wall.max():.1f} ms, "
          f"p99 {np.percentile(fill_wall, 99):.1f} ms; CPU max {fill_cpu.max():.1f} ms, "
          f"p99 {np.percentile(fill_cpu, 99):.1f} ms, p50 {np.median(fill_cpu):.1f} ms")
    bytes_per_row_10m = big.nbytes / len(big)
    delta_10m_1k, scan_10m_1k, exact_1k, version = delta_times(big, big_ids, 1, 1000, rng)
    delta_10m_100k, scan_10m_100k, exact_100k, _ = delta_times(big, big_ids, version, 100_000, rng)
    print(f"delta at {BIG_ROWS:,} rows after 1,000 changed rows: {delta_10m_1k:.2f} ms (scan {scan_10m_1k:.2f} ms); "
          f"after 100,000: {delta_10m_100k:.2f} ms (scan {scan_10m_100k:.2f} ms)")
    print(f"memory at {BIG_ROWS:,} rows: {bytes_per_row_10m:.1f} bytes/row; capacity {big.capacity:,} rows, "
          f"index {big.index.capacity:,} entries")
    one_go = one_go_growth_ms(big)
    print(f"one growth step the old way at {BIG_ROWS:,} rows (copy to doubled arrays + full rehash): {one_go:.0f} ms")
    print(json.dumps({
        "benchmark": "param_server",
        "push_keys_per_s": round(figures["push_keys_per_s"]),
        "pull_keys_per_s": round(figures["pull_keys_per_s"]),
        "rpc_push_keys_per_s": round(rpc),
        "dense_array_push_keys_per_s": round(dense),
        "ratio_to_dense": round(figures["push_keys_per_s"] / dense, 3),
        "bytes_per_row": round(bytes_per_row, 1),
        "bytes_per_row_ratio": round(bytes_per_row / RAW_BYTES_PER_ROW, 3),
        "collisions": collided,
        "delta_ms_1m_1k": round(delta_1m, 3),
        "delta_ms_10m_1k": round(delta_10m_1k, 3),
        "delta_ms_10m_100k": round(delta_10m_100k, 3),
        "scan_delta_ms_1m_1k": round(scan_1m, 3),
        "scan_delta_ms_10m_1k": round(scan_10m_1k, 3),
        "scan_delta_ms_10m_100k": round(scan_10m_100k, 3),
        "delta_ratio_to_scan_10m_1k": round(delta_10m_1k / scan_10m_1k, 4),
        "deltas_exact": bool(exact_1m and exact_1k and exact_100k),
        "max_stall_ms": round(growth["max_stall_ms"], 1),
        "p99_ping_ms_growing": round(growth["p99_ping_ms"], 2),
        "idle_ping_max_ms": round(growth["idle_ping_max_ms"], 2),
        "max_push_ms_growing": round(growth["max_push_ms"], 1),
        "max_push_ms_in_process_10m": round(float(fill_wall.max()), 1),
        "max_push_cpu_ms_in_process_10m": round(float(fill_cpu.max()), 1),
        "one_go_growth_ms_10m": round(one_go, 1),
        "stall_ratio_to_one_go": round(growth["max_stall_ms"] / one_go, 4),
        "growth_rows": growth["rows"],
        "growth_seconds": round(growth["seconds"], 1),
        "bytes_per_row_10m": round(bytes_per_row_10m, 1),
    }))


if __name__ == "__main__":
    main()
