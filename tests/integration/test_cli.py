"""The `rtrec` commands as a user runs them: up, replay, simulate (CONTRACT.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration

RTREC = [sys.executable, "-m", "rtrec.cli"]


def run_rtrec(args: list[str], env: dict[str, str], timeout_s: float = 120) -> dict:
    """Run a command to completion and return its last stdout line as JSON."""
    done = subprocess.run([*RTREC, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                status = (entry / "status").read_text()
            except OSError:
                continue
            if text in cmdline and "State:\tZ" not in status:
                pids.append(int(entry.name))
    return pids


def test_up_prints_ready_line_and_sigterm_leaves_no_server_behind() -> None:
    proc = subprocess.Popen([*RTREC, "up", "--no-simulate", "--ephemeral"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        start = time.monotonic()
        ready = json.loads(proc.stdout.readline())
        assert time.monotonic() - start < 60
        assert ready["ready"] is True
        assert ready["kafka"].startswith("127.0.0.1:") and ready["redis"].startswith("redis://127.0.0.1:")
        assert isinstance(ready["metrics"], list)
        kafka_port = ready["kafka"].rsplit(":", 1)[1]
        redis_port = ready["redis"].rsplit(":", 1)[1].split("/")[0]
        assert processes_mentioning(f"127.0.0.1:{kafka_port}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        time.sleep(0.2)
        assert processes_mentioning(f"tcp://127.0.0.1:{kafka_port}") == []
        assert processes_mentioning(f"--port {redis_port}") == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_replay_of_jsonl_sends_every_event_and_they_can_be_consumed(
        tmp_path: Path, kafka_bootstrap: str, fresh_topic: str) -> None:
    path = tmp_path / "events.jsonl"
    with path.open("w") as f:
        for n in range(2_000):
            f.write(json.dumps({"event_id": f"ev{n}", "user_id": f"u{n % 50}", "item_id": f"i{n % 300}",
                                "action": "click", "ts": 1.7e9 + (2_000 - n)}) + "\n")
        f.write("not json\n")
    summary = run_rtrec(["replay", str(path), "--no-progress"],
                        {"RTREC_KAFKA": kafka_bootstrap, "RTREC_ACTIONS_TOPIC": fresh_topic})
    assert summary["sent"] == 2_000 and summary["skipped"] == 1
    assert summary["skipped_reasons"] == {"not JSON": 1}
    got = consume_all(kafka_bootstrap, fresh_topic, 2_000)
    assert len(got) == 2_000 and {m["event_id"] for m in got} == {f"ev{n}" for n in range(2_000)}
    for partition in {m["partition"] for m in got}:  # within a partition, replay order is event-time order
        ts = [m["ts"] for m in got if m["partition"] == partition]
        assert ts == sorted(ts)


def test_replay_of_movielens_with_limit(kafka_bootstrap: str, fresh_topic: str) -> None:
    summary = run_rtrec(["replay", "--dataset", "ml-100k", "--limit", "500", "--no-progress"],
                        {"RTREC_KAFKA": kafka_bootstrap, "RTREC_ACTIONS_TOPIC": fresh_topic})
    assert summary["sent"] == 500
    got = consume_all(kafka_bootstrap, fresh_topic, 500)
    assert {m["action"] for m in got} == {"rating"} and len(got) == 500


def test_simulate_sends_at_the_requested_rate(kafka_bootstrap: str, fresh_topic: str) -> None:
    summary = run_rtrec(["simulate", "--rate", "400", "--duration", "4", "--users", "100", "--items", "500"],
                        {"RTREC_KAFKA": kafka_bootstrap, "RTREC_ACTIONS_TOPIC": fresh_topic})
    assert 0.85 * 400 <= summary["events_per_s"] <= 1.15 * 400
    got = consume_all(kafka_bootstrap, fresh_topic, summary["sent"])
    assert len(got) == summary["sent"]
    assert {"impression", "click"} <= {m["action"] for m in got}
