"""Click predictions of impressions: only the joiner's impression examples count, each once, and
the counts baseline sees the same examples in the same order, predicting before it learns."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.labelled import CountsLR, LabelledRun, record_predictions
from producers.datasets import OBD_CAMPAIGNS, OBD_CLICK_DELAY_S, load_obd
from rtrec.events import Event
from rtrec.recipe.joiner import Joiner
from rtrec.recipe.trainer import OnlineTrainer
from rtrec.recipe.training import TrainingStep


def _stream(n_requests: int = 40, seed: int = 0) -> list[Event]:
    """Impressions of two items per request; ``good`` is clicked far more often; a few positive-only
    clicks (no request_id), so the step also trains sampled negatives and replays."""
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    for r in range(n_requests):
        t = 1e9 + 10.0 * r
        user = f"u{r % 5}"
        for item in ("good", "bad"):
            events.append(Event(f"{r}-{item}", user, item, "impression", t, request_id=f"r{r}",
                                context={"position": "1" if item == "good" else "2"}))
            if rng.random() < (0.7 if item == "good" else 0.1):
                events.append(Event(f"{r}-{item}-c", user, item, "click", t + 1.0, request_id=f"r{r}"))
        if r % 4 == 0:
            events.append(Event(f"{r}-po", user, f"other{r % 3}", "click", t + 2.0))
    return sorted(events, key=lambda e: e.ts)


def _run(events: list[Event], batch: int = 7) -> tuple[LabelledRun, list, TrainingStep]:
    step = TrainingStep(OnlineTrainer(_store()), seed=0)
    seen: list = []
    original = step.trainer.metrics.observe_batch
    step.trainer.metrics.observe_batch = lambda stats, s, y: (seen.append(len(s)), original(stats, s, y))
    run = record_predictions(step)
    joiner = Joiner(window_s=30.0)
    for lo in range(0, len(events), batch):
        step.train_events(joiner, events[lo:lo + batch])
    return run, seen, step


def _store():
    from param_server.store import ParamStore
    from param_server.config import DEFAULT_TABLES

    return ParamStore(DEFAULT_TABLES)


def test_only_impression_examples_are_counted_each_once() -> None:
    events = _stream()
    run, seen, _ = _run(events)
    impressions = [e for e in events if e.action == "impression"]
    clicked = {(e.request_id, e.item_id) for e in events if e.action == "click" and e.request_id}
    model = run.summary()["model"]
    # Every impression whose window closed is counted exactly once; the trainer's own click metrics
    # see the same rows (not positive-only clicks, their sampled negatives nor replayed batches).
    assert 0 < model["examples"] <= len(impressions)
    assert model["examples"] >= len(impressions) - 8  # the last ~30 s are still in their join window
    assert sum(seen) == model["examples"]
    assert model["positives"] == len(clicked)  # a click is joined (and counted) as it arrives
    assert run.summary()["counts_lr"]["examples"] == model["examples"]
    labels = np.concatenate(run.model.labels)
    assert np.array_equal(labels, np.concatenate(run.counts_lr.labels))
    assert set(np.unique(labels).tolist()) <= {0.0, 1.0}


def test_the_trainers_own_metrics_still_see_every_batch() -> None:
    run, seen, step = _run(_stream(20))
    assert step.trainer.metrics.rolling_loss() == step.trainer.metrics.rolling_loss()  # forwarded, not NaN
    assert len(seen) == step.trainer.batches


def test_counts_baseline_predicts_before_it_learns() -> None:
    lr = CountsLR()
    e = Event("1", "u", "i", "impression", 0.0, context={"position": "2"})
    before = lr.predict([e])
    assert before[0] == pytest.approx(0.5)  # nothing learned: the smoothed base rate of nothing
    lr.learn([e], np.array([1.0]))
    assert lr.n == 1 and lr.clicks == 1
    x, _ = lr.features([e])
    assert x[0, 0] == pytest.approx(np.log(2.0))  # one example of the item so far


def test_counts_baseline_ranks_by_click_rate_and_position() -> None:
    lr = CountsLR()
    run = LabelledRun(baseline=lr)
    events = _stream(200, seed=1)
    clicked = {(e.request_id, e.item_id) for e in events if e.action == "click" and e.request_id}
    impressions = [e for e in events if e.action == "impression"]
    for lo in range(0, len(impressions), 10):
        chunk = impressions[lo:lo + 10]
        labels = np.array([(e.request_id, e.item_id) in clicked for e in chunk], dtype=float)
        run.observe(chunk, np.full(len(chunk), 0.5), labels)
    summary = run.summary()
    assert summary["counts_lr"]["auc"] > 0.75 and summary["model"]["auc"] == 0.5
    assert summary["counts_lr"]["log_loss"] < summary["model"]["log_loss"]


def test_obd_rows_become_impressions_and_clicks_of_context_keys() -> None:
    events = load_obd("random", campaigns=("men",))
    impressions = [e for e in events if e.action == "impression"]
    clicks = [e for e in events if e.action == "click"]
    assert len(impressions) == 10_000 and 0 < len(clicks) < 100
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    by_request = {e.request_id: e for e in impressions}
    assert len(by_request) == len(impressions)
    for c in clicks:
        shown = by_request[c.request_id]
        assert (c.user_id, c.item_id) == (shown.user_id, shown.item_id)
        assert c.ts == pytest.approx(shown.ts + OBD_CLICK_DELAY_S)
    first = impressions[0]
    assert first.item_id.startswith("men:") and first.item["category"].startswith("men:")
    assert set(first.context) == {"uf0", "uf1", "uf2", "uf3", "position", "campaign"}
    assert first.context["position"] in {"1", "2", "3"}
    assert 50 < len({e.user_id for e in impressions}) < 1_000  # context keys, not people
    assert OBD_CAMPAIGNS == ("all", "men", "women")


@pytest.mark.integration
def test_eval_on_an_obd_slice_reports_model_and_counts_baseline(tmp_path) -> None:
    import json

    from evaluation.cli import run as run_eval
    from rtrec.cli import build_parser

    args = build_parser().parse_args(["eval", "--dataset", "obd-bts", "--limit", "3000", "--variants",
                                      "model,popularity", "--out", str(tmp_path), "--no-progress"])
    assert run_eval(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    labelled = results["labelled"]
    assert labelled["model"]["examples"] == labelled["counts_lr"]["examples"] > 2_000
    assert labelled["model"]["positives"] == labelled["counts_lr"]["positives"] > 0
    for name in ("model", "counts_lr"):
        assert 0.0 <= labelled[name]["auc"] <= 1.0 and labelled[name]["log_loss"] > 0.0
    assert results["summary"]["labelled"] == labelled
    assert "| `counts_lr` (logistic regression on counts) |" in (tmp_path / "summary.md").read_text()
