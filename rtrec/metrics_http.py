"""Serve a process's Prometheus metrics over HTTP on its own port."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def serve_metrics(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> str:
    """Start the ``/metrics`` endpoint in a daemon thread (``port`` 0 = a free one); returns its URL."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    url = f"http://{host}:{server.server_port}/metrics"
    log.info("prometheus metrics at %s", url)
    return url
