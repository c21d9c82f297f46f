"""Helpers shared by the benchmarks: scraping Prometheus endpoints, reading a process tree's CPU time,
printing the final JSON line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rtrec.metrics_http import scrape


def total(urls: list[str], name: str) -> float:
    """Sum of metric ``name`` (all labels) over several processes."""
    return sum(scrape(url).get(name, 0.0) for url in urls)


def report(name: str, figures: dict) -> None:
    """Print the benchmark's last line: one JSON object (CONTRACT.md)."""
    print(json.dumps({"benchmark": name, **figures}), flush=True)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every process below it (Linux /proc):
    what a component costs, which the wall-clock latency of a shared machine hides."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [c for c, parent in parents.items() if parent in frontier and c not in tree]
        tree.update(frontier)
    return sum(used.get(p, 0.0) for p in tree)
