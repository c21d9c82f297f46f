"""Writes rtrec's Grafana dashboards (``dashboards/*.json``) from the panel lists below.

The JSON files are what Grafana provisions; this script is their source, so a panel is one line
here instead of forty lines of JSON. After editing, run ``python deploy/grafana/build_dashboards.py``
(``tests/deploy/test_dashboards.py`` fails while the files and this script disagree, and checks
every ``rtrec_`` metric a panel queries against a running local stack).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yml
SCHEMA_VERSION = 39
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    """One panel: queries as ``(expr, legend)`` pairs, a Grafana unit, and its width (24 = full)."""

    title: str
    description: str
    queries: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str


def quantiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99),
              window: str = RATE) -> list[tuple[str, str]]:
    """``histogram_quantile`` queries over ``<metric>_bucket`` summed over instances (kept: ``by``).
    ``window``: longer than ``$__rate_interval`` for a histogram observed less often than that."""
    keep = f"le, {by}" if by else "le"
    legend_by = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, sum by ({keep}) (rate({metric}_bucket[{window}])))",
             f"{legend_by}p{round(q * 100)}") for q in qs]


def rate_by(metric: str, by: str = "", legend: str = "") -> tuple[str, str]:
    if by:
        return f"sum by ({by}) (rate({metric}[{RATE}]))", legend or f"{{{{{by}}}}}"
    return f"sum(rate({metric}[{RATE}]))", legend or "total"


PIPELINE = [
    Row("Throughput"),
    Panel("Events consumed / s by action", "Valid events the workers took into micro-batches (a retried batch "
          "counts again).", [rate_by("rtrec_worker_events_consumed_total", "action")], "ops"),
    Panel("Events processed / s by action", "Events whose batch completed: features written and examples "
          "trained. Below consumed only while batches fail and are retried.",
          [rate_by("rtrec_worker_events_processed_total", "action")], "ops"),
    Panel("Dead-lettered / s by action", "Invalid messages sent to actions.dlq, by the action they claim "
          "(unknown = no readable action). Any sustained rate means a producer sends bad events.",
          [rate_by("rtrec_worker_events_dead_lettered_total", "action")], "ops"),
    Panel("Events produced / s by action", "Events acknowledged by Kafka from rtrec's producers (simulator, "
          "replay) and delivery errors.",
          [rate_by("rtrec_producer_events_sent_total", "action"),
           rate_by("rtrec_producer_delivery_errors_total", legend="delivery errors")], "ops"),
    Row("Lag"),
    Panel("Consumer lag (messages) by partition", "End offset minus the worker group's committed offset. "
          "Each partition is reported by the worker it is assigned to; max per partition absorbs the few "
          "seconds after a rebalance when two workers report one partition. Growing = workers fall behind: "
          "add workers (up to the partition count).",
          [("max by (topic, partition) (rtrec_worker_consumer_lag_messages)", "{{topic}}/{{partition}}"),
           ("sum(max by (topic, partition) (rtrec_worker_consumer_lag_messages))", "total")], "short"),
    Panel("Event-time lag", "Wall clock minus the newest event time in the last processed batch, per worker.",
          [("rtrec_worker_event_lag_seconds", "{{instance}}")], "s"),
    Row("Micro-batches"),
    Panel("Batch size", "Messages per micro-batch (quantiles over all workers). Near the configured "
          "RTREC_WORKER_BATCH_SIZE = the workers are saturated.", quantiles("rtrec_worker_batch_size"), "short"),
    Panel("Batch latency", "Validate + features + join + train for one micro-batch.",
          quantiles("rtrec_worker_batch_seconds"), "s"),
    Panel("Batch failures / s", "Micro-batches that raised (Redis or a parameter-server shard away) and are "
          "retried; and failed readings of the consumer lag.",
          [rate_by("rtrec_worker_batch_failures_total", legend="batch failures"),
           rate_by("rtrec_worker_consumer_lag_errors_total", legend="lag read errors")], "ops"),
    Row("Feature store and joiner"),
    Panel("Redis write latency", "One pipelined, idempotent feature write of a batch.",
          quantiles("rtrec_features_redis_write_seconds"), "s"),
    Panel("Feature writes / s", "Events whose feature effects were applied, and redelivered events skipped "
          "by event_id.",
          [rate_by("rtrec_features_events_applied_total", legend="applied"),
           rate_by("rtrec_features_events_duplicate_total", legend="duplicate (skipped)")], "ops"),
    Panel("Joiner state", "Impressions waiting in the joiner for an action within the join window, per worker.",
          [("rtrec_worker_joiner_pending", "{{instance}}")], "short"),
    Panel("Joiner outcomes / s", "positive = impression joined with an action; negative = window passed "
          "without one; positive_only = action without impression; evicted = closed early (state full); "
          "unmatched_late = action after its impression was closed.",
          [rate_by("rtrec_worker_joiner_outcomes_total", "outcome")], "ops"),
    Panel("Join rate", "Share of closed impressions that were joined with an action (the stream's CTR as "
          "the trainer sees it).",
          [(f'sum(rate(rtrec_worker_joiner_outcomes_total{{outcome="positive"}}[{RATE}])) / '
            f'sum(rate(rtrec_worker_joiner_outcomes_total{{outcome=~"positive|negative|evicted"}}[{RATE}]))',
            "joined share")], "percentunit", width=24, extra={"min": 0}),
]

TRAINING = [
    Row("Progress"),
    Panel("Training examples / s", "Examples trained on, all workers and per worker.",
          [rate_by("rtrec_trainer_examples_total"),
           (f"rate(rtrec_trainer_examples_total[{RATE}])", "{{instance}}")], "ops"),
    Panel("Examples by label", "Examples produced by the joiner, by kind.",
          [rate_by("rtrec_worker_examples_total", "kind")], "ops"),
    Row("Quality"),
    Panel("Rolling click AUC", "Prequential AUC of each worker's model on the examples it is about to "
          "learn from (predicted before the update).", [("rtrec_trainer_auc", "{{instance}}")], "short",
          extra={"min": 0, "max": 1}),
    Panel("Rolling loss", "Mean loss per example over the last batches, per worker.",
          [("rtrec_trainer_loss", "{{instance}}")], "short"),
    Row("Steps"),
    Panel("Training step latency", "One train_many: pull, forward, backward, push.",
          quantiles("rtrec_trainer_batch_duration_seconds"), "s"),
    Panel("Batches and pushed IDs / s", "Training steps per second and distinct feature IDs pushed.",
          [rate_by("rtrec_trainer_batches_total", legend="batches"),
           rate_by("rtrec_trainer_pushed_ids_total", legend="pushed IDs")], "ops"),
    Panel("Dense syncs / s", "Syncs of the dense weights with the parameter server.",
          [rate_by("rtrec_trainer_dense_syncs_total", legend="dense syncs")], "ops"),
    Panel("Recovery replays", "Replays of events for parameter-server shards that restarted from a snapshot.",
          [("sum(increase(rtrec_worker_recovery_replays_total[5m]))", "replays (5 min)"),
           ("sum(increase(rtrec_worker_recovery_replayed_events_total[5m]))", "replayed events (5 min)")],
          "short"),
]

PARAM_SERVER = [
    Row("Tables"),
    Panel("Rows per slot", "Admitted IDs per table (slot), summed over shards. Grows without collisions; "
          "expiry keeps it bounded.",
          [("sum by (table, slot) (rtrec_param_server_table_rows)", "{{table}} (slot {{slot}})")], "short"),
    Panel("Memory per table", "Bytes held per table, summed over shards.",
          [("sum by (table) (rtrec_param_server_table_bytes)", "{{table}}")], "bytes"),
    Panel("Admissions / s", "IDs given a row (they passed the slot's admission threshold).",
          [rate_by("rtrec_param_server_admissions_total", "table")], "ops"),
    Panel("Evictions / s", "Rows removed by expiry.", [rate_by("rtrec_param_server_evictions_total", "table")],
          "ops"),
    Row("Requests"),
    Panel("Pull and push latency", "Server-side time of pull and push requests (all shards).",
          [(f'histogram_quantile({q}, sum by (le, op) (rate('
            f'rtrec_param_server_request_duration_seconds_bucket{{op=~"pull|push"}}[{RATE}])))', f"{{{{op}}}} p{p}")
           for q, p in ((0.5, 50), (0.99, 99))], "s"),
    Panel("Requests / s by op", "Every request kind: pull, push, delta (serving sync), dense, snapshot, ...",
          [rate_by("rtrec_param_server_request_duration_seconds_count", "op")], "reqps"),
    Panel("Keys / s", "IDs read by pulls and IDs (with repeats) in pushes.",
          [rate_by("rtrec_param_server_pull_keys_total", legend="pulled"),
           rate_by("rtrec_param_server_push_keys_total", legend="pushed")], "ops"),
    Panel("Request errors / s", "Requests answered with an error, by kind (0 while there are none: the "
          "counter has no series before its first error).",
          [(f"sum by (kind) (rate(rtrec_param_server_request_errors_total[{RATE}])) or vector(0)", "{{kind}}")],
          "ops"),
    Row("Snapshots and versions"),
    Panel("Snapshot age", "Seconds since each shard's last snapshot (since start when none). More than two "
          "snapshot intervals = snapshots fail.",
          [("rtrec_param_server_snapshot_age_seconds", "{{instance}}")], "s"),
    Panel("Snapshot duration", "Time to write one atomic snapshot, over the last 10 minutes (a shard "
          "snapshots once per RTREC_SNAPSHOT_INTERVAL_S, 60 s by default: a shorter window would be empty "
          "between two snapshots).",
          quantiles("rtrec_param_server_snapshot_duration_seconds", qs=(0.5, 0.99), window="10m"), "s"),
    Panel("Shard version", "Version of each shard's state (moves with every push).",
          [("rtrec_param_server_version", "{{instance}}")], "short", width=24),
]

SERVING = [
    Row("Requests"),
    Panel("Requests / s by endpoint", "HTTP requests by route.",
          [rate_by("rtrec_serving_request_duration_seconds_count", "endpoint")], "reqps"),
    Panel("Latency by endpoint (p99)", "99th percentile of request latency per route.",
          quantiles("rtrec_serving_request_duration_seconds", "endpoint", (0.99,)), "s"),
    Panel("Latency of /recommend", "Quantiles of /recommend: retrieval, ranking and business rules.",
          [(f'histogram_quantile({q}, sum by (le) (rate('
            f'rtrec_serving_request_duration_seconds_bucket{{endpoint="/recommend"}}[{RATE}])))', f"p{p}")
           for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))], "s"),
    Panel("Errors / s", "Responses with status >= 400, by route and status.",
          [(f"sum by (endpoint, status) (rate(rtrec_serving_request_errors_total[{RATE}])) or vector(0)",
            "{{endpoint}} {{status}}")], "reqps"),
    Panel("Cold-start share", "Share of /recommend answered by the cold-start list (trending/popular), "
          "over the rate window, and since the process started.",
          [(f'sum(rate(rtrec_serving_recommendations_total{{path="cold_start"}}[{RATE}])) / '
            f"sum(rate(rtrec_serving_recommendations_total[{RATE}]))", "window"),
           ("rtrec_serving_cold_start_share", "since start {{instance}}")], "percentunit",
          extra={"min": 0, "max": 1}),
    Panel("Impressions logged / s", "Served lists logged back to Kafka as impression events (the joiner's "
          "input), and failures.",
          [rate_by("rtrec_serving_impressions_logged_total", legend="logged"),
           rate_by("rtrec_serving_impression_errors_total", legend="errors")], "ops"),
    Row("Freshness"),
    Panel("Sync age", "Seconds since each replica's last successful sync with the parameter server "
          "(freshness of what it serves).", [("rtrec_serving_sync_age_seconds", "{{instance}}")], "s",
          kind="stat", width=6),
    Panel("Model version", "Sparse model version (delta cursor) and dense weights version served.",
          [("max(rtrec_serving_model_version)", "sparse"), ("max(rtrec_serving_dense_version)", "dense")],
          "short", kind="stat", width=6),
    Panel("FAISS index size", "Items in each replica's retrieval index.",
          [("rtrec_serving_index_items", "{{instance}}")], "short", kind="stat", width=6),
    Panel("Sync errors (1 h)", "Syncs that failed (serving kept the old state).",
          [("sum(increase(rtrec_serving_sync_errors_total[1h]))", "errors")], "short", kind="stat", width=6),
    Panel("Sync age over time", "Freshness per replica.", [("rtrec_serving_sync_age_seconds", "{{instance}}")],
          "s"),
    Panel("Sync duration", "Time of one sync (delta pull and index update).",
          quantiles("rtrec_serving_sync_duration_seconds", qs=(0.5, 0.99)), "s"),
    Panel("Rows synced / s", "Sparse rows applied from deltas and removed by them.",
          [rate_by("rtrec_serving_rows_synced_total", legend="applied"),
           rate_by("rtrec_serving_rows_evicted_total", legend="evicted")], "ops"),
    Panel("Model version over time", "Sparse and dense versions per replica.",
          [("rtrec_serving_model_version", "sparse {{instance}}"),
           ("rtrec_serving_dense_version", "dense {{instance}}")], "short"),
]

DASHBOARDS = {
    "pipeline.json": ("rtrec-pipeline", "rtrec / Pipeline health",
                      "Kafka to Redis and the joiner: throughput, lag, micro-batches, dead letters.", PIPELINE),
    "training.json": ("rtrec-training", "rtrec / Training",
                      "The online trainer: examples/s, rolling AUC and loss, step latency.", TRAINING),
    "param-server.json": ("rtrec-param-server", "rtrec / Parameter server",
                          "Collisionless tables, admissions, evictions, pull/push latency, snapshots.",
                          PARAM_SERVER),
    "serving.json": ("rtrec-serving", "rtrec / Serving",
                     "Request latency by endpoint, freshness of the synced model, FAISS size, cold-start share.",
                     SERVING),
}


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    targets = [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                "range": True, "instant": False, "editorMode": "code"}
               for i, (expr, legend) in enumerate(panel.queries)]
    defaults: dict = {"unit": panel.unit, **panel.extra}
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False}
        options: dict = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                         "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto",
                   "orientation": "auto"}
    return {"id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
            "datasource": DATASOURCE, "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options, "targets": targets}


def dashboard_json(uid: str, title: str, description: str, items: list[Panel | Row]) -> dict:
    panels, x, y, row_height = [], 0, 0, 0
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y, x, row_height = y + row_height, 0, 0
            panels.append({"id": panel_id, "type": "row", "title": item.title, "collapsed": False, "panels": [],
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
            y += 1
            continue
        if x + item.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(panel_json(item, panel_id, x, y))
        x, row_height = x + item.width, max(row_height, item.height)
    return {
        "uid": uid, "title": title, "description": description, "tags": ["rtrec"], "editable": False,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "timezone": "browser", "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"}, "graphTooltip": 1, "fiscalYearStartMonth": 0, "liveNow": False,
        "links": [{"title": "rtrec", "type": "dashboards", "tags": ["rtrec"], "asDropdown": True}],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": []},
        "panels": panels,
    }


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(dashboard_json(uid, title, desc, items), indent=2) + "\n"
            for name, (uid, title, desc, items) in DASHBOARDS.items()}


def main() -> int:
    for name, text in render().items():
        (DASHBOARDS_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {DASHBOARDS_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
