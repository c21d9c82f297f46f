"""The production model as a prequential ranker: RecModel's towers over rows of an in-process ParamStore.

The sparse rows (user, item, category) live in :class:`param_server.store.ParamStore` with the
production per-slot configuration (admission, expiry, server-side Adagrad), pulled and pushed
exactly as the stream worker's trainer does (:func:`rtrec.recipe.trainer.pull_rows`, one pull
and one push per step). The dense tower weights are :class:`rtrec.recipe.model.RecModel`'s, trained with
Adam. Scores are the retrieval logits plus a learned weight times a real-time popularity feature::

    s(u, j) = <u, v_j> / tau + w_pop * log(1 + trending_j)

with ``u`` from the user ID and the mean of the user's last items, ``v_j`` from the item ID and its
category. Training is the full softmax over the items seen so far (the catalogue is small enough
that no sampling is needed; the user's earlier items are left out of it, as they are of the
ranking), a few steps per batch, plus ``replay_batches`` steps on earlier events drawn from the
past (experience replay: a single pass over a stream learns slowly; replaying the past is what
more training compute buys without ever looking ahead).

Variants: :meth:`TowerRanker.snapshot` freezes a copy of every weight (``batch`` mode ranks with the
copy of the last day boundary), and ``hash_buckets`` folds every feature ID into a fixed number
of buckets per slot before it reaches the store (the ``hashed`` variant: collisions instead of
growth).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from evaluation.baselines import Trending
from evaluation.batches import EvalBatch
from evaluation.config import TowerConfig
from evaluation.stream import EvalStream
from features.ids import feature_ids
from param_server.config import DEFAULT_TABLES, EmbeddingConfig
from param_server.hash_index import mix64
from param_server.initializers import Uniform
from param_server.optimizers import Adagrad
from param_server.store import ParamStore
from rtrec.recipe.model import ModelConfig, RecModel
from rtrec.recipe.examples import ModelSlots
from rtrec.recipe.trainer import pull_rows

__all__ = ["TowerConfig", "TowerRanker", "FrozenTowers", "fold_ids", "eval_tables"]

_SLOT_MASK = np.uint64(0xFF << 56)


def eval_tables(config: TowerConfig, seed: int) -> tuple[EmbeddingConfig, ...]:
    """The production tables with the evaluated dim, learning rate and initializer seed."""
    tables = []
    for table in DEFAULT_TABLES:
        table = replace(table, dim=config.dim, optimizer=Adagrad(lr=config.sparse_lr),
                        initializer=Uniform(scale=config.init_scale, seed=seed))
        if not config.production_admission:
            table = replace(table, admit_after=1, expire_after_s=None)
        tables.append(table)
    return tuple(tables)


def fold_ids(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Hash each feature ID into one of ``buckets`` values of its own slot (the slot bits are kept).

    >>> ids = feature_ids(2, np.arange(1000))
    >>> folded = fold_ids(ids, 10)
    >>> len(set(folded.tolist())), bool((folded >> np.uint64(56) == 2).all())
    (10, True)
    """
    ids = np.asarray(ids, dtype=np.uint64)
    return (ids & _SLOT_MASK) | (mix64(ids, 0x9E37) % np.uint64(buckets))


@dataclass
class _Ids:
    """Feature IDs per dense index: users, items, item categories (with validity)."""

    user: np.ndarray
    item: np.ndarray
    category: np.ndarray
    category_valid: np.ndarray

    @classmethod
    def of(cls, stream: EvalStream, slots: ModelSlots, hash_buckets: int | None) -> "_Ids":
        category_valid = np.array([bool(c) for c in stream.categories], dtype=bool)
        ids = [feature_ids(slots.user, stream.user_ids), feature_ids(slots.item, stream.item_ids),
               feature_ids(slots.category, [c or "-" for c in stream.categories])]
        if hash_buckets is not None:
            ids = [fold_ids(x, hash_buckets) for x in ids]
        return cls(*ids, category_valid)


@dataclass
class FrozenTowers:
    """A copy of every weight at one moment (what a daily-refreshed server would serve)."""

    store: ParamStore
    model: RecModel
    popularity_weight: float
    item_vectors: torch.Tensor


class TowerRanker:
    """Prequential ranker over the production model; ``hash_buckets`` makes it the hashed variant."""

    def __init__(self, stream: EvalStream, config: TowerConfig = TowerConfig(), seed: int = 0,
                 hash_buckets: int | None = None, name: str = "model") -> None:
        self.name, self.config, self.seed = name, config, seed
        self.tables = eval_tables(config, seed)
        self.slots = ModelSlots.from_tables(self.tables)
        self.ids = _Ids.of(stream, self.slots, hash_buckets)
        self.store = ParamStore(self.tables)
        self.model = RecModel(self._model_config(), seed=seed)
        self.popularity_weight = torch.zeros((), requires_grad=True)
        self.optimizer = torch.optim.Adam([*self.model.parameters(), self.popularity_weight], lr=config.dense_lr)
        self.popularity = Trending(stream.n_items, config.popularity_half_life_s)
        self.rng = np.random.default_rng(seed)

    def scores(self, batch: EvalBatch) -> np.ndarray:
        """Scores ``(B, n_items)`` by the current weights (0 for items not seen yet)."""
        with torch.no_grad():
            n = int(batch.n_seen.max())
            items = self._item_vectors(self.store, self.model, n)
            logits = self._logits(self.store, self.model, batch, items, self.popularity_weight.item())
        return _pad(logits.numpy(), batch.stream.n_items)

    def frozen_scores(self, frozen: FrozenTowers, batch: EvalBatch) -> np.ndarray:
        """Scores by a :meth:`snapshot`'s weights (the popularity feature stays real-time)."""
        with torch.no_grad():
            n = int(batch.n_seen.max())
            logits = self._logits(frozen.store, frozen.model, batch, frozen.item_vectors[:n],
                                  frozen.popularity_weight)
        return _pad(logits.numpy(), batch.stream.n_items)

    def learn(self, batch: EvalBatch) -> None:
        """``steps`` full-softmax steps on the batch, then the popularity feature takes it in."""
        n = int(max(batch.n_seen.max(), batch.items.max() + 1))
        seen = _seen_mask(batch, n)
        for _ in range(self.config.steps):
            self._step(batch, n, seen)
        for _ in range(self.config.replay_batches):
            self._replay(batch, n)
        self.popularity.learn(batch)

    def _replay(self, batch: EvalBatch, n: int) -> None:
        """One step on earlier events drawn uniformly from the last ``replay_window`` (experience replay)."""
        first = int(batch.events[0])
        oldest = max(0, first - self.config.replay_window) if self.config.replay_window else 0
        if first - oldest < len(batch):
            return
        drawn = self.rng.choice(first - oldest, size=len(batch), replace=False)
        past = EvalBatch(batch.stream, oldest + np.sort(drawn))
        self._step(past, n, _seen_mask(past, n))

    def snapshot(self, n_items: int) -> FrozenTowers:
        """Copies of the store (through its snapshot state) and of the dense weights."""
        arrays, meta = self.store.export_state()
        store = ParamStore.from_state(arrays, meta, self.tables)
        model = RecModel(self._model_config(), seed=self.seed)
        model.load_dense_arrays(self.model.dense_arrays())
        with torch.no_grad():
            items = self._item_vectors(store, model, n_items)
        return FrozenTowers(store, model, self.popularity_weight.item(), items)

    # -- internals -----------------------------------------------------------------------------

    def _model_config(self) -> ModelConfig:
        c = self.config
        return ModelConfig(sparse_dim=c.dim, tower_dim=c.tower_dim, tower_hidden=c.tower_hidden,
                           temperature=c.temperature)

    def _step(self, batch: EvalBatch, n: int, seen: torch.Tensor) -> None:
        """One pull, forward, backward, push (sparse, Adagrad on the store) and Adam step (dense)."""
        recent = batch.recent[:, -self.config.recent_len:]
        pulled = pull_rows(self.store, self._parts(batch, recent, n), self.config.dim, requires_grad=True)
        user, rec, item, category = pulled.fields
        items = self.model.item_vectors(item, category)
        users = self._user_vectors(self.model, user, rec, recent)
        logits = self.model.retrieval_logits(users, items) + self._popularity(n, self.popularity_weight)
        loss = F.cross_entropy(logits.masked_fill(seen, -torch.inf), torch.from_numpy(batch.items),
                               reduction="sum")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.store.push_many(pulled.ids, pulled.leaf.grad.numpy(), ts=float(batch.ts.max()))
        for p in self.optimizer.param_groups[0]["params"]:
            if p.grad is not None:
                p.grad.div_(len(batch))
        self.optimizer.step()

    def _parts(self, batch: EvalBatch, recent: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(IDs, valid) of the user, recent-item and candidate-item fields, for one pull."""
        ids = self.ids
        return [(ids.user[batch.users], np.ones(len(batch), bool)),
                (ids.item[np.maximum(recent, 0)], recent >= 0),
                (ids.item[:n], np.ones(n, bool)),
                (ids.category[:n], ids.category_valid[:n])]

    def _item_vectors(self, store: ParamStore, model: RecModel, n: int) -> torch.Tensor:
        ids = self.ids
        pulled = pull_rows(store, [(ids.item[:n], np.ones(n, bool)), (ids.category[:n], ids.category_valid[:n])],
                           self.config.dim)
        return model.item_vectors(*pulled.fields)

    def _logits(self, store: ParamStore, model: RecModel, batch: EvalBatch, items: torch.Tensor,
                popularity_weight: float | torch.Tensor) -> torch.Tensor:
        recent = batch.recent[:, -self.config.recent_len:]
        ids = self.ids
        pulled = pull_rows(store, [(ids.user[batch.users], np.ones(len(batch), bool)),
                                   (ids.item[np.maximum(recent, 0)], recent >= 0)], self.config.dim)
        users = self._user_vectors(model, *pulled.fields, recent)
        return model.retrieval_logits(users, items) + self._popularity(items.shape[0], popularity_weight)

    def _user_vectors(self, model: RecModel, user: torch.Tensor, rec: torch.Tensor, recent: np.ndarray) -> torch.Tensor:
        """The user tower; with ``last_item_as_context`` the latest item is also the context field
        (the page the user is on), so the tower can weigh it apart from the mean of the recent ones."""
        mask = torch.from_numpy((recent >= 0).astype(np.float32))
        if self.config.last_item_as_context:
            context, context_mask = rec[:, -1:], mask[:, -1:]
        else:
            context, context_mask = user.new_zeros(user.shape[0], 1, user.shape[1]), user.new_zeros(user.shape[0], 1)
        return model.user_vectors(user, rec, mask, context, context_mask)

    def _popularity(self, n: int, weight: float | torch.Tensor) -> torch.Tensor:
        feature = torch.from_numpy(self.popularity.log_counts()[:n].astype(np.float32))
        return weight * feature[None, :]


def _seen_mask(batch: EvalBatch, n: int) -> torch.Tensor:
    """``(B, n)``: the items each event's user acted on before it (left out of its softmax)."""
    rows, history = batch.histories()
    seen = torch.zeros(len(batch), n, dtype=torch.bool)
    seen[torch.from_numpy(rows), torch.from_numpy(history)] = True
    seen[torch.arange(len(batch)), torch.from_numpy(batch.items)] = False
    return seen


def _pad(scores: np.ndarray, n_items: int) -> np.ndarray:
    out = np.zeros((scores.shape[0], n_items), dtype=np.float32)
    out[:, : scores.shape[1]] = scores
    return out
