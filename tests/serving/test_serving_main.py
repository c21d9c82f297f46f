"""`rtrec serve` as a process: ready line, live API, impressions in Kafka, prompt stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from param_server.server import ServerThread
from serving_fixtures import make_trained
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration


def test_serve_prints_ready_serves_logs_impressions_and_stops_on_sigterm(
        redis_url: str, kafka_bootstrap: str, fresh_topic: str) -> None:
    trained = make_trained(numeric_items=True)  # no features in Redis: names decode from IDs
    with ServerThread(trained.store) as ps:
        env = dict(os.environ, RTREC_PARAM_SERVERS=f"{ps.host}:{ps.port}", RTREC_REDIS_URL=redis_url,
                   RTREC_KAFKA=kafka_bootstrap, RTREC_ACTIONS_TOPIC=fresh_topic, RTREC_HTTP_PORT="0",
                   RTREC_METRICS_PORT="0", RTREC_SYNC_INTERVAL_S="0.5")
        proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "serve"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            assert ready["ready"] is True and ready["metrics"].endswith("/metrics")
            base = ready["serving"]
            health = httpx.get(f"{base}/healthz").json()
            assert health["model_version"] == trained.store.version
            user = next(e.user_id for e in trained.events if e.action == "click")
            body = httpx.post(f"{base}/recommend", json={"user_id": user, "k": 3}).json()
            assert len(body["items"]) == 3
            logged = consume_all(kafka_bootstrap, fresh_topic, expected=3)
            assert sorted(e["item_id"] for e in logged) == sorted(it["item_id"] for it in body["items"])
            assert {e["request_id"] for e in logged} == {body["request_id"]}
            assert "rtrec_serving_model_version" in httpx.get(ready["metrics"]).text
        finally:
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
        assert code == 0 and time.monotonic() - start < 10


def test_serve_processes_share_one_port_and_one_metrics_endpoint(redis_url: str, kafka_bootstrap: str,
                                                                 fresh_topic: str) -> None:
    trained = make_trained(numeric_items=True)
    with ServerThread(trained.store) as ps:
        env = dict(os.environ, RTREC_PARAM_SERVERS=f"{ps.host}:{ps.port}", RTREC_REDIS_URL=redis_url,
                   RTREC_KAFKA=kafka_bootstrap, RTREC_ACTIONS_TOPIC=fresh_topic, RTREC_HTTP_PORT="0",
                   RTREC_METRICS_PORT="0", RTREC_SYNC_INTERVAL_S="0.5", RTREC_LOG_IMPRESSIONS="false")
        proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "serve", "--processes", "2"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            assert ready["ready"] is True and ready["processes"] == 2
            user = next(e.user_id for e in trained.events if e.action == "click")
            for _ in range(40):  # a new connection each: the kernel spreads them over both processes
                with httpx.Client() as client:
                    assert len(client.post(f"{ready['serving']}/recommend", json={"user_id": user, "k": 3})
                               .json()["items"]) == 3
            text = httpx.get(ready["metrics"]).text
            answered = {line.split('process="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("rtrec_serving_request_duration_seconds_count")
                        and 'endpoint="/recommend"' in line}
            assert set(answered) == {"0", "1"} and all(n > 0 for n in answered.values())
            assert sum(answered.values()) == 40
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        assert code == 0
