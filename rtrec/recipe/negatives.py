"""Streaming item frequencies, sampled negatives, and the log-Q of each candidate.

An in-batch or sampled softmax over items sees popular items as negatives far more often than
rare ones, which pushes popular items down for everyone. Yi et al. (2019, "Sampling-bias-corrected
neural modeling for large corpus item recommendations") correct each candidate's logit by the log
of its sampling probability::

    s_c(u, v_j) = s(u, v_j) - log Q_j

with ``Q_j`` estimated from the stream itself. Here ``Q_j`` comes from exponentially decayed
counts (half-life in batches), so it follows drift:

* :class:`ItemFrequency` -- counts over hashed feature IDs (fixed memory, no vocabulary), used by
  the trainer for impression streams, where the candidates are the batch's own items.
* :class:`NegativeSampler` -- counts over a vocabulary of raw item IDs (with their categories), so
  it can also *draw* items: ``P(j) = c_j**alpha / sum_k c_k**alpha``.
* :func:`add_sampled_negatives` -- for positive-only streams: ``k`` sampled negatives per
  positive, and every row's ``sample_p = P(j)``. The trainer turns that into one ``Q_j`` on one
  scale for every candidate of its softmax, whatever mix of stream rows and sampled rows a batch
  holds: ``Q_j = n_stream * f_j + n_sampled * P(j)``, the expected number of times item ``j`` is in
  the batch, with ``f_j`` from the trainer's own :class:`ItemFrequency`.

>>> sampler = NegativeSampler(alpha=1.0, seed=0)
>>> _ = sampler.observe_many(np.array(["a", "a", "a", "b"]), np.array(["x", "x", "x", "y"]))
>>> items, categories, q = sampler.sample(1000)
>>> bool(abs((items == "a").mean() - 0.75) < 0.05), sorted(set(categories.tolist())), sorted(set(q.round(2).tolist()))
(True, ['x', 'y'], [0.25, 0.75])
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from param_server.hash_index import mix64
from rtrec.recipe.examples import ExampleBatch

__all__ = ["ItemFrequency", "NegativeSampler", "add_sampled_negatives", "add_softmax_candidates"]


def _decay_per_step(half_life_steps: float) -> float:
    if half_life_steps <= 0:
        raise ValueError(f"half_life_steps must be > 0, got {half_life_steps}")
    return 0.5 ** (1.0 / half_life_steps)


class ItemFrequency:
    """Decayed occurrence counts of feature IDs in ``2**bits`` hashed buckets (lazy decay).

    A bucket holds ``c`` and the step ``l`` it was last touched; its value at step ``t`` is
    ``c * gamma**(t - l)`` with ``gamma = 0.5**(1 / half_life_steps)``. Two IDs sharing a bucket
    add up (an over-estimate of both); with ``2**20`` buckets that is rare below ~100k live items.

    >>> freq = ItemFrequency(bits=8)
    >>> freq.update_many(np.array([1, 1, 1, 2], dtype=np.uint64))
    >>> np.exp(freq.log_q(np.array([1, 2], dtype=np.uint64))).round(2).tolist()
    [0.75, 0.25]
    """

    def __init__(self, bits: int = 20, half_life_steps: float = 1_000.0, seed: int = 0) -> None:
        if not 4 <= bits <= 30:
            raise ValueError(f"bits must be in [4, 30], got {bits}")
        self.gamma = _decay_per_step(half_life_steps)
        self.mask = np.uint64((1 << bits) - 1)
        self.seed = seed
        self.counts = np.zeros(1 << bits, dtype=np.float64)
        self.last = np.zeros(1 << bits, dtype=np.int64)
        self.total = 0.0
        self.step = 0

    def update_many(self, ids: np.ndarray) -> None:
        """Count one batch of IDs (with repeats) as one step."""
        self.step += 1
        buckets, n = np.unique(self._buckets(ids), return_counts=True)
        self.counts[buckets] = self._now(buckets) + n
        self.last[buckets] = self.step
        self.total = self.total * self.gamma + float(n.sum())

    def log_q(self, ids: np.ndarray) -> np.ndarray:
        """``log f_j``: the log share of each ID among recent occurrences (``float32``).

        IDs never counted are treated as seen once, the smallest frequency that can be observed.
        """
        now = np.maximum(self._now(self._buckets(ids)), 1.0)
        return (np.log(now) - np.log(max(self.total, 1.0))).astype(np.float32)

    def _buckets(self, ids: np.ndarray) -> np.ndarray:
        return (mix64(np.asarray(ids, dtype=np.uint64), self.seed) & self.mask).astype(np.int64)

    def _now(self, buckets: np.ndarray) -> np.ndarray:
        return self.counts[buckets] * self.gamma ** (self.step - self.last[buckets]).astype(np.float64)


class NegativeSampler:
    """Draws items with probability ``c_j**alpha / sum c**alpha`` from decayed stream counts.

    ``alpha = 1`` samples like the stream (the log-Q correction then undoes popularity exactly);
    ``alpha < 1`` (word2vec's 0.75) gives rare items more exposure as negatives.

    The vocabulary is bounded: past ``max_items`` items, the items with the lowest decayed counts
    are forgotten, down to 90 % of the cap (so the compaction, a pass over the vocabulary, runs
    once per ``max_items / 10`` new items at most). A decayed count falls with both rarity and
    time since last seen, so these are the items the sampler would draw least; an item seen again
    comes back with a fresh count. The items of the batch being observed are never evicted by it.
    Memory: ~200 bytes per item (12-character IDs; the Python strings, dict entry and count).
    """

    def __init__(self, alpha: float = 0.75, half_life_steps: float = 1_000.0, seed: int = 0,
                 max_items: int | None = 1_000_000) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
        self.alpha = alpha
        self.gamma = _decay_per_step(half_life_steps)
        self.rng = np.random.default_rng(seed)
        self.max_items = max_items
        self.evicted = 0  # items forgotten to stay under max_items
        self._index: dict[str, int] = {}
        self._items: list[str] = []
        self._categories: list[str] = []
        self.counts = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._items)

    def observe_many(self, items: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Count one batch of stream items (one decay step); returns their vocabulary indices."""
        index = np.empty(len(items), dtype=np.int64)
        for n, (item, category) in enumerate(zip(items.tolist(), categories.tolist())):
            # per item: a dict from raw strings to indices has no vectorised form
            j = self._index.get(item)
            if j is None:
                j = self._index[item] = len(self._items)
                self._items.append(item)
                self._categories.append(category)
            elif category:
                self._categories[j] = category
            index[n] = j
        if len(self._items) > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(len(self._items) - self.counts.size)])
        self.counts *= self.gamma
        np.add.at(self.counts, index, 1.0)
        if self.max_items is not None and len(self._items) > self.max_items:
            index = self._evict(index)
        return index

    def _evict(self, protected: np.ndarray) -> np.ndarray:
        """Forget the lowest-count items down to 90 % of the cap; returns ``protected`` renumbered."""
        assert self.max_items is not None
        scores = self.counts.copy()
        scores[protected] = np.inf  # this batch's items stay (their indices are being returned)
        keep_n = max(self.max_items - self.max_items // 10, int(np.count_nonzero(np.isinf(scores))))
        # argpartition then a stable order: survivors keep their relative order
        keep = np.sort(np.argpartition(-scores, keep_n - 1)[:keep_n]) if keep_n < scores.size \
            else np.arange(scores.size)
        renumber = np.full(scores.size, -1, dtype=np.int64)
        renumber[keep] = np.arange(keep.size)
        self.evicted += scores.size - keep.size
        self._items = [self._items[i] for i in keep.tolist()]
        self._categories = [self._categories[i] for i in keep.tolist()]
        self._index = {item: j for j, item in enumerate(self._items)}
        self.counts = self.counts[keep]
        return renumber[protected]

    def frequency(self, index: np.ndarray) -> np.ndarray:
        """``f_j = c_j / sum c``: the stream share of the items at vocabulary ``index``."""
        return self.counts[index] / max(float(self.counts.sum()), 1e-12)

    def probability(self, index: np.ndarray) -> np.ndarray:
        """``P(j)``: the chance that one draw gives the item at vocabulary ``index``."""
        weights = self._weights()
        return weights[index] / weights.sum()

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` draws with replacement: (raw item IDs, their categories, ``P(j)`` of each)."""
        index = self.sample_index(n)
        items = np.array(self._items, dtype=str)[index] if n else np.array([], dtype=str)
        categories = np.array(self._categories, dtype=str)[index] if n else np.array([], dtype=str)
        return items, categories, self.probability(index)

    def sample_index(self, n: int) -> np.ndarray:
        """Vocabulary indices of ``n`` draws (inverse-CDF over the cumulative weights)."""
        if n and not self._items:
            raise ValueError("cannot sample before any item was observed")
        cdf = np.cumsum(self._weights())
        index = np.searchsorted(cdf, self.rng.random(n) * cdf[-1], side="right") if n else np.zeros(0, np.int64)
        return np.minimum(index, len(self._items) - 1)

    def probability_of(self, items: np.ndarray) -> np.ndarray:
        """``P(j)`` of raw item IDs; 0 for items the sampler never saw."""
        index = np.array([self._index.get(i, -1) for i in np.asarray(items).astype(str).tolist()], dtype=np.int64)
        out = np.zeros(index.size, dtype=np.float64)
        if len(self._items):
            known = index >= 0
            out[known] = self.probability(index[known])
        return out

    def categories_of(self, index: np.ndarray) -> np.ndarray:
        return np.array(self._categories, dtype=str)[index]

    def _weights(self) -> np.ndarray:
        return self.counts if self.alpha == 1.0 else self.counts ** self.alpha


def add_sampled_negatives(batch: ExampleBatch, sampler: NegativeSampler, k: int = 4,
                          observe: bool = True) -> ExampleBatch:
    """The batch plus ``k`` sampled negatives per positive row, with ``sample_p`` on every row.

    A negative copies its positive's user, context, recent items and time, takes a sampled item
    (and its category), has every label 0 and ``sampled = True``; a draw that hits the
    positive's own item gets weight 0. ``observe`` first counts the batch's items in the sampler.
    Dense features must be added after sampling (a negative's item features differ).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if batch.dense is not None:
        raise ValueError("sample negatives before adding dense features: negatives need their own")
    if observe:
        stream_index = sampler.observe_many(batch.items.astype(str), batch.categories.astype(str))
    else:
        stream_index = np.array([sampler._index[i] for i in batch.items.astype(str).tolist()], dtype=np.int64)
    stream_sampled = batch.sampled if batch.sampled is not None else np.zeros(len(batch), dtype=bool)
    positive = np.flatnonzero((batch.labels[:, 0] > 0) & ~stream_sampled)
    rows = np.repeat(positive, k)
    neg_index = sampler.sample_index(rows.size)
    negatives = batch.take(rows)
    negatives = replace(
        negatives, items=np.array(sampler._items, dtype=str)[neg_index] if rows.size else negatives.items.astype(str),
        categories=sampler.categories_of(neg_index) if rows.size else negatives.categories.astype(str),
        labels=np.zeros_like(negatives.labels),
        weights=np.where(neg_index == stream_index[rows], 0.0, 1.0).astype(np.float32),
        sampled=np.ones(rows.size, dtype=bool), sample_p=None)
    stream = replace(batch, items=batch.items.astype(str), sampled=stream_sampled, sample_p=None)
    out = ExampleBatch.concat([stream, negatives])
    index = np.concatenate([stream_index, neg_index])
    p = sampler.probability(index)
    return replace(out, sample_p=p.astype(np.float32),
                   noise_log_q=np.log(np.maximum(k * p, 1e-30)).astype(np.float32) if k else None)


def add_softmax_candidates(batch: ExampleBatch, sampler: NegativeSampler, m: int) -> ExampleBatch:
    """The batch plus ``m`` items drawn from ``sampler`` that serve only as candidates of the towers' softmax.

    The rows have weight 0 and unknown labels (no ranking loss, never a softmax positive), so they
    widen the softmax from the batch's own items to a shared sample of the catalogue (mixed
    negative sampling, Yang et al. 2020); ``sample_p`` is set on every row for the log-Q term.
    """
    if m <= 0 or not len(sampler):
        return batch
    index = sampler.sample_index(m)
    pick = np.zeros(m, dtype=np.int64)  # the candidate rows borrow the first row's user and context
    extra = batch.take(pick)
    extra = replace(extra, items=np.array(sampler._items, dtype=str)[index], categories=sampler.categories_of(index),
                    noise_log_q=None if extra.noise_log_q is None else np.zeros(m, dtype=np.float32),
                    labels=np.full_like(extra.labels, np.nan), weights=np.zeros(m, dtype=np.float32),
                    sampled=np.ones(m, dtype=bool), sample_p=None,
                    dense=None if extra.dense is None else np.zeros_like(extra.dense))
    base = replace(batch, items=batch.items.astype(str), sample_p=None,
                   sampled=batch.sampled if batch.sampled is not None else np.zeros(len(batch), dtype=bool))
    out = ExampleBatch.concat([base, extra])
    return replace(out, sample_p=sampler.probability_of(out.items).astype(np.float32))
