"""Prometheus metrics of a parameter-server shard, all in one object built on a given registry.

Request metrics are fed by the server through ``observe_*`` hooks; table figures (rows,
admissions, evictions, bytes, version, snapshot age) are read from the store at scrape time by
a collector, so the store itself never calls Prometheus.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> from param_server.store import ParamStore
>>> registry = CollectorRegistry()
>>> metrics = ParamServerMetrics(registry, ParamStore())
>>> metrics.observe_request("push", keys=4096, seconds=0.002)
>>> text = generate_latest(registry).decode()
>>> "rtrec_param_server_push_keys_total 4096.0" in text, 'rtrec_param_server_table_rows{slot="2",table="item_id"} 0.0' in text
(True, True)
"""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from param_server.store import ParamStore

__all__ = ["ParamServerMetrics"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class ParamServerMetrics:
    """Every metric of one shard, prefixed ``rtrec_param_server_``."""

    def __init__(self, registry: CollectorRegistry, store: ParamStore) -> None:
        prefix = "rtrec_param_server"
        self.request_seconds = Histogram(f"{prefix}_request_duration_seconds", "Time to handle a request, by op.",
                                         ["op"], registry=registry, buckets=_LATENCY_BUCKETS)
        self.pull_keys = Counter(f"{prefix}_pull_keys", "IDs read by pull requests.", registry=registry)
        self.push_keys = Counter(f"{prefix}_push_keys", "IDs (with repeats) in push requests.", registry=registry)
        self.errors = Counter(f"{prefix}_request_errors", "Requests answered with an error, by kind.",
                              ["kind"], registry=registry)
        self.snapshot_seconds = Histogram(f"{prefix}_snapshot_duration_seconds", "Time to write a snapshot.",
                                          registry=registry, buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60))
        self.collector = _StoreCollector(store)
        registry.register(self.collector)

    def observe_request(self, op: str, keys: int, seconds: float) -> None:
        self.request_seconds.labels(op).observe(seconds)
        if op == "pull":
            self.pull_keys.inc(keys)
        elif op == "push":
            self.push_keys.inc(keys)

    def observe_error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def observe_snapshot(self, seconds: float) -> None:
        self.snapshot_seconds.observe(seconds)


class _StoreCollector(Collector):
    """Table figures read from the store at scrape time."""

    def __init__(self, store: ParamStore) -> None:
        self.store = store
        self.started = time.time()

    def collect(self) -> Iterator:
        prefix = "rtrec_param_server"
        rows = GaugeMetricFamily(f"{prefix}_table_rows", "Rows (admitted IDs) per table.", labels=["table", "slot"])
        size = GaugeMetricFamily(f"{prefix}_table_bytes", "Bytes held per table.", labels=["table", "slot"])
        admissions = CounterMetricFamily(f"{prefix}_admissions", "IDs given a row.", labels=["table"])
        evictions = CounterMetricFamily(f"{prefix}_evictions", "Rows evicted by expiry.", labels=["table"])
        for name, table in list(self.store.tables.items()):
            slot = str(table.config.slot)
            rows.add_metric([name, slot], len(table))
            size.add_metric([name, slot], table.nbytes)
            admissions.add_metric([name], table.admissions)
            evictions.add_metric([name], table.evictions)
        yield from (rows, size, admissions, evictions)
        yield GaugeMetricFamily(f"{prefix}_version", "Version of the shard's state.", value=self.store.version)
        last = self.store.last_snapshot.wall_time
        yield GaugeMetricFamily(f"{prefix}_snapshot_age_seconds",
                                "Seconds since the last snapshot (since start when none yet).",
                                value=time.time() - (last if last is not None else self.started))
