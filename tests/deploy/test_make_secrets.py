"""`make secrets`: a 0600 .env with random values for what docker-compose.yml requires, never
overwriting one that exists."""

from __future__ import annotations

import doctest
import re
import stat
import subprocess
import sys
from pathlib import Path

from test_compose import ROOT, load_make_secrets

SCRIPT = ROOT / "deploy" / "make_secrets.py"
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
make_secrets = load_make_secrets()


def run(path: Path) -> subprocess.CompletedProcess[str]:
    """The script as `make secrets` runs it: any python, standard library only."""
    return subprocess.run([sys.executable, "-I", str(SCRIPT), str(path)], capture_output=True, text=True,
                          timeout=30, check=True)


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines()
                if "=" in line and not line.startswith("#"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fresh_env_file_gets_three_random_values_mode_0600(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    result = run(env)
    values = read_env(env)
    assert set(values) == {"RTREC_API_KEY", "RTREC_PS_TOKEN", "GRAFANA_ADMIN_PASSWORD"}
    assert all(TOKEN.fullmatch(v) for v in values.values()) and len(set(values.values())) == 3
    assert mode(env) == 0o600
    assert not any(v in result.stdout + result.stderr for v in values.values()), "secrets printed"
    other = tmp_path / "other.env"
    run(other)
    assert not set(read_env(other).values()) & set(values.values()), "values are not random"


def test_existing_values_and_lines_are_kept_and_missing_ones_added(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# mine\nRTREC_API_KEY=my-key\nPUBLISH_HOST=0.0.0.0\nGRAFANA_ADMIN_PASSWORD=\n", encoding="utf-8")
    env.chmod(0o644)
    run(env)
    lines = env.read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["# mine", "RTREC_API_KEY=my-key", "PUBLISH_HOST=0.0.0.0"]
    assert re.fullmatch(r"GRAFANA_ADMIN_PASSWORD=[A-Za-z0-9_-]{43}", lines[3]), "empty value filled in place"
    assert re.fullmatch(r"RTREC_PS_TOKEN=[A-Za-z0-9_-]{43}", lines[4]) and len(lines) == 5
    assert mode(env) == 0o600


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    run(env)
    before, inode, mtime = env.read_bytes(), env.stat().st_ino, env.stat().st_mtime_ns
    result = run(env)
    assert env.read_bytes() == before and env.stat().st_ino == inode and env.stat().st_mtime_ns == mtime
    assert "kept RTREC_API_KEY, RTREC_PS_TOKEN, GRAFANA_ADMIN_PASSWORD" in result.stdout
    assert make_secrets.write_secrets(env) == []


def test_module_examples_hold() -> None:
    assert doctest.testmod(make_secrets, optionflags=doctest.ELLIPSIS).failed == 0


def test_make_secrets_target_runs_the_script_and_env_is_ignored_by_git() -> None:
    dry = subprocess.run(["make", "--no-print-directory", "-n", "secrets"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"python\S*\s+deploy/make_secrets\.py\s*$", dry.stdout.strip()), dry.stdout
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert "secrets" in phony.split()
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, ".env is not in .gitignore"
    assert make_secrets.DEFAULT_PATH == ROOT / ".env"
