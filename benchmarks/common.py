"""Helpers shared by the benchmarks: scraping Prometheus endpoints, printing the final JSON line."""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics endpoint as ``{"name{label=value,...}": value}`` plus plain ``name`` sums."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
            if labels:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def total(urls: list[str], name: str) -> float:
    """Sum of metric ``name`` (all labels) over several processes."""
    return sum(scrape(url).get(name, 0.0) for url in urls)


def report(name: str, figures: dict) -> None:
    """Print the benchmark's last line: one JSON object (CONTRACT.md)."""
    print(json.dumps({"benchmark": name, **figures}), flush=True)
