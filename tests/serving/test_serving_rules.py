"""The pure ranking piece: business rules (the real-time features are pinned in tests/features)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from serving.ranking import apply_rules


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
