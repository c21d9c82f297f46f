"""The prequential loop: for each batch of events, first rank (every variant), then learn.

The stream is cut into batches of consecutive events that never straddle the end of the
warm-up or a refresh boundary (a day of event time). For each batch after the warm-up, every
variant scores all items for every event; the rank of the event's item among the items seen so
far that the user has not acted on is logged; only then does every variant learn the batch.
Events whose (user, item) pair already occurred are not targets (the item is excluded from the
user's candidates by the contract) and are only learned from.

The ``batch`` variant ranks with a frozen copy of the ``model`` variant's weights, taken at the
first batch of each new day: the same training run, served from yesterday's weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from evaluation.baselines import Cooccurrence, Popularity, Trending
from evaluation.batches import EvalBatch
from evaluation.config import VARIANTS, EvalConfig
from evaluation.metrics import MetricLog, target_ranks
from evaluation.stream import EvalStream
from evaluation.towers import FrozenTowers, TowerRanker

__all__ = ["EvalConfig", "EvalResult", "VARIANTS", "run_prequential", "batch_bounds"]

log = logging.getLogger(__name__)

class Ranker(Protocol):
    name: str

    def scores(self, batch: EvalBatch) -> np.ndarray: ...

    def learn(self, batch: EvalBatch) -> None: ...


@dataclass
class EvalResult:
    """Per-variant metric logs and the counts and timings of the run."""

    logs: dict[str, MetricLog]
    events: int
    evaluated: int
    warmup_events: int
    repeats_skipped: int
    seconds: float
    seconds_by_variant: dict[str, float]

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: {k: round(v, 4) for k, v in log_.summary().items()} for name, log_ in self.logs.items()}


def batch_bounds(ts: np.ndarray, warmup_end: int, batch_size: int, refresh_s: float) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive batches that never cross ``warmup_end`` or a refresh boundary.

    >>> batch_bounds(np.array([0., 1., 2., 10., 11., 12.]), 2, 2, 10.0)
    [(0, 2), (2, 3), (3, 5), (5, 6)]
    """
    period = np.floor(ts / refresh_s)
    cuts = set((np.flatnonzero(np.diff(period) != 0) + 1).tolist()) | {0, warmup_end, ts.size}
    edges = sorted(c for c in cuts if 0 <= c <= ts.size)
    return [(s, min(s + batch_size, end)) for start, end in zip(edges, edges[1:])
            for s in range(start, end, batch_size)]


def _build(stream: EvalStream, config: EvalConfig) -> tuple[list[Ranker], TowerRanker | None]:
    """The rankers of the requested variants (``batch`` rides on the ``model`` ranker)."""
    rankers: list[Ranker] = []
    towers = None
    if "model" in config.variants or "batch" in config.variants:
        towers = TowerRanker(stream, config.towers, config.seed)
        rankers.append(towers)
    if "hashed" in config.variants:
        rankers.append(TowerRanker(stream, config.towers, config.seed, config.hash_buckets, "hashed"))
    if "popularity" in config.variants:
        rankers.append(Popularity(stream.n_items))
    if "trending" in config.variants:
        rankers.append(Trending(stream.n_items, config.trending_half_life_s))
    if "cooccurrence" in config.variants:
        rankers.append(Cooccurrence(stream.n_items, config.cooccurrence_query, config.cooccurrence_window))
    return rankers, towers


def run_prequential(stream: EvalStream, config: EvalConfig,
                    progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Rank, log, then learn, batch by batch over the first ``until`` of the stream."""
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    end = int(round(len(stream) * config.until))
    warmup_end = int(round(len(stream) * config.warmup))
    tiebreak = np.random.default_rng(config.seed).permutation(stream.n_items)
    rankers, towers = _build(stream, config)
    logs = {name: MetricLog() for name in config.variants}
    seconds = {name: 0.0 for name in config.variants}
    frozen: FrozenTowers | None = None
    last_period, evaluated, repeats = None, 0, 0
    bounds = batch_bounds(stream.ts[:end], warmup_end, config.batch_size, config.refresh_s)
    for n, (lo, hi) in enumerate(bounds):
        batch = EvalBatch(stream, np.arange(lo, hi))
        period = int(np.floor(stream.ts[lo] / config.refresh_s))
        if "batch" in config.variants and period != last_period:
            frozen = towers.snapshot(stream.n_items)
        last_period = period
        if lo >= warmup_end:
            keep = ~stream.repeat[lo:hi]
            evaluated += int(keep.sum())
            repeats += int((~keep).sum())
            _evaluate(batch, keep, rankers, towers, frozen, logs, seconds, tiebreak)
        for ranker in rankers:
            t0 = time.perf_counter()
            ranker.learn(batch)
            _charge(seconds, ranker.name, t0, config.variants)
        if progress is not None:
            progress(n + 1, len(bounds))
    return EvalResult(logs, end, evaluated, warmup_end, repeats, time.perf_counter() - start, seconds)


def _evaluate(batch: EvalBatch, keep: np.ndarray, rankers: list[Ranker], towers: TowerRanker | None,
              frozen: FrozenTowers | None, logs: dict[str, MetricLog], seconds: dict[str, float],
              tiebreak: np.ndarray) -> None:
    """Log each variant's rank of every kept event's item before anything learns the batch."""
    if not keep.any():
        return
    candidates = batch.candidates()[keep]
    targets, ts = batch.items[keep], batch.ts[keep]
    scorers: list[tuple[str, Callable[[], np.ndarray]]] = [(r.name, lambda r=r: r.scores(batch)) for r in rankers]
    if frozen is not None and towers is not None:
        scorers.append(("batch", lambda: towers.frozen_scores(frozen, batch)))
    for name, score in scorers:
        if name not in logs:
            continue
        t0 = time.perf_counter()
        scores = np.asarray(score())[keep]
        logs[name].add_many(ts, target_ranks(scores, targets, candidates, tiebreak))
        seconds[name] += time.perf_counter() - t0


def _charge(seconds: dict[str, float], name: str, t0: float, variants: tuple[str, ...]) -> None:
    """Add learning time to the variant that owns it (the model's training also serves ``batch``)."""
    owner = name if name in variants else "batch"
    seconds[owner] = seconds.get(owner, 0.0) + time.perf_counter() - t0
