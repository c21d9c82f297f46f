"""A real Prometheus (the ``prometheus`` binary on PATH) scraping a local stack.

Used by ``make check-dashboards``: it runs the production scrape settings and alert rules of
``deploy/prometheus/prometheus.yml`` against the endpoints of ``rtrec up``'s ready line, so that
a dashboard query is judged by the server operators run, not by a parser written here. Debian and
Ubuntu ship it as the ``prometheus`` package (``apt-get install prometheus``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from rtrec.errors import StackError
from rtrec.metrics_http import scrape
from rtrec.stack.process import ManagedProcess, free_port, wait_for_port

log = logging.getLogger(__name__)

DEPLOY_PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PRODUCTION_CONFIG = DEPLOY_PROMETHEUS / "prometheus.yml"

#: Job name of each rtrec component in deploy/prometheus/prometheus.yml, keyed by the prefix of the
#: metrics only that component exports (the ready line lists endpoints without saying whose).
JOB_BY_PREFIX = {
    "rtrec_param_server_": "rtrec-param-server",
    "rtrec_worker_": "rtrec-worker",
    "rtrec_serving_": "rtrec-serving",
    "rtrec_producer_": "rtrec-simulator",
    "rtrec_stack_": "rtrec-stack",  # the `rtrec up` process itself (its supervisor); local stack only
}


def prometheus_binary() -> str:
    """Path of ``prometheus`` on PATH, or StackError saying how to install it."""
    found = shutil.which("prometheus")
    if not found:
        raise StackError("no prometheus binary on PATH (Debian/Ubuntu: apt-get install prometheus)")
    return found


def job_of(metric_names: Sequence[str]) -> str:
    """The production job name of an endpoint, from the metric names it exports."""
    for prefix, job in JOB_BY_PREFIX.items():
        if any(name.startswith(prefix) for name in metric_names):
            return job
    raise StackError(f"no rtrec component exports these metrics: {sorted(metric_names)[:5]}...")


def local_config(production: Mapping[str, Any], targets: Mapping[str, list[str]],
                 rules_dir: Path = DEPLOY_PROMETHEUS) -> dict[str, Any]:
    """The production config with its global scrape settings and rule files (made absolute), and
    one static job per component over the local ``targets`` (job -> ``host:port`` list)."""
    config: dict[str, Any] = {"global": dict(production.get("global", {}))}
    rule_files = [str((rules_dir / f).resolve()) for f in production.get("rule_files", [])]
    if rule_files:
        config["rule_files"] = rule_files
    config["scrape_configs"] = [{"job_name": job, "static_configs": [{"targets": sorted(hosts)}]}
                                for job, hosts in sorted(targets.items())]
    return config


def targets_of(metrics_urls: Sequence[str], timeout_s: float = 60.0) -> dict[str, list[str]]:
    """Group ``http://host:port/metrics`` endpoints by the production job of what they export.
    A component may export only labelled metrics, which have no series before their first event
    (the simulator's before its first send): such an endpoint is asked again until ``timeout_s``."""
    targets: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout_s
    for url in metrics_urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.path not in ("", "/metrics"):
            raise StackError(f"metrics endpoint {url} is not at /metrics")
        while True:
            try:
                job = job_of([key.split("{", 1)[0] for key in scrape(url)])
                break
            except StackError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        targets.setdefault(job, []).append(parsed.netloc)
    return targets


def duration_seconds(text: str) -> float:
    """A Prometheus duration such as ``5s``, ``1m`` or ``1m30s`` in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        if text[i].isdigit():
            number += text[i]
            i += 1
            continue
        unit = "ms" if text[i:i + 2] == "ms" else text[i]
        if unit not in units or not number:
            raise ValueError(f"not a Prometheus duration: {text!r}")
        total += int(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f"not a Prometheus duration (no unit): {text!r}")
    return total


class PrometheusServer:
    """A Prometheus process on a free loopback port with a config written into ``workdir``."""

    def __init__(self, workdir: Path, config: Mapping[str, Any], host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
        self.process = ManagedProcess(
            "prometheus",
            [prometheus_binary(), f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address={host}:{self.port}", "--log.level=warn"],
            workdir / "prometheus.log",
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Prometheus and wait until it reports ready (config and rules loaded)."""
        proc = self.process.start()
        try:
            wait_for_port(self.host, self.port, timeout_s, proc)
            deadline = time.monotonic() + timeout_s
            while not self._ready():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise StackError("prometheus did not become ready")
                time.sleep(0.2)
        except StackError as exc:
            raise StackError(f"prometheus did not start: {exc}\n{self.process.tail()}") from exc
        log.info("prometheus ready at %s", self.url)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; StackError on an error answer."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query; the body says why
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise StackError(f"prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr`` now."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def stop(self) -> None:
        self.process.stop(grace_s=5.0)
