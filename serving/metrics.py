"""Every Prometheus metric of serving (``rtrec_serving_*``), built once on the registry passed in."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServingMetrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServingMetrics:
    """Sync, request and impression-log metrics; business code calls these methods, not Prometheus."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "rtrec_serving"
        self.registry = registry
        self.model_version = Gauge(f"{p}_model_version", "Sparse model version (delta cursor) serving reads.",
                                   registry=registry)
        self.dense_version = Gauge(f"{p}_dense_version", "Version of the dense weights serving runs.",
                                   registry=registry)
        self.synced_at = 0.0
        Gauge(f"{p}_sync_age_seconds", "Seconds since the last successful sync.",
              registry=registry).set_function(lambda: time.time() - self.synced_at if self.synced_at else float("nan"))
        self.rows_synced = Counter(f"{p}_rows_synced", "Sparse rows applied from deltas.", registry=registry)
        self.rows_evicted = Counter(f"{p}_rows_evicted", "Sparse rows removed by deltas.", registry=registry)
        self.sync_errors = Counter(f"{p}_sync_errors", "Syncs that failed (kept serving the old state).",
                                   registry=registry)
        self.sync_seconds = Histogram(f"{p}_sync_duration_seconds",
                                      "Time of one sync after its delta arrived (not the long-poll wait).",
                                      registry=registry,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
        self.index_rebuild_seconds = Histogram(
            f"{p}_index_rebuild_duration_seconds",
            "Time to re-embed every item and rebuild the retrieval index (after new dense weights).",
            registry=registry, buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.index_items = Gauge(f"{p}_index_items", "Items in the retrieval index.", registry=registry)
        self.latency = Histogram(f"{p}_request_duration_seconds", "Request latency by endpoint.", ["endpoint"],
                                 registry=registry, buckets=LATENCY_BUCKETS)
        self.errors = Counter(f"{p}_request_errors", "Requests answered with an error, by endpoint and status.",
                              ["endpoint", "status"], registry=registry)
        self.recommendations = Counter(f"{p}_recommendations", "/recommend responses, by path (model or cold_start).",
                                       ["path"], registry=registry)
        Gauge(f"{p}_cold_start_share", "Share of /recommend responses served by the cold-start list.",
              registry=registry).set_function(self._cold_share)
        self.impressions_logged = Counter(f"{p}_impressions_logged",
                                          "Impression events Kafka acknowledged (reported by the impression-sender process).",
                                          registry=registry)
        self.impression_errors = Counter(f"{p}_impression_errors", "Impression events that could not be logged.",
                                         registry=registry)

    def observe_sync(self, model_version: int, rows: int, evicted: int, seconds: float) -> None:
        self.model_version.set(model_version)
        self.rows_synced.inc(rows)
        self.rows_evicted.inc(evicted)
        self.sync_seconds.observe(seconds)
        self.synced_at = time.time()

    def _cold_share(self) -> float:
        cold = self.recommendations.labels("cold_start")._value.get()
        model = self.recommendations.labels("model")._value.get()
        return cold / (cold + model) if cold + model else 0.0
