"""The click simulator's ground truth: deterministic, time-ordered, joinable, and changing at known times."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from producers.simulator import ClickSimulator, SimulatorConfig

CONFIG = SimulatorConfig(users=300, items=1_000, categories=10, seed=7, shift_at_s=100.0,
                         trending_items=3, trend_every_s=50.0)


def test_same_seed_and_run_id_give_the_same_stream() -> None:
    a = ClickSimulator(CONFIG, run_id="r").requests(200, 0.0, 10.0)
    b = ClickSimulator(CONFIG, run_id="r").requests(200, 0.0, 10.0)
    assert a == b


def test_events_are_time_ordered_with_unique_ids() -> None:
    events = ClickSimulator(CONFIG).requests(500, 100.0, 110.0)
    assert all(x.ts <= y.ts for x, y in zip(events, events[1:]))
    assert len({e.event_id for e in events}) == len(events)


def test_each_request_shows_k_distinct_items_to_one_user() -> None:
    events = ClickSimulator(CONFIG).requests(300, 0.0, 10.0)
    shown: dict[str, list[str]] = {}
    users: dict[str, set[str]] = {}
    for e in events:
        if e.action == "impression":
            shown.setdefault(e.request_id, []).append(e.item_id)
            users.setdefault(e.request_id, set()).add(e.user_id)
    assert len(shown) == 300
    assert all(len(items) == len(set(items)) == CONFIG.impressions_per_request for items in shown.values())
    assert all(len(u) == 1 for u in users.values())


def test_every_action_follows_an_impression_of_the_same_request_item_and_user() -> None:
    events = ClickSimulator(CONFIG).requests(500, 0.0, 10.0)
    impressions = {(e.request_id, e.item_id, e.user_id): e.ts for e in events if e.action == "impression"}
    actions = [e for e in events if e.action != "impression"]
    assert Counter(e.action for e in actions)["click"] > 0
    for e in actions:
        assert impressions[(e.request_id, e.item_id, e.user_id)] < e.ts


def test_observed_click_rate_matches_ground_truth_probability() -> None:
    sim = ClickSimulator(SimulatorConfig(users=200, items=500, seed=3, trending_items=0))
    events = sim.requests(4_000, 0.0, 10.0)
    imps = [e for e in events if e.action == "impression"]
    clicks = {(e.request_id, e.item_id) for e in events if e.action == "click"}
    users = np.array([int(e.user_id[1:]) for e in imps])
    items = np.array([int(e.item_id[1:]) for e in imps])
    expected = sim.click_prob(users, items, 0.0).sum()
    observed = sum((e.request_id, e.item_id) in clicks for e in imps)
    assert observed == pytest.approx(expected, rel=0.1)


def test_interest_shift_changes_only_shifted_users_and_only_after_the_known_time() -> None:
    sim = ClickSimulator(CONFIG)
    users = np.arange(CONFIG.users)
    before, after = sim.taste(users, 99.0), sim.taste(users, 100.0)
    changed = np.flatnonzero(np.any(before != after, axis=1))
    assert set(changed) == set(sim.shifted_users)
    assert len(changed) == int(CONFIG.shift_fraction * CONFIG.users)


def test_trending_items_gain_exposure_after_their_start_time() -> None:
    sim = ClickSimulator(CONFIG)
    first = sim.trending[0]
    assert sim.boost(49.0)[first] == 1.0 and sim.boost(50.0)[first] == CONFIG.trend_boost
    before = ClickSimulator(CONFIG).requests(2_000, 0.0, 40.0)
    shown_before = sum(e.item_id == f"i{first}" for e in before if e.action == "impression")
    late = ClickSimulator(CONFIG)
    late.requests(1, 0.0, 0.1)  # fixes the start at 0
    after = late.requests(2_000, 60.0, 99.0)
    shown_after = sum(e.item_id == f"i{first}" for e in after if e.action == "impression")
    assert shown_after > 2 * max(shown_before, 1)


def test_oracle_ranking_prefers_the_users_favourite_category() -> None:
    sim = ClickSimulator(CONFIG)
    user = 5
    favourite = int(np.argmax(sim.taste(np.array([user]), 0.0)[0]))
    best = sim.best_items(user, 0.0, k=10)
    assert np.mean(sim.category[best] == favourite) >= 0.5
