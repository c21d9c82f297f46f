"""The prequential loop: rank before learning, seen items excluded, deterministic with a seed."""

from __future__ import annotations

import numpy as np

from evaluation.config import EvalConfig, TowerConfig
from evaluation.runner import run_prequential
from evaluation.stream import EvalStream
from evaluation.towers import TowerRanker, fold_ids
from features.ids import feature_ids
from rtrec.events import Event

SMALL = TowerConfig(dim=8, tower_dim=8, tower_hidden=16, steps=1)


def _synthetic(n_events: int = 600, seed: int = 3) -> EvalStream:
    """Users with a taste for one of three item groups, over three days."""
    rng = np.random.default_rng(seed)
    events = []
    for n in range(n_events):
        user = int(rng.integers(30))
        item = int(rng.integers(10)) * 3 + user % 3
        events.append(Event(str(n), f"u{user}", f"i{item}", "click", 1e9 + n * 3 * 86_400 / n_events))
    return EvalStream.from_events(events)


def test_items_the_user_acted_on_are_never_ranked() -> None:
    # "x" is the most popular item; user a already has it, so a's target "z" is first, not second.
    rows = [("b", "x"), ("c", "x"), ("d", "x"), ("a", "x"), ("e", "z"), ("a", "z")]
    stream = EvalStream.from_events([Event(str(n), u, i, "click", float(n)) for n, (u, i) in enumerate(rows)])
    config = EvalConfig(warmup=5 / 6, batch_size=1, variants=("popularity",))
    result = run_prequential(stream, config)
    assert result.evaluated == 1
    assert np.concatenate(result.logs["popularity"].ranks).tolist() == [1.0]


def test_an_event_is_ranked_before_it_is_learned() -> None:
    # Each user clicks a brand-new item: it is not a candidate yet, so no variant can hit it.
    stream = EvalStream.from_events([Event(str(n), f"u{n}", f"i{n}", "click", float(n)) for n in range(20)])
    result = run_prequential(stream, EvalConfig(batch_size=4, variants=("popularity", "model"), towers=SMALL))
    assert result.summary()["popularity"]["hr@10"] == 0.0 and result.summary()["model"]["hr@10"] == 0.0


def test_same_seed_gives_identical_results_for_every_variant() -> None:
    stream = _synthetic()
    config = EvalConfig(batch_size=16, hash_buckets=7, towers=SMALL, refresh_s=86_400.0)
    first, second = run_prequential(stream, config), run_prequential(stream, config)
    assert first.summary() == second.summary()
    assert set(first.summary()) == {"model", "batch", "hashed", "popularity", "trending", "cooccurrence"}
    assert first.evaluated + first.repeats_skipped == 540 and first.evaluated == second.evaluated


def test_model_learns_the_group_structure_online() -> None:
    result = run_prequential(_synthetic(1500), EvalConfig(batch_size=16, variants=("model", "popularity"),
                                                          towers=SMALL))
    summary = result.summary()
    assert summary["model"]["hr@10"] > summary["popularity"]["hr@10"] + 0.1


def test_hashed_ids_fold_into_fixed_buckets_and_collide() -> None:
    ids = feature_ids(2, np.arange(100))
    folded = fold_ids(ids, 8)
    assert np.unique(folded).size == 8
    ranker = TowerRanker(_synthetic(100), SMALL, hash_buckets=4)
    assert np.unique(ranker.ids.item).size <= 4 and np.unique(ranker.ids.user).size <= 4


def test_experience_replay_trains_only_on_earlier_events() -> None:
    from dataclasses import replace

    from evaluation.batches import EvalBatch

    stream = _synthetic(200)
    ranker = TowerRanker(stream, replace(SMALL, replay_batches=3))
    trained: list[np.ndarray] = []
    ranker._step = lambda batch, n, seen: trained.append(batch.events)  # record, do not train
    ranker.learn(EvalBatch(stream, np.arange(100, 110)))
    assert len(trained) == 1 + 3
    assert trained[0].tolist() == list(range(100, 110))
    assert all(events.max() < 100 and events.size == 10 for events in trained[1:])


def test_batch_mode_ranks_with_the_snapshot_while_training_goes_on() -> None:
    from evaluation.batches import EvalBatch

    stream = _synthetic(200)
    ranker, untrained = TowerRanker(stream, SMALL), TowerRanker(stream, SMALL)
    frozen = ranker.snapshot(stream.n_items)
    for start in range(0, 160, 16):
        ranker.learn(EvalBatch(stream, np.arange(start, start + 16)))
    probe = EvalBatch(stream, np.arange(160, 176))
    np.testing.assert_array_equal(ranker.frozen_scores(frozen, probe), untrained.scores(probe))
    assert not np.array_equal(ranker.scores(probe), untrained.scores(probe))
