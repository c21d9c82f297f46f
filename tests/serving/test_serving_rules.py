"""The pure ranking pieces: real-time feature vectors and business rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from rtrec.model import REALTIME_FEATURES
from serving.ranking import apply_rules, realtime_features


def test_realtime_features_follow_the_model_order() -> None:
    user = {"counts": {"impression_24h": 9, "click_1h": 2, "click_24h": 4}}
    item = {"counts": {"impression_1h": 5, "click_1h": 1}, "ctr_1h": 0.2, "ctr_24h": 0.1, "trending": 3.0}
    row = dict(zip(REALTIME_FEATURES, realtime_features(user, [item, {}]).astype(float)[0]))
    expected = {"item_log_impressions_1h": np.log1p(5), "item_log_clicks_1h": np.log1p(1), "item_ctr_1h": 0.2,
                "item_ctr_24h": 0.1, "item_log_trending": np.log1p(3.0), "user_log_impressions_24h": np.log1p(9),
                "user_log_clicks_1h": np.log1p(2), "user_log_clicks_24h": np.log1p(4)}
    for name, value in expected.items():
        assert abs(row[name] - value) < 1e-6, name
    assert realtime_features(user, [{}]).shape == (1, len(REALTIME_FEATURES))


def test_category_cap_keeps_lists_diverse() -> None:
    names = [f"i{n}" for n in range(6)]
    picked = apply_rules(names, np.arange(6, 0, -1.0), ["a", "a", "a", "b", "b", "c"], np.zeros(6, bool),
                         set(), k=3, max_per_category=1, explore_slots=0)
    assert picked == [0, 3, 5]


def test_cap_is_relaxed_only_to_fill_k() -> None:
    picked = apply_rules(["x", "y", "z"], np.array([3.0, 2.0, 1.0]), ["a", "a", "a"], np.zeros(3, bool),
                         set(), k=3, max_per_category=1, explore_slots=0)
    assert picked == [0, 1, 2]


def test_exploration_slot_goes_to_the_best_new_item() -> None:
    picked = apply_rules(list("abcde"), np.array([5.0, 4, 3, 2, 1]), [None] * 5,
                         np.array([0, 0, 0, 1, 1], bool), set(), k=3, max_per_category=3, explore_slots=1)
    assert picked == [0, 1, 3]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 30), k=st.integers(1, 10), cap=st.integers(1, 4), explore=st.integers(0, 3),
       seed=st.integers(0, 1000))
def test_rules_never_return_blocked_or_duplicate_items(n: int, k: int, cap: int, explore: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = [f"i{j}" for j in range(n)]
    blocked = {nm for nm in names if rng.random() < 0.3}
    picked = apply_rules(names, rng.random(n), [str(rng.integers(0, 3)) for _ in range(n)],
                         rng.random(n) < 0.3, blocked, k, cap, min(explore, k))
    chosen = [names[i] for i in picked]
    assert len(set(chosen)) == len(chosen) and not set(chosen) & blocked
    assert len(chosen) == min(k, n - len(blocked))
