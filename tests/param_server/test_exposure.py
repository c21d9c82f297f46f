"""A shard refuses to listen anywhere but loopback without RTREC_PS_TOKEN (any peer could overwrite
the model or force snapshots), unless RTREC_ALLOW_UNAUTHENTICATED is set."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from param_server.main import check_exposure
from rtrec.errors import ImproperlyConfigured
from rtrec.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.168.1.7", "param-server-0"])
def test_non_loopback_bind_without_token_is_refused(host: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="RTREC_PS_HOST=.* RTREC_PS_TOKEN is empty.*ALLOW_UNAUTHENTICATED"):
        check_exposure(load_settings(ps_host=host, ps_token=""))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    check_exposure(load_settings(ps_host=host, ps_token=""))


def test_token_or_explicit_opt_out_allows_any_address(caplog: pytest.LogCaptureFixture) -> None:
    check_exposure(load_settings(ps_host="0.0.0.0", ps_token="t0ken"))
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        check_exposure(load_settings(ps_host="0.0.0.0", ps_token="", allow_unauthenticated=True))
    assert "RTREC_PS_TOKEN is empty" in caplog.text


def shard_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RTREC_PS_TOKEN", "RTREC_ALLOW_UNAUTHENTICATED")}
    return {**env, "RTREC_PS_HOST": "0.0.0.0", "RTREC_PS_PORT": "0", "RTREC_METRICS_PORT": "0",
            "RTREC_SNAPSHOT_DIR": str(tmp_path / "snapshots"), **extra}


def test_rtrec_param_server_exits_with_the_reason_before_listening(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "rtrec.cli", "param-server"], cwd=REPO, env=shard_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""  # no ready line: it never listened
    assert "RTREC_PS_HOST=0.0.0.0 is not a loopback address and RTREC_PS_TOKEN is empty" in result.stderr
    assert not (tmp_path / "snapshots").exists()


def test_opt_out_starts_the_shard_on_every_interface(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "param_server.main"], cwd=REPO,
                               env=shard_env(tmp_path, RTREC_ALLOW_UNAUTHENTICATED="1"),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready = json.loads(process.stdout.readline())  # type: ignore[union-attr]
        assert ready["ready"] is True and ready["param_server"].startswith("0.0.0.0:")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
