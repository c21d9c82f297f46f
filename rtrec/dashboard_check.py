"""``make check-dashboards``: every Grafana panel, queried through a real Prometheus, returns data.

Starts ``rtrec up`` with simulated traffic, sends a few invalid events and calls every serving
endpoint (errors included), and runs a real Prometheus that scrapes every endpoint of the ready
line with the scrape settings and alert rules of ``deploy/prometheus/prometheus.yml``. After a few
scrape intervals it evaluates every PromQL target of every panel through Prometheus's HTTP API
(``$__rate_interval`` as Grafana sets it: four scrape intervals) and prints, per dashboard, the
panels with data. A panel has data when each of its queries returns at least one finite sample;
a panel that is empty by design (errors, retries) must say 0 through ``or vector(0)``.

Checks what an operator would see, with the server an operator runs: a renamed label, a
histogram that is never observed or a metric served by no process shows up here as "no data".
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from rtrec.errors import StackError
from rtrec.stack.process import terminate
from rtrec.stack.prometheus import (PRODUCTION_CONFIG, PrometheusServer, duration_seconds, local_config,
                                    targets_of)

log = logging.getLogger(__name__)

DASHBOARDS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"
READY_TIMEOUT_S = 90.0


@dataclass
class PanelResult:
    """One panel's queries and which of them returned no finite sample."""

    dashboard: str
    title: str
    exprs: list[str]
    empty: list[str] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return not self.empty


def dashboard_panels(directory: Path = DASHBOARDS_DIR) -> Iterator[tuple[str, str, list[str]]]:
    """(dashboard file, panel title, its PromQL targets) for every panel with queries."""
    for path in sorted(directory.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for inner in panel.get("panels", [panel]) if panel["type"] == "row" else [panel]:
                exprs = [t["expr"] for t in inner.get("targets", []) if t.get("expr")]
                if exprs:
                    yield path.name, inner["title"], exprs


def to_promql(expr: str, scrape_interval_s: float) -> str:
    """A Grafana target as plain PromQL: ``$__rate_interval`` is four scrape intervals, as
    Grafana computes it for a short dashboard range; ``$__interval`` is one."""
    rate = f"{int(4 * scrape_interval_s)}s"
    return expr.replace("$__rate_interval", rate).replace("$__interval", f"{int(scrape_interval_s)}s")


def has_finite_sample(result: list[dict[str, Any]]) -> bool:
    """True when an instant-query result holds a sample that a panel can draw (not NaN/Inf)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def evaluate(prometheus: PrometheusServer, scrape_interval_s: float) -> list[PanelResult]:
    """Every panel's every target, evaluated now."""
    results = []
    for dashboard, title, exprs in dashboard_panels():
        panel = PanelResult(dashboard, title, exprs)
        for expr in exprs:
            if not has_finite_sample(prometheus.query(to_promql(expr, scrape_interval_s))):
                panel.empty.append(expr)
        results.append(panel)
    return results


# ---------------------------------------------------------------------------------------------
# traffic a healthy stack would not produce by itself


def _request(url: str, body: dict | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).read()
    except urllib.error.HTTPError:
        pass  # 4xx answers are wanted: they feed rtrec_serving_request_errors_total


def drive_serving(serving: str) -> None:
    """At least one request on every endpoint the serving dashboard shows, a 404 included."""
    for n in range(5):
        _request(f"{serving}/recommend", {"user_id": f"u{n}", "k": 5})
        _request(f"{serving}/score", {"user_id": f"u{n}", "item_ids": ["i1", "i2"]})
    _request(f"{serving}/healthz")
    _request(f"{serving}/similar/items/i1")
    _request(f"{serving}/embeddings/item/no-such-item")  # 404


def send_invalid_events(kafka: str, topic: str) -> None:
    """Two events the worker must dead-letter (feeds the dead-letter panels)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka)
    try:
        producer.send(topic, key=b"u-bad", value=b"not json at all")
        producer.send(topic, key=b"u-bad", value=b'{"event_id": "bad", "action": "click", "ts": "yesterday"}')
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


# ---------------------------------------------------------------------------------------------
# the run


def start_stack(workdir: Path, rate: float) -> tuple[subprocess.Popen, dict[str, Any]]:
    """``rtrec up --rate <rate>`` in a child, its state in a fresh ``workdir/data`` (what a user's
    first ``rtrec up`` has); returns it and its ready line."""
    log_file = (workdir / "rtrec-up.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "up", "--rate", str(rate),
                             "--data-dir", str(workdir / "data")],
                            stdout=subprocess.PIPE, stderr=log_file, text=True)
    line = proc.stdout.readline() if proc.stdout else ""  # rtrec up prints nothing before it
    try:
        ready = json.loads(line)
    except ValueError:
        ready = {}
    if not ready.get("ready"):
        stop_stack(proc)
        raise StackError(f"rtrec up did not start (log: {workdir / 'rtrec-up.log'}): {line!r}")
    return proc, ready


def stop_stack(proc: subprocess.Popen) -> None:
    """Stop ``rtrec up`` (it stops its components first: up to 40 s)."""
    terminate(proc, grace_s=40)


def rule_health(prometheus: PrometheusServer) -> tuple[int, list[str]]:
    """Number of alerting/recording rules Prometheus loaded, and the errors of those that failed."""
    groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    errors = [f"{r['name']}: {r.get('lastError')}" for r in rules if r.get("health") not in ("ok", "unknown")]
    return len(rules), errors


def active_alerts(prometheus: PrometheusServer) -> list[str]:
    """``name (state)`` of every alert pending or firing now: a healthy stack should have none."""
    return sorted(f"{a['labels']['alertname']} ({a['state']})" for a in prometheus.api("alerts")["alerts"])


def targets_up(prometheus: PrometheusServer) -> tuple[int, int]:
    """(targets up, targets scraped)."""
    active = prometheus.api("targets")["activeTargets"]
    return sum(t["health"] == "up" for t in active), len(active)


def check(timeout_s: float = 120.0, rate: float = 300.0, workdir: Path | None = None) -> dict[str, Any]:
    """Run the whole check; returns the summary (``results`` holds every PanelResult)."""
    from rtrec.settings import Settings

    workdir = workdir or Path(tempfile.mkdtemp(prefix="rtrec-dashboards-"))
    production = yaml.safe_load(PRODUCTION_CONFIG.read_text(encoding="utf-8"))
    scrape_s = duration_seconds(production.get("global", {}).get("scrape_interval", "1m"))
    started = time.monotonic()
    proc, ready = start_stack(workdir, rate)
    prometheus: PrometheusServer | None = None
    try:
        send_invalid_events(ready["kafka"], Settings().actions_topic)
        drive_serving(ready["serving"])
        targets = targets_of(ready["metrics"])
        prometheus = PrometheusServer(workdir, local_config(production, targets))
        prometheus.start()
        deadline = time.monotonic() + timeout_s
        time.sleep(3 * scrape_s)  # rate() needs two samples inside four scrape intervals
        while True:
            drive_serving(ready["serving"])
            results = evaluate(prometheus, scrape_s)
            empty = [f"{r.dashboard}: {r.title}" for r in results if not r.has_data]
            log.info("%.0f s: %d panels without data %s", time.monotonic() - started, len(empty), empty[:5])
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(scrape_s)
        up, scraped = targets_up(prometheus)
        rules, rule_errors = rule_health(prometheus)
        alerts = active_alerts(prometheus)
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_stack(proc)
    return {"results": results, "targets_up": up, "targets": scraped, "jobs": sorted(targets),
            "rules": rules, "rule_errors": rule_errors, "alerts": alerts, "scrape_interval_s": scrape_s,
            "seconds": round(time.monotonic() - started, 1)}


def report(summary: dict[str, Any]) -> list[str]:
    """The printed lines: one per dashboard, one per empty panel, then a JSON summary."""
    results: list[PanelResult] = summary["results"]
    lines = []
    for dashboard in sorted({r.dashboard for r in results}):
        mine = [r for r in results if r.dashboard == dashboard]
        lines.append(f"{dashboard}: {sum(r.has_data for r in mine)}/{len(mine)} panels with data")
        for panel in mine:
            for expr in panel.empty:
                lines.append(f"  no data: {panel.title}: {expr}")
    for error in summary["rule_errors"]:
        lines.append(f"rule error: {error}")
    lines.append(json.dumps({
        "dashboards": len({r.dashboard for r in results}), "panels": len(results),
        "panels_with_data": sum(r.has_data for r in results), "targets_up": summary["targets_up"],
        "targets": summary["targets"], "jobs": summary["jobs"], "rules": summary["rules"],
        "rule_errors": len(summary["rule_errors"]), "alerts_active": summary.get("alerts", []),
        "seconds": summary["seconds"]}))
    return lines


def passed(summary: dict[str, Any]) -> bool:
    return (all(r.has_data for r in summary["results"]) and not summary["rule_errors"]
            and summary["targets_up"] == summary["targets"] > 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtrec.dashboard_check", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every panel (120)")
    parser.add_argument("--rate", type=float, default=300.0, help="simulated events/s (300)")
    parser.add_argument("--verbose", action="store_true", help="log each round of queries")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = check(args.timeout, args.rate)
    except StackError as exc:
        print(f"check-dashboards: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report(summary)), flush=True)
    return 0 if passed(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
