"""``make check-dashboards``: every panel's queries return data through a real Prometheus.

The pure parts (Grafana variables, durations, the config derived from the production one, which
job an endpoint belongs to) need nothing running. ``test_every_panel_has_data_through_a_real_prometheus``
runs the whole check against ``rtrec up`` where a ``prometheus`` binary is on PATH (``.ci/run``
installs Debian's package when it can).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from rtrec.dashboard_check import (PanelResult, check, dashboard_panels, has_finite_sample, passed, report,
                                   to_promql)
from rtrec.errors import StackError
from rtrec.stack.prometheus import PRODUCTION_CONFIG, duration_seconds, job_of, local_config


def test_rate_interval_is_four_scrape_intervals_as_grafana_sets_it():
    expr = 'sum(rate(rtrec_worker_events_consumed_total[$__rate_interval])) / $__interval'
    assert to_promql(expr, 5.0) == "sum(rate(rtrec_worker_events_consumed_total[20s])) / 5s"


@pytest.mark.parametrize("text,seconds", [("5s", 5), ("1m", 60), ("1m30s", 90), ("250ms", 0.25), ("2h", 7200)])
def test_prometheus_durations_are_read_in_seconds(text: str, seconds: float):
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "s", "5x", "1m30"])
def test_a_malformed_duration_is_refused(text: str):
    with pytest.raises(ValueError):
        duration_seconds(text)


def test_endpoints_are_given_the_production_job_of_what_they_export():
    assert job_of(["rtrec_param_server_version", "python_info"]) == "rtrec-param-server"
    assert job_of(["rtrec_worker_batch_size_bucket", "rtrec_trainer_auc"]) == "rtrec-worker"
    assert job_of(["rtrec_serving_index_items"]) == "rtrec-serving"
    assert job_of(["rtrec_producer_events_sent_total"]) == "rtrec-simulator"
    with pytest.raises(StackError):
        job_of(["python_info"])


def test_every_production_job_name_is_a_job_of_deploy_prometheus_yml():
    """Alert rules select by job; the local config must use the names production scrapes under."""
    production = yaml.safe_load(PRODUCTION_CONFIG.read_text(encoding="utf-8"))
    jobs = {c["job_name"] for c in production["scrape_configs"]}
    for job in ("rtrec-param-server", "rtrec-worker", "rtrec-serving", "rtrec-simulator"):
        assert job in jobs


def test_local_config_keeps_production_scrape_settings_and_rules(tmp_path: Path):
    production = {"global": {"scrape_interval": "5s", "scrape_timeout": "4s"}, "rule_files": ["alerts.yml"],
                  "scrape_configs": [{"job_name": "rtrec-worker", "dns_sd_configs": [{"names": ["worker"]}]}]}
    config = local_config(production, {"rtrec-worker": ["127.0.0.1:2", "127.0.0.1:1"]}, rules_dir=tmp_path)
    assert config["global"] == production["global"]
    assert config["rule_files"] == [str(tmp_path / "alerts.yml")]
    assert config["scrape_configs"] == [
        {"job_name": "rtrec-worker", "static_configs": [{"targets": ["127.0.0.1:1", "127.0.0.1:2"]}]}]


def test_nan_and_empty_results_are_not_data():
    assert not has_finite_sample([])
    assert not has_finite_sample([{"metric": {}, "value": [0, "NaN"]}, {"metric": {}, "value": [0, "+Inf"]}])
    assert has_finite_sample([{"metric": {}, "value": [0, "NaN"]}, {"metric": {"a": "b"}, "value": [0, "0"]}])


def test_every_panel_of_every_dashboard_is_checked():
    panels = list(dashboard_panels())
    assert {d for d, _, _ in panels} == {"pipeline.json", "training.json", "param-server.json", "serving.json"}
    assert len(panels) >= 40 and all(exprs for _, _, exprs in panels)


def test_one_empty_panel_fails_the_check_and_is_named():
    results = [PanelResult("a.json", "Full", ["x"]), PanelResult("a.json", "Empty", ["y", "z"], empty=["z"])]
    summary = {"results": results, "targets_up": 4, "targets": 4, "jobs": [], "rules": 1, "rule_errors": [],
               "seconds": 1.0}
    lines = report(summary)
    assert lines[0] == "a.json: 1/2 panels with data" and lines[1] == "  no data: Empty: z"
    assert not passed(summary)
    results[1].empty.clear()
    assert passed(summary)
    assert not passed({**summary, "targets_up": 3})
    assert not passed({**summary, "rule_errors": ["HighLag: bad expr"]})


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary (apt-get install prometheus)")
def test_every_panel_has_data_through_a_real_prometheus(tmp_path: Path):
    summary = check(timeout_s=150.0, rate=300.0, workdir=tmp_path)
    lines = report(summary)
    print("\n".join(lines))
    assert passed(summary), "\n".join(lines)
    assert summary["rules"] > 0, "deploy/prometheus/prometheus.yml loads no rules"
