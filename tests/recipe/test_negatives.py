"""The negative sampler's vocabulary stays under its cap, forgetting the items it would draw least."""

from __future__ import annotations

import numpy as np
import pytest

from rtrec.events import Event
from rtrec.recipe.examples import ExampleBatch
from rtrec.recipe.negatives import NegativeSampler, add_sampled_negatives


def observe(sampler: NegativeSampler, *items: str) -> np.ndarray:
    index = sampler.observe_many(np.array(items), np.array([f"c-{i}" for i in items]))
    assert [sampler._items[j] for j in index.tolist()] == list(items), "indices point at the observed items"
    return index


def test_the_vocabulary_stays_under_its_cap_and_forgets_the_lowest_counts() -> None:
    sampler = NegativeSampler(alpha=1.0, half_life_steps=50.0, max_items=10)
    for _ in range(3):
        observe(sampler, "hit", "hit", "hit")
    for k in range(30):  # a long tail of items seen once each
        observe(sampler, f"tail{k}")
        assert len(sampler) <= 10
    kept = set(sampler._items)
    assert "hit" in kept and "tail29" in kept
    # The survivors of the tail are the most recently seen (their decayed counts are highest).
    tail = sorted(int(item[4:]) for item in kept if item.startswith("tail"))
    assert tail == list(range(30 - len(tail), 30))
    assert sampler.evicted == 31 - len(sampler)
    assert sampler._index == {item: j for j, item in enumerate(sampler._items)}
    assert sampler.categories_of(np.arange(len(sampler))).tolist() == [f"c-{i}" for i in sampler._items]
    assert sampler.probability(np.arange(len(sampler))).sum() == pytest.approx(1.0)
    assert set(sampler.sample(50)[0].tolist()) <= kept
    assert sampler.probability_of(np.array(["tail0", "hit"]))[0] == 0.0


def test_compaction_runs_down_to_ninety_percent_of_the_cap() -> None:
    sampler = NegativeSampler(max_items=100)
    observe(sampler, *[f"i{k}" for k in range(100)])
    assert len(sampler) == 100 and sampler.evicted == 0
    observe(sampler, "one-more")
    assert len(sampler) == 90 and sampler.evicted == 11 and "one-more" in sampler._index


def test_a_batch_bigger_than_the_cap_is_kept_whole() -> None:
    sampler = NegativeSampler(max_items=4)
    observe(sampler, "a", "b")
    index = observe(sampler, *[f"x{k}" for k in range(6)], "x0")
    assert len(sampler) == 6 and set(sampler._items) == {f"x{k}" for k in range(6)}
    assert index[0] == index[-1]


def test_an_evicted_item_comes_back_with_a_fresh_count() -> None:
    sampler = NegativeSampler(alpha=1.0, max_items=2)
    observe(sampler, "old", "old", "old")
    observe(sampler, "b")
    observe(sampler, "c")  # 3 items > 2: down to 2, "b" (count ~1, older than "c") goes
    assert set(sampler._items) == {"old", "c"}
    observe(sampler, "b")
    assert sampler.frequency(np.array([sampler._index["b"]]))[0] < 0.5


def test_sampled_negatives_work_with_a_small_cap() -> None:
    sampler = NegativeSampler(seed=0, max_items=3)
    for start in range(0, 20, 5):
        events = [Event(f"e{k}", f"u{k}", f"i{k}", "click", float(k), item={"category": "c"})
                  for k in range(start, start + 5)]
        batch = add_sampled_negatives(ExampleBatch.from_positives(events), sampler, k=2)
        assert len(sampler) == 5  # the batch's 5 items stay; everything older went
        stream, negatives = batch.items[:5], batch.items[5:]
        assert set(negatives.tolist()) <= set(stream.tolist())
        assert np.isfinite(batch.sample_p).all() and (batch.sample_p > 0).all()


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        NegativeSampler(max_items=0)
    assert len(NegativeSampler(max_items=None).observe_many(np.array(["a"]), np.array(["c"]))) == 1
