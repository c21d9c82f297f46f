"""Prometheus metrics of a stream worker, in one place (names ``rtrec_worker_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter("rtrec_worker_events_consumed_total", "Valid events consumed, by action.", ["action"])
EVENTS_DEAD_LETTERED = Counter("rtrec_worker_events_dead_lettered_total", "Invalid messages sent to the DLQ.")
BATCH_SIZE = Histogram("rtrec_worker_batch_size", "Messages per processed micro-batch.",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
BATCH_SECONDS = Histogram("rtrec_worker_batch_seconds", "Time to process one micro-batch end to end.",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
EXAMPLES = Counter("rtrec_worker_examples_total", "Labelled examples produced by the joiner.", ["kind"])
JOINER_PENDING = Gauge("rtrec_worker_joiner_pending", "Impressions waiting for an action in the joiner.")
EVENT_LAG = Gauge("rtrec_worker_event_lag_seconds", "Wall clock minus the newest event time processed.")
BATCH_RETRIES = Counter("rtrec_worker_batch_retries_total", "Micro-batches retried after a Redis or network error.")
