"""The prequential loop: ask before learning, seen items excluded, the deployed system as the model."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.batches import micro_batches
from evaluation.config import VARIANTS, EvalConfig
from evaluation.runner import arrival_times, run_prequential
from rtrec.events import Event
from rtrec.settings import load_settings


def _synthetic(n_events: int = 600, seed: int = 3) -> list[Event]:
    """Users with a taste for one of three item groups, over three days."""
    rng = np.random.default_rng(seed)
    events = []
    for n in range(n_events):
        user = int(rng.integers(30))
        item = int(rng.integers(10)) * 3 + user % 3
        events.append(Event(str(n), f"u{user}", f"i{item}", "click", 1e9 + n * 3 * 86_400 / n_events))
    return events


def test_items_the_user_acted_on_are_never_ranked() -> None:
    # "x" is the most popular item; user a already has it, so a's target "z" is first, not second
    # (one event per micro-batch at 1 event/s: a's "x" was applied before "z" is asked).
    rows = [("b", "x"), ("c", "x"), ("d", "x"), ("a", "x"), ("e", "z"), ("a", "z")]
    events = [Event(str(n), u, i, "click", float(n)) for n, (u, i) in enumerate(rows)]
    result = run_prequential(events, EvalConfig(warmup=5 / 6, rate=1.0, variants=("popularity",)))
    assert result.evaluated == 1
    assert np.concatenate(result.logs["popularity"].ranks).tolist() == [1.0]


def test_an_ask_knows_what_the_slices_before_it_in_its_batch_applied() -> None:
    # A first batch makes x more popular than z. Then one batch of three slices (the worker's
    # defaults, events at their own time): a's "x" is in the second slice and a is asked for "z"
    # in the third. Live, the second slice's features (a's recent items) were written before that
    # request, so x is a's own and z ranks first; asked at the batch's start, x would rank first.
    settings = load_settings()
    s = settings.worker_slice_s
    assert settings.worker_batch_within_s >= 3 * s
    rows = [(0.0, "b", "x"), (0.01, "c", "x"), (0.02, "e", "z"),
            (10.0, "d", "x"), (10.0 + 0.2 * s, "h", "x"),
            (10.0 + 1.2 * s, "a", "x"), (10.0 + 1.4 * s, "i", "x"),
            (10.0 + 2.4 * s, "a", "z")]
    events = [Event(str(n), u, i, "click", t) for n, (t, u, i) in enumerate(rows)]
    result = run_prequential(events, EvalConfig(warmup=7 / 8, rate=None, variants=("popularity",)))
    assert result.batches == 2 and result.evaluated == 1
    assert np.concatenate(result.logs["popularity"].ranks).tolist() == [1.0]


def test_micro_batches_follow_the_workers_window_and_size() -> None:
    ts = np.sort(np.random.default_rng(0).uniform(0, 20, 300))
    bounds = micro_batches(ts, 0.2, 7)
    assert bounds[0][0] == 0 and bounds[-1][1] == ts.size
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(1 <= hi - lo <= 7 and ts[hi - 1] - ts[lo] <= 0.2 for lo, hi in bounds)


@pytest.mark.integration
def test_an_event_is_asked_before_it_is_learned() -> None:
    # Each user clicks a brand-new item: no variant, served or baseline, can have it in a list yet.
    events = [Event(str(n), f"u{n % 3}", f"i{n}", "click", 1e9 + n) for n in range(30)]
    result = run_prequential(events, EvalConfig(variants=("model", "popularity")))
    assert result.evaluated == 27
    assert result.summary()["popularity"]["hr@10"] == 0.0 and result.summary()["model"]["hr@10"] == 0.0


@pytest.mark.integration
def test_every_variant_runs_and_the_same_seed_gives_the_same_figures() -> None:
    events = _synthetic()
    config = EvalConfig(rate=50.0, hash_buckets=7)
    first, second = run_prequential(events, config), run_prequential(events, config)
    assert set(first.summary()) == set(VARIANTS)
    assert first.summary() == second.summary()
    assert first.evaluated + first.repeats_skipped == 540
    settings = load_settings()
    within, size = settings.worker_batch_within_s, settings.worker_batch_size
    assert first.batches == len(micro_batches(arrival_times(events, 50.0), within, size))  # the worker's batches


@pytest.mark.integration
def test_served_model_learns_the_group_structure_online() -> None:
    result = run_prequential(_synthetic(1500), EvalConfig(rate=50.0, variants=("model", "popularity")))
    summary = result.summary()
    assert result.cold_start["model"] < result.evaluated  # users get served from the trained model
    assert summary["model"]["hr@10"] > summary["popularity"]["hr@10"]


@pytest.mark.integration
def test_streams_with_impressions_report_the_ranking_heads_auc_and_log_loss() -> None:
    from producers.simulator import ClickSimulator, SimulatorConfig

    sim = SimulatorConfig(users=30, items=80, categories=4, seed=1, shift_fraction=0.0, trending_items=0)
    events = ClickSimulator(sim, run_id="eval").requests(300, 1.7e9, 1.7e9 + 600.0)
    result = run_prequential(events, EvalConfig(variants=("model",)))
    head = result.labelled.summary()["model"]
    assert head["examples"] > 0 and 0.0 <= head["auc"] <= 1.0 and head["log_loss"] > 0.0


@pytest.mark.integration
def test_served_variants_sync_as_live_serving_does_unless_told_otherwise() -> None:
    # live, serving syncs as each training step lands, at most every RTREC_SYNC_MIN_INTERVAL_S; the
    # replay must not serve a staler model than that (it once synced every RTREC_SYNC_INTERVAL_S)
    from evaluation.runner import _systems
    from evaluation.system import embedded_redis

    settings = load_settings()
    with embedded_redis(settings) as url:
        _, served = _systems(EvalConfig(variants=("model", "batch")), settings, url)
        assert served["model"].period_s == settings.sync_min_interval_s < settings.sync_interval_s
        assert served["batch"].period_s == 3600.0 and served["batch"].aligned
        _, served = _systems(EvalConfig(variants=("model",), sync_every_s=5.0), settings, url)
        assert served["model"].period_s == 5.0
