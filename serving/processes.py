"""``rtrec serve --processes N``: N serving processes behind one port, one metrics endpoint for all.

One Python process answers requests on one core at most (the GIL), so on a machine with more
cores serving scales by processes. Each child is a whole ``rtrec serve``: it syncs from the
parameter server on its own and keeps its own mirror, model and FAISS index (N times the memory
of one, and N times the sync load on the parameter server, which is small next to training's
pushes; sharing one copy through shared memory would save the memory, not request time). The
children bind the same port with ``SO_REUSEPORT``, so the kernel spreads connections over them
evenly (a shared listening socket would let the first idle process take every keep-alive
connection). The parent reserves the port before starting them (bound, never listening) and
releases it once they listen.

The parent serves ``/metrics`` for all of them: each child's samples with a label
``process="<i>"`` (a Prometheus target per child would change every scrape configuration), and
prints one ready line, that of a single process plus ``"processes": N``. If a child dies the
parent stops the others and exits 1 (``rtrec up`` restarts serving as a whole; the port stays).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from rtrec.errors import StackError
from rtrec.metrics_http import serve_metrics
from rtrec.stack.process import ManagedProcess
from rtrec.stack.launcher import read_ready_line

__all__ = ["run_processes", "ChildMetrics", "REUSE_PORT_ENV", "DENSE_PHASE_ENV"]

log = logging.getLogger("serving")

#: Set by the parent in each child's environment: bind the given port with SO_REUSEPORT.
REUSE_PORT_ENV = "RTREC_SERVING_REUSE_PORT"
#: Process k of N gets k / N: its dense syncs (index rebuilds) fall between the others' (serving/sync.py).
DENSE_PHASE_ENV = "RTREC_SERVING_DENSE_PHASE"
#: How long a child may take to sync and print its ready line.
CHILD_READY_TIMEOUT_S = 180.0


class ChildMetrics:
    """A Prometheus collector of the children's ``/metrics``, each sample labelled with its process."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for number, url in enumerate(self.urls):
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    text = response.read().decode()
            except OSError as exc:  # a child restarting: its samples are absent from this scrape
                log.warning("metrics of serving process %d (%s) unreadable: %r", number, url, exc)
                continue
            for family in text_string_to_metric_families(text):
                out = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                            family.unit))
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "process": str(number)}, sample.value,
                                   sample.timestamp, sample.exemplar)
        return list(merged.values())


def run_processes(settings: Any, processes: int) -> int:
    """Run ``processes`` serving children on one port until SIGTERM/SIGINT or one of them dies."""
    host = settings.http_host
    reserved = _reserve(host, settings.http_port)
    port = reserved.getsockname()[1]
    env = {**os.environ, "RTREC_SERVING_PROCESSES": "1", "RTREC_HTTP_PORT": str(port), "RTREC_METRICS_PORT": "0",
           REUSE_PORT_ENV: "1"}
    children = [ManagedProcess(f"serving-{n}", [sys.executable, "-m", "rtrec.cli", "serve"], Path("/dev/stderr"),
                               env={**env, DENSE_PHASE_ENV: str(n / processes)}, stdout=-1)
                for n in range(processes)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        for child in children:  # all start together: each syncs on its own, dense syncs out of phase
            child.start()
        ready = [read_ready_line(child, CHILD_READY_TIMEOUT_S, stop.is_set) for child in children]
        reserved.close()
        registry = CollectorRegistry()
        registry.register(ChildMetrics([r["metrics"] for r in ready]))  # type: ignore[arg-type]
        metrics_url = serve_metrics(settings.metrics_port, settings.metrics_host, registry)
        print(json.dumps({"ready": True, "serving": ready[0]["serving"], "metrics": metrics_url,
                          "processes": processes}), flush=True)
        log.info("%d serving processes at %s, metrics of all at %s", processes, ready[0]["serving"], metrics_url)
        while not stop.wait(0.5):
            dead = [c for c in children if not c.alive()]
            if dead:
                log.error("%s exited with code %s; stopping the other serving processes", dead[0].name,
                          dead[0].returncode)
                return 1
        return 0
    except StackError as exc:
        log.error("serving processes did not start: %s", exc)
        return 1
    finally:
        reserved.close()
        for child in children:
            child.stop(grace_s=15.0)


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0 = a free port) with SO_REUSEPORT and never listening: it
    holds the port for the children, which bind it too, and receives no connection itself."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock
