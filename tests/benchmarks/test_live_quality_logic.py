"""The pure logic of benchmarks/live_quality.py: the live order, the baselines (rtrec eval's, one
sent event at a time), the metrics, the loss classification and reading ``rtrec eval``'s results
(no servers)."""

from __future__ import annotations

import asyncio
import doctest
import math
import random
from pathlib import Path

import numpy as np
import pytest

import benchmarks.live_quality as lq
from benchmarks.live_quality import (Outcome, Planned, counted, hr_ndcg, live_order, loss_of,
                                     model_hr_from_results, rank_in, write_stream)
from rtrec.events import Event


def test_doctests() -> None:
    assert doctest.testmod(lq).failed == 0


def _log(pairs: list[tuple[str, str]]) -> list[Planned]:
    return [Planned(u, i) for u, i in pairs]


def test_live_order_is_round_robin_and_keeps_each_users_order() -> None:
    log = _log([("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3"), ("c", "c1"), ("b", "b2")])
    order = [(p.user_id, p.item_id) for p in live_order(log, max_per_user=50)]
    assert order == [("a", "a1"), ("b", "b1"), ("c", "c1"), ("a", "a2"), ("b", "b2"), ("a", "a3")]


def test_live_order_caps_each_user_and_the_total() -> None:
    log = _log([("a", f"a{n}") for n in range(5)] + [("b", f"b{n}") for n in range(2)])
    assert [p.item_id for p in live_order(log, max_per_user=3)] == ["a0", "b0", "a1", "b1", "a2"]
    assert [p.item_id for p in live_order(log, max_per_user=3, limit=3)] == ["a0", "b0", "a1"]
    assert live_order([], max_per_user=3) == []
    with pytest.raises(ValueError):
        live_order(log, max_per_user=0)


def test_live_order_properties_on_a_random_log() -> None:
    rng = random.Random(1)
    log = _log([(f"u{rng.randrange(30)}", f"i{n}") for n in range(2000)])
    order = live_order(log, max_per_user=7)
    position: dict[str, int] = {}
    rounds = []
    for p in order:  # the k-th event of a user is in round k
        rounds.append(position.get(p.user_id, 0))
        position[p.user_id] = rounds[-1] + 1
    assert rounds == sorted(rounds)  # nobody's (k+1)-th before anyone's k-th
    assert max(position.values()) <= 7
    for user in position:  # each user's first events, in log order
        assert [p.item_id for p in order if p.user_id == user] == [p.item_id for p in log if p.user_id == user][:7]


def test_planned_from_events_drops_negatives_and_keeps_categories() -> None:
    events = [Event("1", "u", "i", "rating", 1.0, value=4.0, item={"category": "Drama", "year": "1995"}),
              Event("2", "u", "j", "impression", 2.0), Event("3", "u", "k", "click", 3.0)]
    assert lq.planned_from_events(events) == [Planned("u", "i", "Drama"), Planned("u", "k", None)]


def _brute_rank(scores: dict[str, float], target: str, excluded: set[str], priority: dict[str, float]) -> float:
    """The definition, item by item: 1 + candidates with a higher (score, priority)."""
    own = (scores[target], priority[target])
    return 1.0 + sum((scores[j], priority[j]) > own for j in scores if j not in excluded and j != target)


def test_baselines_agree_with_their_definitions_on_a_random_stream() -> None:
    rng = random.Random(7)
    stream = [(f"u{rng.randrange(12)}", f"i{min(rng.randrange(40), rng.randrange(40))}") for _ in range(600)]
    sent = [Outcome(n, u, i, float(n), False, math.inf, {}, 0.0) for n, (u, i) in enumerate(stream)]
    got = lq.baseline_ranks(sent[::-1], seed=3)[::-1]  # any order in: ranks follow the send order
    first_seen = list(dict.fromkeys(i for _, i in stream))
    permutation = np.random.default_rng(3).permutation(len(first_seen))
    priority = {name: float(permutation[k]) for k, name in enumerate(first_seen)}
    counts: dict[str, float] = {}
    pairs: dict[tuple[str, str], float] = {}
    history: dict[str, list[str]] = {}
    for (user, item), ranks in zip(stream, got):
        mine = history.get(user, [])
        if item not in counts or item in mine:  # never sent before, or a repeat: no candidate
            assert ranks == {"popularity": math.inf, "cooccurrence": math.inf}
        else:
            co = {j: sum(pairs.get((h, j), 0.0) for h in mine[-lq.RECENT_QUERY:]) for j in counts}
            assert ranks["popularity"] == _brute_rank(counts, item, set(mine), priority)
            assert ranks["cooccurrence"] == _brute_rank(co, item, set(mine), priority)
        counts[item] = counts.get(item, 0.0) + 1
        for h in mine[-lq.PAIR_WINDOW:]:
            pairs[h, item] = pairs.get((h, item), 0.0) + 1
            pairs[item, h] = pairs.get((item, h), 0.0) + 1
        history.setdefault(user, []).append(item)


def test_cooccurrence_is_off_past_its_table_limit() -> None:
    sent = [Outcome(n, "u" if n < 65 else "v", f"i{n % 65}", float(n), False, math.inf, {}, 0.0) for n in range(66)]
    ranks = lq.baseline_ranks(sent, max_cooccurrence_items=64)
    assert ranks[-1]["cooccurrence"] is None and ranks[-1]["popularity"] >= 1


def test_metrics_follow_rtrec_eval() -> None:
    assert rank_in(["x", "y"], "y") == 2.0 and rank_in([], "y") == math.inf
    hr, ndcg = hr_ndcg([1.0, 3.0, 10.0, 11.0, math.inf])
    assert hr == pytest.approx(3 / 5)
    assert ndcg == pytest.approx((1.0 + 0.5 + 1 / math.log2(11)) / 5)
    assert all(math.isnan(x) for x in hr_ndcg([]))


def _outcome(seq: int, repeat: bool = False, error: bool = False) -> Outcome:
    return Outcome(seq, "u", f"i{seq}", 1000.0 + seq, repeat, math.inf, {"popularity": math.inf}, 0.001, error)


def test_counted_skips_warm_up_repeats_and_errors() -> None:
    outcomes = [_outcome(n, repeat=n == 15, error=n == 16) for n in range(20)]
    assert [o.seq for o in counted(outcomes, sent=20)] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18, 19]


def test_losses_follow_the_request_through_serving() -> None:
    ranked = {"cold_start": False, "retrieved": ["a", "t", "b"], "ranked": ["a", "b", "t"], "blocked": []}
    assert loss_of(1.0, ranked, None, "t") is None  # a hit
    assert loss_of(math.inf, {"cold_start": True}, None, "t") == "served_cold_start"
    assert loss_of(math.inf, ranked, None, "t", k=2) == "lost_ranked_below_k"
    assert loss_of(math.inf, ranked, None, "t", k=3) == "lost_to_rules"
    outside = {**ranked, "ranked": ["a", "b"]}
    assert loss_of(math.inf, outside, True, "t") == "lost_not_retrieved"
    assert loss_of(math.inf, outside, False, "t") == "lost_not_indexed"
    assert loss_of(math.inf, None, None, "t") is None  # serving without explain: unclassified


def test_the_sent_stream_is_a_file_of_events_rtrec_eval_reads(tmp_path: Path) -> None:
    from dataclasses import replace

    from producers.replay import load_events, parse_columns

    path = tmp_path / "sent.jsonl"
    outcomes = [_outcome(1), replace(_outcome(0), category="drama")]
    write_stream(outcomes, path)
    loaded = load_events(path, parse_columns(None))
    assert [(e.user_id, e.item_id, e.ts, e.action, e.item) for e in loaded.events] == [
        ("u", "i0", 1000.0, "click", {"category": "drama"}), ("u", "i1", 1001.0, "click", None)]


def test_model_hr_is_read_from_results_json() -> None:
    assert model_hr_from_results({"summary": {"model": {"hr@10": 0.21}, "popularity": {"hr@10": 0.07}}}) == 0.21
    assert model_hr_from_results({"model": {"hr@10": 0.3}}) == 0.3
    assert model_hr_from_results({"summary": {"popularity": {"hr@10": 0.07}}}) is None


def test_ratios_are_none_without_a_positive_baseline() -> None:
    assert lq.ratio(0.2, 0.1) == 2.0
    assert lq.ratio(0.2, None) is None and lq.ratio(0.2, 0.0) is None and lq.ratio(math.nan, 0.1) is None


def test_figures_of_a_small_run() -> None:
    live = lq.LiveRun(http=None, producer=None, run="t")  # type: ignore[arg-type]
    for seq in range(10):  # seq 0 is warm-up; 1-4 cold-start misses, 5-8 model hits at rank 1, 9 a new item
        hit = 5 <= seq <= 8
        live.outcomes.append(Outcome(
            seq, "u", f"i{seq}", 1000.0 + seq, False, 1.0 if hit else math.inf,
            {"popularity": 2.0 if seq % 2 else 20.0, "cooccurrence": math.inf} if seq < 9
            else {"popularity": math.inf, "cooccurrence": math.inf},
            0.010 * (seq + 1), loss=None if hit else ("served_cold_start" if seq <= 4 else "lost_not_indexed"),
            cold_start=seq <= 4))
    out = lq.figures(live, offline=0.5, seconds=12.34)
    assert out["evaluated"] == 9 and out["events"] == 10 and out["errors"] == 0
    assert out["hr_at_10"] == pytest.approx(4 / 9, abs=1e-4) and out["ndcg_at_10"] == pytest.approx(4 / 9, abs=1e-4)
    assert out["popularity_hr_at_10"] == pytest.approx(4 / 9, abs=1e-4)  # odd seqs 1..7 rank 2
    assert out["cooccurrence_hr_at_10"] == 0.0 and out["ratio_to_cooccurrence"] is None
    assert out["live_to_offline"] == pytest.approx(0.889, abs=1e-3)
    assert out["served_cold_start"] == 4 and out["lost_not_indexed"] == 1 and out["lost_to_rules"] == 0
    assert out["model_served"] == 5 and out["model_served_hr_at_10"] == 0.8 and out["new_item_events"] == 1
    assert out["p50_ms"] == 50.0 and out["p99_ms"] == 100.0 and out["seconds"] == 12.3


class _Answers:
    """An HTTP session that answers ``GET /embeddings/item/{id}`` with a fixed status per item and
    records what was asked (the diagnosis's side of the conversation only)."""

    def __init__(self, statuses: dict[str, int]) -> None:
        self.statuses, self.asked = statuses, []

    def get(self, url: str) -> "_Answers._Reply":
        item = url.rsplit("/", 1)[1]
        self.asked.append(item)
        return _Answers._Reply(self.statuses[item])

    class _Reply:
        def __init__(self, status: int) -> None:
            self.status = status

        async def __aenter__(self) -> "_Answers._Reply":
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def read(self) -> bytes:
            return b"{}"


def test_the_diagnosis_asks_serving_about_an_item_until_its_first_yes_only() -> None:
    http = _Answers({"known": 200, "new": 404})
    live = lq.LiveRun(http=http, producer=None, run="t")  # type: ignore[arg-type]
    miss = {"explain": {"cold_start": False, "ranked": ["other"], "retrieved": ["other"]}}
    answers = [asyncio.run(live._indexed(item, miss)) for item in ("known", "known", "new", "new")]
    assert answers == [True, True, False, False]
    assert http.asked == ["known", "new", "new"] and live.index_asks == 3  # "no" is asked again: it may change
    ranked = {"explain": {"cold_start": False, "ranked": ["new"]}}
    cold = {"explain": {"cold_start": True}}
    assert asyncio.run(live._indexed("new", ranked)) is None and asyncio.run(live._indexed("new", cold)) is None
    assert live.index_asks == 3
