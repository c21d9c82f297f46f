"""The online trainer: one micro-batch = one pull, forward, backward, one push (Monolith style).

``train_many(batch)``:

1. map the batch to feature IDs and dedupe them (``np.unique`` with inverse) -- padding and
   missing values pull nothing;
2. ONE ``pull_many`` of the unique IDs; the rows become one leaf tensor ``E`` (``requires_grad``)
   from which every field is gathered, so ``dL/dE`` is already summed over occurrences;
3. forward (``rtrec.recipe.model.RecModel``) and the loss, summed over examples::

       L = sum_i w_i sum_h m_ih BCE(logit_ih - n_i, y_ih)  +  lambda * sum_{i in P} w_i CE_i
       CE_i = -log softmax_j( <u_i, v_j> / tau - log Q_j )[item_i]

   ``m_ih`` masks unknown labels (NaN); ``n_i = log(k P(item_i))`` on the rows of positive-only
   actions and their ``k`` sampled negatives, 0 on impressions (noise-contrastive estimation:
   a head trained to tell data from draws of ``P`` learns ``logit - log(k P)``, so with ``n_i``
   subtracted its own logit estimates ``log p(item | user)``, the order serving needs; without
   it the head ranks items by how unlike the sampler they are, and on ml-100k it halved the hits
   of retrieval alone). ``P`` are the click-positive, non-sampled rows; ``j``
   runs over the batch's distinct items (in-batch negatives plus ``SOFTMAX_CANDIDATES`` items
   drawn from the sampler, :mod:`rtrec.recipe.training`) and ``Q_j`` is how many times item
   ``j`` is expected among the batch's rows, one scale for every batch:
   ``Q_j = n_stream f_j + n_sampled P_j`` with ``f_j`` the item's share of recent stream rows
   (the trainer's :class:`~rtrec.recipe.negatives.ItemFrequency`, counted on every batch's
   non-sampled rows) and ``P_j`` the negative sampler's draw probability (``batch.sample_p``;
   0 where the batch sampled no negatives);
4. backward; ONE ``push_many(unique IDs, dL/dE)`` -- the per-example-sum gradient, as plain
   SGD on each example would see it; the server applies its per-slot optimizer;
5. the dense weights take a local Adam step on ``L / sum_i w_i``.

Dense weights with several workers: every worker trains its own copy and every
``dense_sync_every`` batches (a) pulls the server's copy and, if another worker pushed since this
one did (the dense version moved), mixes it in: ``W <- (1 - mix) W + mix W_server`` -- gossip
averaging that keeps the workers' copies within a few sync periods of each other; then (b) pushes
its own copy (last writer wins on the server, which serving syncs). With one worker (a) is a no-op
and the server holds a copy at most ``dense_sync_every`` batches old. Adam's moments stay local.
At start a trainer adopts the server's dense weights if there are any, else pushes its own.

The batch's AUC is computed from the predictions of step 3, before the update (prequential).
Rolling loss and AUC are exported as Prometheus gauges ``rtrec_trainer_loss`` and
``rtrec_trainer_auc``.

>>> from param_server.store import ParamStore
>>> from rtrec.events import Event
>>> trainer = OnlineTrainer(ParamStore())
>>> imps = [(Event(str(n), f"u{n % 3}", f"i{n % 5}", "impression", float(n)), float(n % 2)) for n in range(8)]
>>> stats = trainer.train_many(ExampleBatch.from_impressions(imps))
>>> stats.examples, stats.loss > 0
(8, True)
>>> trainer.embed_items(["i1", "i2"]).shape
(2, 32)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from torch.nn import functional as F

from param_server.config import DEFAULT_TABLES, EmbeddingConfig
from rtrec.recipe.model import ModelConfig, RecModel, SparseFields
from rtrec.recipe.examples import ExampleBatch, FeatureIdBatch, ModelSlots, context_strings, pad_strings, slot_ids
from rtrec.recipe.negatives import ItemFrequency

log = logging.getLogger(__name__)

__all__ = ["OnlineTrainer", "TrainerConfig", "TrainStats", "Scorer", "TrainerMetrics", "RollingAUC",
           "binary_auc", "pull_rows"]


@dataclass(frozen=True)
class TrainerConfig:
    """How the trainer learns and syncs.

    Attributes:
        lr: Adam learning rate of the dense weights.
        retrieval_weight: ``lambda``, weight of the towers' in-batch softmax loss.
        dense_sync_every: batches between dense syncs with the parameter server.
        dense_mix: share of the server's dense weights mixed in when another worker pushed.
        grad_clip: max L2 norm of the dense gradient (None = no clipping).
        auc_window: recent predictions in the rolling AUC.
        loss_window: recent batches in the rolling loss.
        freq_half_life_steps: half-life (in batches) of the item frequencies behind log Q.
    """

    lr: float = 5e-3
    retrieval_weight: float = 1.0
    dense_sync_every: int = 20
    dense_mix: float = 0.5
    grad_clip: float | None = 10.0
    auc_window: int = 10_000
    loss_window: int = 100
    freq_half_life_steps: float = 1_000.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.retrieval_weight < 0:
            raise ValueError("lr must be > 0 and retrieval_weight >= 0")
        if self.dense_sync_every < 1 or self.auc_window < 1 or self.loss_window < 1:
            raise ValueError("dense_sync_every, auc_window and loss_window must be >= 1")
        if not 0.0 <= self.dense_mix <= 1.0:
            raise ValueError(f"dense_mix must be in [0, 1], got {self.dense_mix}")


@dataclass(frozen=True)
class TrainStats:
    """What one ``train_many`` did; losses are per example, ``auc`` is NaN with one class only."""

    loss: float
    rank_loss: float
    retrieval_loss: float
    auc: float
    examples: int
    unique_ids: int
    seconds: float
    version: Any


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half; NaN with one class.

    >>> binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) > 0
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based ranks, ties averaged
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class RollingAUC:
    """AUC over the last ``window`` (prediction, label) pairs, in a ring buffer."""

    def __init__(self, window: int) -> None:
        self.scores = np.zeros(window, dtype=np.float32)
        self.labels = np.zeros(window, dtype=bool)
        self.size = 0
        self._next = 0

    def add_many(self, scores: np.ndarray, labels: np.ndarray) -> None:
        scores, labels = scores[-self.scores.size:], labels[-self.scores.size:]
        where = (self._next + np.arange(scores.size)) % self.scores.size
        self.scores[where], self.labels[where] = scores, labels > 0
        self._next = int((self._next + scores.size) % self.scores.size)
        self.size = min(self.scores.size, self.size + scores.size)

    def value(self) -> float:
        return binary_auc(self.scores[: self.size], self.labels[: self.size])


class TrainerMetrics:
    """Every metric of the trainer, prefixed ``rtrec_trainer_``; rolling values read at scrape time."""

    def __init__(self, registry: CollectorRegistry, auc_window: int, loss_window: int) -> None:
        prefix = "rtrec_trainer"
        self.examples = Counter(f"{prefix}_examples", "Examples trained on.", registry=registry)
        self.batches = Counter(f"{prefix}_batches", "Batches trained on.", registry=registry)
        self.pushed_ids = Counter(f"{prefix}_pushed_ids", "Distinct feature IDs pushed, summed over batches.",
                                  registry=registry)
        self.dense_syncs = Counter(f"{prefix}_dense_syncs", "Dense syncs with the parameter server.",
                                   registry=registry)
        self.seconds = Histogram(f"{prefix}_batch_duration_seconds", "Time of one train_many.", registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
        self.rolling_auc = RollingAUC(auc_window)
        self._losses: deque[tuple[float, int]] = deque(maxlen=loss_window)
        Gauge(f"{prefix}_auc", f"Prequential click AUC over the last {auc_window} predictions.",
              registry=registry).set_function(self.rolling_auc.value)
        Gauge(f"{prefix}_loss", f"Mean loss per example over the last {loss_window} batches.",
              registry=registry).set_function(self.rolling_loss)

    def observe_batch(self, stats: TrainStats, scores: np.ndarray, labels: np.ndarray) -> None:
        self.examples.inc(stats.examples)
        self.batches.inc()
        self.pushed_ids.inc(stats.unique_ids)
        self.seconds.observe(stats.seconds)
        self.rolling_auc.add_many(scores, labels)
        self._losses.append((stats.loss * stats.examples, stats.examples))

    def rolling_loss(self) -> float:
        total = sum(n for _, n in self._losses)
        return sum(s for s, _ in self._losses) / total if total else float("nan")


@dataclass
class _Pulled:
    """Rows of the distinct IDs of a batch (``leaf``) and each field gathered from them."""

    ids: np.ndarray
    leaf: torch.Tensor
    fields: list[torch.Tensor]


def pull_rows(params: Any, parts: Sequence[tuple[np.ndarray, np.ndarray]], dim: int,
              requires_grad: bool = False) -> _Pulled:
    """Dedupe the valid IDs of all ``(ids, valid)`` parts, pull them in ONE call, gather per part.

    Each part comes back as ``(*ids.shape, dim)``; invalid positions read as zero rows. With
    ``requires_grad`` the pulled rows are a leaf whose ``.grad`` sums over all occurrences.
    """
    flat_ids = np.concatenate([np.ravel(ids) for ids, _ in parts])
    flat_valid = np.concatenate([np.ravel(valid) for _, valid in parts])
    uniq, inverse = np.unique(flat_ids[flat_valid], return_inverse=True)
    index = np.full(flat_ids.size, uniq.size, dtype=np.int64)  # uniq.size = the zero row
    index[flat_valid] = inverse
    rows = params.pull_many(uniq) if uniq.size else np.zeros((0, dim), dtype=np.float32)
    if rows.shape != (uniq.size, dim):
        raise ValueError(f"the parameter server returned rows {rows.shape}, the model expects dim {dim}")
    leaf = torch.from_numpy(np.array(rows, dtype=np.float32, copy=not rows.flags.writeable))
    leaf.requires_grad_(requires_grad)
    gathered = F.embedding(torch.from_numpy(index), torch.cat([leaf, leaf.new_zeros(1, dim)]))
    sizes = [int(np.size(ids)) for ids, _ in parts]
    fields = [chunk.reshape(*np.shape(ids), dim) for chunk, (ids, _) in zip(gathered.split(sizes), parts)]
    return _Pulled(uniq, leaf, fields)


def _mask(valid: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(valid.astype(np.float32))


class Scorer:
    """Read-only use of the model for serving and evaluation: pull rows, run towers / ranker.

    ``params`` is anything with ``pull_many`` (the store, an RPC client, serving's synced copy).
    No gradients, nothing pushed.
    """

    def __init__(self, params: Any, model: RecModel, slots: ModelSlots) -> None:
        if model.config.sparse_dim != slots.dim:
            raise ValueError(f"model sparse_dim {model.config.sparse_dim} != table dim {slots.dim}")
        self.params, self.model, self.slots = params, model, slots

    def score_many(self, batch: ExampleBatch) -> np.ndarray:
        """Probabilities ``(B, heads)`` for the batch's (user, item) pairs; column 0 is the click."""
        with torch.no_grad():
            fields, _, _ = self._fields(batch, requires_grad=False)
            out = self.model(fields, _dense(batch, self.model.config.n_dense))
            return torch.sigmoid(out.logits).numpy()

    def rank_many(self, batch: ExampleBatch) -> np.ndarray:
        """The scores serving orders the batch's (user, item) pairs by, ``(B,)`` in (0, 1)
        (:meth:`~rtrec.recipe.model.RecModel.ranking_logit`)."""
        with torch.no_grad():
            fields, _, _ = self._fields(batch, requires_grad=False)
            dense = _dense(batch, self.model.config.n_dense)
            out = self.model(fields, dense)
            score = self.model.ranking_logit(out.logits, out.user_vectors, out.item_vectors, dense)
            return torch.sigmoid(score).numpy()

    def embed_users(self, users: Sequence[object], recent: Sequence[Sequence[str]] | None = None,
                    contexts: Sequence[Mapping[str, object] | None] | None = None) -> np.ndarray:
        """User-tower vectors ``float32 (n, D)`` (inner product with item vectors = retrieval score)."""
        n = len(users)
        user, user_valid = slot_ids(self.slots.user, np.asarray(users) if n else np.array([], dtype=str))
        ctx, ctx_valid = slot_ids(self.slots.context, context_strings([None] * n if contexts is None else contexts))
        rec, rec_valid = slot_ids(self.slots.item, pad_strings([[]] * n if recent is None else recent))
        with torch.no_grad():
            pulled = pull_rows(self.params, [(user, user_valid), (ctx, ctx_valid), (rec, rec_valid)],
                               self.slots.dim)
            u, c, r = pulled.fields
            return self.model.user_vectors(u, r, _mask(rec_valid), c, _mask(ctx_valid)).numpy()

    def embed_items(self, items: Sequence[object], categories: Sequence[str | None] | None = None) -> np.ndarray:
        """Item-tower vectors ``float32 (n, D)`` (for the FAISS index)."""
        n = len(items)
        cats = np.array(["" if c is None else str(c) for c in ([""] * n if categories is None else categories)],
                        dtype=str)
        item, item_valid = slot_ids(self.slots.item, np.asarray(items) if n else np.array([], dtype=str))
        cat, cat_valid = slot_ids(self.slots.category, cats)
        with torch.no_grad():
            pulled = pull_rows(self.params, [(item, item_valid), (cat, cat_valid)], self.slots.dim)
            return self.model.item_vectors(*pulled.fields).numpy()

    def _fields(self, batch: ExampleBatch, requires_grad: bool) -> tuple[SparseFields, _Pulled, FeatureIdBatch]:
        ids = batch.feature_ids(self.slots)
        ones = np.ones(len(batch), dtype=bool)
        pulled = pull_rows(self.params, [(ids.user, ones), (ids.item, ones), (ids.category, ids.category_valid),
                                         (ids.context, ids.context_valid), (ids.recent, ids.recent_valid)],
                           self.slots.dim, requires_grad)
        user, item, category, context, recent = pulled.fields
        fields = SparseFields(user, item, category, context, _mask(ids.context_valid), recent,
                              _mask(ids.recent_valid))
        return fields, pulled, ids


def _dense(batch: ExampleBatch, n_dense: int) -> torch.Tensor | None:
    if batch.dense is None:
        return None
    if batch.dense.shape[1] != n_dense:
        raise ValueError(f"batch has {batch.dense.shape[1]} dense features, the model expects {n_dense}")
    return torch.from_numpy(np.ascontiguousarray(batch.dense, dtype=np.float32))


class OnlineTrainer(Scorer):
    """Trains :class:`~rtrec.recipe.model.RecModel` on example batches against a parameter server.

    ``params``: anything with the ParamStore methods ``pull_many``, ``push_many``,
    ``pull_dense``, ``push_dense`` (the in-process store, the RPC or sharded client).
    ``registry``: where the ``rtrec_trainer_*`` metrics go (a private one when None).
    """

    def __init__(self, params: Any, model_config: ModelConfig = ModelConfig(),
                 tables: Sequence[EmbeddingConfig] = DEFAULT_TABLES, config: TrainerConfig = TrainerConfig(),
                 registry: CollectorRegistry | None = None, seed: int = 0) -> None:
        super().__init__(params, RecModel(model_config, seed=seed), ModelSlots.from_tables(tables))
        self.config = config
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.frequency = ItemFrequency(half_life_steps=config.freq_half_life_steps, seed=seed)
        self.metrics = TrainerMetrics(registry or CollectorRegistry(), config.auc_window, config.loss_window)
        self.batches = 0
        self.skipped_batches = 0
        self._pushed_dense_version: Any = None
        self._bootstrap_dense()

    def train_many(self, batch: ExampleBatch,
                   offsets: Mapping[str, Mapping[int, int]] | None = None) -> TrainStats:
        """One update on ``batch`` (see the module docstring); ``offsets`` go with the push."""
        if len(batch) == 0:
            raise ValueError("cannot train on an empty batch")
        if batch.heads != self.model.config.heads:
            raise ValueError(f"batch heads {batch.heads} != model heads {self.model.config.heads}")
        start = time.perf_counter()
        self.model.train()
        fields, pulled, ids = self._fields(batch, requires_grad=True)
        out = self.model(fields, _dense(batch, self.model.config.n_dense))

        labels = torch.from_numpy(batch.labels)
        weights = torch.from_numpy(batch.weights.astype(np.float32))
        known = (~torch.isnan(labels)).to(torch.float32) * weights[:, None]
        logits = out.logits
        if batch.noise_log_q is not None:  # noise-contrastive estimation (module docstring)
            logits = logits - torch.from_numpy(batch.noise_log_q.astype(np.float32))[:, None]
        bce = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(labels), reduction="none")
        rank_sum = (bce * known).sum()
        retrieval_sum = self._retrieval_loss(batch, ids.item, out.user_vectors, out.item_vectors, weights)
        total = rank_sum + self.config.retrieval_weight * retrieval_sum

        # Prequential AUC: the predictions above were made before this batch's update.
        # Only new impression rows: a sampled negative or a positive-only row says nothing of
        # clicks, and a replayed row was predicted before (after its own update).
        click_known = (known[:, 0] > 0).numpy()
        for skip in (batch.sampled, batch.replayed):
            if skip is not None:
                click_known &= ~skip
        if batch.noise_log_q is not None:
            click_known &= batch.noise_log_q == 0
        scores = torch.sigmoid(out.logits[:, 0]).detach().numpy()[click_known]
        click = batch.labels[click_known, 0]

        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grads = pulled.leaf.grad if pulled.leaf.grad is not None else torch.zeros_like(pulled.leaf)
        if not (torch.isfinite(total) and torch.isfinite(grads).all()):
            # the parameter server refuses them anyway; skipping keeps the worker going
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_batches += 1
            log.error("non-finite loss or gradients in a batch of %d examples: skipped, model unchanged "
                      "(%d skipped so far)", len(batch), self.skipped_batches)
            return TrainStats(loss=float("nan"), rank_loss=float("nan"), retrieval_loss=float("nan"), auc=float("nan"),
                              examples=0, unique_ids=0, seconds=time.perf_counter() - start, version=-1)
        version = self.params.push_many(pulled.ids, grads.numpy(), ts=float(batch.ts.max()), offsets=offsets)
        n = float(max(weights.sum().item(), 1e-6))
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.div_(n)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.batches += 1
        if self.batches % self.config.dense_sync_every == 0:
            self.sync_dense()

        stats = TrainStats(loss=total.item() / n, rank_loss=rank_sum.item() / n,
                           retrieval_loss=retrieval_sum.item() / n, auc=binary_auc(scores, click),
                           examples=len(batch), unique_ids=int(pulled.ids.size),
                           seconds=time.perf_counter() - start, version=version)
        self.metrics.observe_batch(stats, scores, click)
        return stats

    def sync_dense(self) -> None:
        """Mix in another worker's dense push (if any since ours), then push ours (module docstring)."""
        pulled = self.params.pull_dense(self.model.dense_names())
        mismatch = self.model.dense_mismatch(pulled.tensors)
        if mismatch and pulled.version != self._pushed_dense_version:
            log.error("the parameter server's dense weights (version %d) were pushed by a model of another "
                      "config (%s): not mixed in; this worker's replace them", pulled.version, mismatch)
        elif pulled.version != self._pushed_dense_version and self.config.dense_mix > 0:
            mix = self.config.dense_mix
            mine = self.model.dense_arrays()
            self.model.load_dense_arrays({k: (1 - mix) * v + mix * pulled.tensors[k] for k, v in mine.items()})
        self._pushed_dense_version = self.params.push_dense(self.model.dense_arrays())
        self.metrics.dense_syncs.inc()

    def _bootstrap_dense(self) -> None:
        """Adopt the server's dense weights if it has them, else publish ours."""
        try:
            pulled = self.params.pull_dense(self.model.dense_names())
        except ValueError:  # no dense weights on the server yet: this trainer is the first
            self._pushed_dense_version = self.params.push_dense(self.model.dense_arrays())
            return
        mismatch = self.model.dense_mismatch(pulled.tensors)
        if mismatch:  # the model config changed since they were pushed: a restart must not loop on it
            log.error("the parameter server's dense weights (version %d) do not fit this model (%s): "
                      "starting from this worker's initial ones and publishing them", pulled.version, mismatch)
            self._pushed_dense_version = self.params.push_dense(self.model.dense_arrays())
            return
        self.model.load_dense_arrays(pulled.tensors)
        self._pushed_dense_version = pulled.version

    def _retrieval_loss(self, batch: ExampleBatch, item_ids: np.ndarray, users: torch.Tensor,
                        items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_{i in P} w_i CE_i`` of the in-batch softmax with log-Q correction (module doc)."""
        sampled = batch.sampled if batch.sampled is not None else np.zeros(len(batch), dtype=bool)
        self.frequency.update_many(item_ids[~sampled])
        positive = np.flatnonzero((np.nan_to_num(batch.labels[:, 0]) > 0) & ~sampled & (batch.weights > 0))
        candidates, first, candidate_of_row = np.unique(item_ids, return_index=True, return_inverse=True)
        if self.config.retrieval_weight == 0 or positive.size == 0 or candidates.size < 2:
            return users.new_zeros(())
        sample_p = None
        if batch.sample_p is not None:  # an item's P_j is known on the rows the sampler saw it on
            sample_p = np.zeros(candidates.size, dtype=np.float64)
            np.maximum.at(sample_p, candidate_of_row, np.nan_to_num(batch.sample_p.astype(np.float64)))
        log_q = self._log_q(candidates, sample_p, int((~sampled).sum()), int(sampled.sum()))
        pos = torch.from_numpy(positive)
        logits = self.model.retrieval_logits(users[pos], items[torch.from_numpy(first)])
        logits = logits - torch.from_numpy(log_q)[None, :]
        ce = F.cross_entropy(logits, torch.from_numpy(candidate_of_row[positive]), reduction="none")
        return (ce * weights[pos]).sum()

    def _log_q(self, candidates: np.ndarray, sample_p: np.ndarray | None, n_stream: int,
               n_sampled: int) -> np.ndarray:
        """``log Q_j = log(n_stream f_j + n_sampled P_j)`` of each candidate (module docstring)."""
        expected = n_stream * np.exp(self.frequency.log_q(candidates).astype(np.float64))
        if sample_p is not None and n_sampled:
            expected = expected + n_sampled * sample_p
        return np.log(np.maximum(expected, 1e-30)).astype(np.float32)
