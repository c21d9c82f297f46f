"""Serve a process's Prometheus metrics over HTTP on its own port, and read another's."""

from __future__ import annotations

import logging
import urllib.request

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)


def serve_metrics(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> str:
    """Start the ``/metrics`` endpoint in a daemon thread (``port`` 0 = a free one); returns its URL."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    url = f"http://{host}:{server.server_port}/metrics"
    log.info("prometheus metrics at %s", url)
    return url


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics endpoint as ``{"name{label=value,...}": value}``, plus per-name sums."""
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
