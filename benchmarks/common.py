"""Helpers shared by the benchmarks: scraping Prometheus endpoints, printing the final JSON line."""

from __future__ import annotations

import json

from rtrec.metrics_http import scrape


def total(urls: list[str], name: str) -> float:
    """Sum of metric ``name`` (all labels) over several processes."""
    return sum(scrape(url).get(name, 0.0) for url in urls)


def report(name: str, figures: dict) -> None:
    """Print the benchmark's last line: one JSON object (CONTRACT.md)."""
    print(json.dumps({"benchmark": name, **figures}), flush=True)
