"""The measuring helpers of benchmarks/param_server.py on small tables: deltas timed are exact,
the old-style scan agrees with them, and the one-go growth baseline leaves the table alone."""

from __future__ import annotations

import numpy as np

import benchmarks.param_server as bench


def small_table(rows: int = 5000) -> tuple[object, np.ndarray]:
    ids = (np.uint64(bench.SLOT) << np.uint64(56)) | np.arange(rows, dtype=np.uint64)
    table, wall, cpu = bench.filled_table(ids, chunk_size=1024)
    assert wall.size == cpu.size == -(-rows // 1024) and (wall >= 0).all()
    return table, ids


def test_delta_times_change_exactly_the_rows_asked_and_agree_with_the_scan() -> None:
    table, ids = small_table()
    delta_ms, scan_ms, exact, version = bench.delta_times(table, ids, 1, 300, np.random.default_rng(0))
    assert exact and version == 2 and delta_ms >= 0 and scan_ms >= 0
    keys, rows = bench.scan_delta(table, 1)
    assert keys.size == 300 and rows.shape == (300, bench.DIM)
    _, _, exact, version = bench.delta_times(table, ids, version, 2500, np.random.default_rng(1))
    assert exact and version == 2 + 1  # 2500 rows: one push of up to BATCH


def test_the_one_go_growth_baseline_leaves_the_table_as_it_was() -> None:
    table, ids = small_table(3000)
    before = table.pull_many(ids)
    assert bench.one_go_growth_ms(table) > 0
    np.testing.assert_array_equal(table.pull_many(ids), before)
    assert len(table) == 3000
