"""Benchmark of the parameter server: push/pull throughput, memory per row, collisions.

Workload: one slot, dim 16, Adagrad, a table of 1M rows, batches of 4096 IDs drawn Zipf-like
(a = 1.1, so about a third of a batch is distinct, like real click streams). Baseline, measured in
the same run: the same Adagrad update (same dedup and optimizer code) on a plain preallocated
numpy array indexed by position -- the speed limit of any table. The RPC figure pushes through
the network client over loopback to a shard in another process.

Run: ``python -m benchmarks.param_server``; the last line is JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from param_server.client import ParamServerClient
from param_server.config import EmbeddingConfig
from param_server.optimizers import Adagrad
from param_server.table import EmbeddingTable, group_ids

ROWS = 1_000_000
BATCH = 4096
DIM = 16
SLOT = 2  # item_id in the default configuration, so the RPC shard needs no special config
SECONDS = 2.0
RAW_BYTES_PER_ROW = 8 + 4 * DIM + 4 * DIM  # key + embedding + Adagrad accumulator


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


def in_process(ids: np.ndarray, batches: list[np.ndarray], grads: np.ndarray) -> tuple[dict, EmbeddingTable]:
    table = EmbeddingTable(EmbeddingConfig("item_id", SLOT, dim=DIM, optimizer=Adagrad()))
    started = time.perf_counter()
    for lo in range(0, ids.size, 65536):
        chunk = ids[lo: lo + 65536]
        table.push_many(chunk, np.zeros((chunk.size, DIM), np.float32), ts=0.0, version=1)
    print(f"filled a table with {len(table):,} rows in {time.perf_counter() - started:.2f}s")
    version = [1]

    def push(i: int) -> None:
        version[0] += 1
        table.push_many(ids[batches[i]], grads, ts=1.0, version=version[0])

    push_rate = rate(push, len(batches))
    pull_rate = rate(lambda i: table.pull_many(ids[batches[i]]), len(batches))
    return {"push_keys_per_s": push_rate, "pull_keys_per_s": pull_rate}, table


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
        env = {**os.environ, "RTREC_PS_PORT": "0", "RTREC_METRICS_PORT": "0",
               "RTREC_SNAPSHOT_DIR": snapshots, "RTREC_SNAPSHOT_INTERVAL_S": "3600", "RTREC_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", "param_server.main"], env=env,
                                  cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
        try:
            host, port = json.loads(server.stdout.readline())["param_server"].rsplit(":", 1)  # type: ignore[union-attr]
            with ParamServerClient(host, int(port)) as client:
                started = time.perf_counter()
                for lo in range(0, ids.size, 65536):
                    chunk = ids[lo: lo + 65536]
                    client.push_many(chunk, np.zeros((chunk.size, DIM), np.float32), ts=0.0)
                print(f"filled the RPC shard with {ids.size:,} rows in {time.perf_counter() - started:.2f}s")
                return rate(lambda i: client.push_many(ids[batches[i]], grads, ts=1.0), len(batches))
        finally:
            # Its final snapshot (~190 MB) is not part of the measurement: stop it without one.
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)


def main() -> None:
    rng = np.random.default_rng(0)
    ids = (np.uint64(SLOT) << np.uint64(56)) | rng.permutation(ROWS).astype(np.uint64)
    batches = zipf_batches(ids, 256, rng)
    grads = (rng.standard_normal((BATCH, DIM)) * 0.01).astype(np.float32)
    distinct = np.mean([np.unique(b).size for b in batches[:32]]) / BATCH
    print(f"workload: {ROWS:,} rows, dim {DIM}, Adagrad, batches of {BATCH} with {distinct:.0%} distinct IDs")

    figures, table = in_process(ids, batches, grads)
    print(f"in-process push: {figures['push_keys_per_s']:,.0f} keys/s, pull: {figures['pull_keys_per_s']:,.0f} keys/s")
    dense = dense_baseline(batches, grads)
    print(f"dense-array baseline push: {dense:,.0f} keys/s")
    bytes_per_row = table.nbytes / len(table)
    print(f"memory: {bytes_per_row:.1f} bytes/row (raw {RAW_BYTES_PER_ROW}); capacity {table.capacity:,} rows, "
          f"index {table.index.capacity:,} entries")
    collided = collisions(table, ids)
    print(f"collisions among {ROWS:,} distinct IDs: {collided}")
    del table
    rpc = rpc_push(ids, batches, grads)
    print(f"RPC push over loopback: {rpc:,.0f} keys/s")
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
    }))


if __name__ == "__main__":
    main()
