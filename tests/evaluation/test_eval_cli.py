"""``rtrec eval`` end to end on a small event file: report folder, plots, JSON as the last stdout line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rtrec.cli import main


def _write_ratings(path: Path, n: int = 400) -> None:
    rng = np.random.default_rng(0)
    lines = ["userId,movieId,rating,timestamp"]
    for k in range(n):
        user = int(rng.integers(25))
        lines.append(f"{user},{int(rng.integers(12)) * 2 + user % 2},4.0,{1_000_000 + k * 900}")
    lines.append("7,,3.0,1")  # malformed: skipped, not fatal
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.integration
def test_eval_on_an_event_file_writes_a_report_and_a_json_last_line(tmp_path: Path, capsys) -> None:
    events = tmp_path / "ratings.csv"
    _write_ratings(events)
    out = tmp_path / "report"
    code = main(["eval", str(events), "--columns", "user_id=userId,item_id=movieId,ts=timestamp,value=rating",
                 "--out", str(out), "--seed", "1", "--rate", "50", "--hash-buckets", "5",
                 "--period-days", "1", "--no-progress"])
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["dataset"] == "ratings" and last["events"] == 400
    for variant in ("model", "batch", "hashed", "popularity", "trending", "cooccurrence", "cooccurrence_exact"):
        assert set(last[variant]) == {"hr@10", "ndcg@10", "mrr"}
        assert 0.0 <= last[variant]["hr@10"] <= 1.0
    names = {p.name for p in out.iterdir()}
    assert {"summary.md", "results.json", "hr_at_10.png", "ndcg_at_10.png", "mrr.png"} <= names
    assert (out / "hr_at_10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| model |" in (out / "summary.md").read_text()


def test_eval_without_input_is_a_clear_error(capsys) -> None:
    assert main(["eval"]) == 2


def test_eval_rejects_unknown_variants(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    _write_ratings(events, 20)
    assert main(["eval", str(events), "--variants", "model,oracle", "--out", str(tmp_path / "r")]) == 2


@pytest.mark.parametrize("option", ["--variants", "--hash-buckets", "--rate", "--sync-every-s"])
def test_eval_help_lists_the_options(option: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert option in capsys.readouterr().out


def test_eval_of_a_missing_file_or_bad_columns_is_a_clear_error(tmp_path: Path) -> None:
    assert main(["eval", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")]) == 2
    events = tmp_path / "e.csv"
    _write_ratings(events, 20)
    assert main(["eval", str(events), "--columns", "userid=userId", "--out", str(tmp_path / "r")]) == 2
