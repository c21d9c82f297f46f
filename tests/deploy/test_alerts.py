"""The alerting rules: complete for an operator, tested for each alert, about metrics that exist, and
loaded by Prometheus; promtool checks and unit-tests them where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtrec.settings import Settings
from tests.deploy.test_dashboards import readme_section
from tests.deploy.test_metrics_inventory import process_registries

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
SEVERITIES = {"warning", "critical"}
# What an exported family shows up as in PromQL, by type.
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
                   "summary": ("_count", "_sum", "")}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules()]


def exported_series() -> set[str]:
    """Every series name the rtrec processes export (families built without servers)."""
    names = set()
    for registry in process_registries().values():
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}
    return names


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool not on PATH (Debian: apt-get install prometheus); the YAML checks above still ran")
    return subprocess.run([binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# without promtool


def test_every_rule_is_an_alert_with_a_for_a_severity_and_words_for_the_operator():
    assert rules(), "no rules in alerts.yml"
    for rule in rules():
        name = rule.get("alert")
        assert name and re.fullmatch(r"Rtrec[A-Z][A-Za-z]+", name), f"not an rtrec alert: {rule}"
        assert "for" in rule and re.fullmatch(r"\d+[smh]", rule["for"]), f"{name}: `for:` missing or not a duration"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity must be one of {SEVERITIES}"
        annotations = rule.get("annotations", {})
        assert len(annotations.get("summary", "")) >= 20, f"{name}: summary missing or too short"
        assert len(annotations.get("description", "")) >= 100, f"{name}: description must say what to look at"
    assert len(set(alert_names())) == len(alert_names()), "alert names repeat"


def test_every_alert_has_a_firing_and_a_quiet_case_in_the_promtool_tests():
    assert load(ALERTS_TEST)["rule_files"] == ["alerts.yml"]
    cases = [case for test in load(ALERTS_TEST)["tests"] for case in test.get("alert_rule_test", [])]
    for name in alert_names():
        mine = [case for case in cases if case["alertname"] == name]
        firing = [case for case in mine if case.get("exp_alerts")]
        assert firing, f"{name}: no case where it fires"
        assert [case for case in mine if not case.get("exp_alerts")], f"{name}: no case where it stays quiet"
        for case in firing:
            for alert in case["exp_alerts"]:
                assert alert["exp_labels"].get("severity"), f"{name}: a firing case without its labels"
                assert set(alert.get("exp_annotations", {})) == {"summary", "description"}, \
                    f"{name}: a firing case must pin the rendered summary and description"
    unknown = {case["alertname"] for case in cases} - set(alert_names())
    assert not unknown, f"tests for alerts that do not exist: {unknown}"


def test_every_rtrec_metric_an_alert_reads_is_exported_by_the_code():
    exported = exported_series()
    for rule in rules():
        used = set(re.findall(r"\brtrec_[a-z0-9_]+", rule["expr"]))
        assert used - exported == set(), f"{rule['alert']} reads metrics no rtrec process exports"


def test_every_job_an_alert_names_is_scraped_by_prometheus():
    jobs = {job["job_name"] for job in load(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"]}
    for rule in rules():
        for matcher in re.findall(r'job=~?"([^"]+)"', rule["expr"]):
            named = set(matcher.split("|"))
            assert named <= jobs, f"{rule['alert']}: jobs {named - jobs} are not in prometheus.yml"


def test_prometheus_loads_the_alert_rules_from_beside_its_config():
    config = load(PROMETHEUS_DIR / "prometheus.yml")
    assert "alerts.yml" in config.get("rule_files", []), "prometheus.yml does not load alerts.yml"
    assert ALERTS.is_file() and ALERTS.parent == PROMETHEUS_DIR


def test_the_snapshot_alert_threshold_is_three_snapshot_intervals():
    (rule,) = [r for r in rules() if r["alert"] == "RtrecParamServerSnapshotStale"]
    threshold = float(re.search(r"rtrec_param_server_snapshot_age_seconds > (\d+)", rule["expr"]).group(1))
    assert threshold == 3 * Settings.model_fields["snapshot_interval_s"].default


def test_every_alert_is_in_the_readme_alerts_table():
    section = readme_section()
    assert "### Alerts" in section, "README's Operating rtrec section has no Alerts subsection"
    alerts = section[section.index("### Alerts"):]
    documented = set(re.findall(r"^\| `(Rtrec[A-Za-z]+)` \|", alerts, flags=re.MULTILINE))
    assert documented == set(alert_names())


# ---------------------------------------------------------------------------------------------
# with promtool


def test_promtool_accepts_the_rule_file():
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass():
    result = promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
