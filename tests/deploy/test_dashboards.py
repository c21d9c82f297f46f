"""The Grafana dashboards: well-formed dashboard JSON, provisioned, and querying metrics that exist.

The shape checks need nothing running. ``test_every_dashboard_metric_is_exported_by_the_stack``
starts ``rtrec up`` (broker, Redis, parameter server, worker, serving, simulator), drives every
serving endpoint, sends two invalid events, scrapes every endpoint of the ready line's ``metrics``
and requires every ``rtrec_`` name a panel queries to be among the exported sample names
(``x_bucket``/``x_count``/``x_sum`` for histograms, ``x_total`` for counters, ``x`` for gauges).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from rtrec.dashboard_check import drive_serving, send_invalid_events, stop_stack
from rtrec.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
EXPECTED_DASHBOARDS = {"pipeline.json", "training.json", "param-server.json", "serving.json"}
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap"}
METRIC = re.compile(r"\b(rtrec_[a-zA-Z0-9_:]+)")
# rate()/increase() only make sense over counters: histograms' _bucket/_count/_sum and _total.
RATE_ARGUMENT = re.compile(r"\b(?:rate|irate|increase)\((rtrec_[a-zA-Z0-9_:]+)")
STACK_TIMEOUT_S = 75.0


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel with queries, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_metrics() -> dict[str, set[str]]:
    """``rtrec_`` metric name -> the dashboards (file: panel title) that query it."""
    out: dict[str, set[str]] = {}
    for name, dashboard in dashboards().items():
        for panel in query_panels(dashboard):
            for target in panel["targets"]:
                for metric in METRIC.findall(target["expr"]):
                    out.setdefault(metric, set()).add(f"{name}: {panel['title']}")
    return out


def provisioned_datasource_uid() -> str:
    doc = yaml.safe_load(DATASOURCES_FILE.read_text(encoding="utf-8"))
    (prometheus,) = [d for d in doc["datasources"] if d["type"] == "prometheus"]
    return prometheus["uid"]


def readme_section() -> str:
    """The README's "Operating rtrec" section, up to the next second-level heading."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Operating rtrec")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end != -1 else len(readme)]


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA_DIR / "build_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# shape (no servers)


def test_the_four_dashboards_exist_with_unique_uids_and_titles():
    found = dashboards()
    assert set(found) == EXPECTED_DASHBOARDS
    uids = [d["uid"] for d in found.values()]
    titles = [d["title"] for d in found.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for uid in uids:
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid), uid  # Grafana's uid rule


@pytest.mark.parametrize("name", sorted(EXPECTED_DASHBOARDS))
def test_dashboard_is_grafana_dashboard_json(name: str):
    dashboard = dashboards()[name]
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert isinstance(dashboard["title"], str) and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and 36 <= dashboard["schemaVersion"] <= 41
    assert isinstance(dashboard["panels"], list) and dashboard["panels"]
    assert set(dashboard["time"]) == {"from", "to"}
    assert isinstance(dashboard["templating"]["list"], list)
    ids = [p["id"] for p in dashboard["panels"]] + [p["id"] for r in dashboard["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique within a dashboard"
    assert any(p["type"] != "row" for p in dashboard["panels"])


@pytest.mark.parametrize("name", sorted(EXPECTED_DASHBOARDS))
def test_every_panel_has_type_grid_position_and_queries_the_provisioned_prometheus(name: str):
    uid = provisioned_datasource_uid()
    dashboard = dashboards()[name]
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {k: type(v) for k, v in grid.items()} == {"h": int, "w": int, "x": int, "y": int}, panel["title"]
        assert grid["w"] >= 1 and grid["h"] >= 1 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
            assert isinstance(target["expr"], str) and METRIC.search(target["expr"]), panel["title"]


def test_panels_do_not_overlap():
    for name, dashboard in dashboards().items():
        cells: dict[tuple[int, int], str] = {}
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


def test_queries_are_well_formed_promql():
    """Balanced brackets; rate() over counters only; histogram_quantile over _bucket only."""
    for name, dashboard in dashboards().items():
        for panel in query_panels(dashboard):
            for target in panel["targets"]:
                expr, where = target["expr"], f"{name}: {panel['title']}: {target['expr']}"
                for left, right in ("()", "[]", "{}"):
                    depth = 0
                    for char in expr:
                        depth += (char == left) - (char == right)
                        assert depth >= 0, where
                    assert depth == 0, where
                for metric in RATE_ARGUMENT.findall(expr):
                    assert metric.endswith(("_total", "_count", "_bucket", "_sum")), where
                if "histogram_quantile" in expr:
                    assert re.search(r"rtrec_\w+_bucket\b", expr) and re.search(r"\bby \([^)]*\ble\b", expr), where


def test_dashboard_files_are_what_the_builder_writes():
    """deploy/grafana/build_dashboards.py is the source; the JSON files must be regenerated from it."""
    rendered = load_builder().render()
    assert set(rendered) == EXPECTED_DASHBOARDS
    for name, text in rendered.items():
        assert (DASHBOARDS_DIR / name).read_text(encoding="utf-8") == text, \
            f"{name} is stale: run python deploy/grafana/build_dashboards.py"


def test_every_dashboard_metric_is_in_the_readme_metrics_table():
    section = readme_section()
    documented = set(re.findall(r"`(rtrec_[a-z0-9_]+)`", section))
    missing = sorted(m for m in dashboard_metrics()
                     if not ({m, re.sub(r"_(bucket|count|sum)$", "", m)} & documented))
    assert missing == [], f"not in README's Operating rtrec metrics table: {missing}"


# ---------------------------------------------------------------------------------------------
# against a running stack


def exported_names(url: str) -> set[str]:
    from rtrec.metrics_http import scrape

    return {key.split("{", 1)[0] for key in scrape(url)}


@pytest.mark.integration
def test_every_dashboard_metric_is_exported_by_the_stack(tmp_path: Path):
    wanted = dashboard_metrics()
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "up", "--rate", "300", "--data-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert ready["ready"] is True, ready
        # one endpoint per process: parameter server, worker, serving, simulator, rtrec up itself
        assert len(ready["metrics"]) == 5 and len(set(ready["metrics"])) == 5, ready["metrics"]
        send_invalid_events(ready["kafka"], Settings().actions_topic)
        deadline = time.monotonic() + STACK_TIMEOUT_S
        missing = sorted(wanted)
        while missing and time.monotonic() < deadline:
            drive_serving(ready["serving"])
            exported: set[str] = set()
            for url in ready["metrics"]:
                exported |= exported_names(url)
            missing = sorted(m for m in wanted if m not in exported)
            if missing:
                time.sleep(2.0)
        assert missing == [], "queried by a dashboard but exported by no process of the stack:\n" + "\n".join(
            f"  {m}  ({'; '.join(sorted(wanted[m]))})" for m in missing)
    finally:
        stop_stack(proc)
