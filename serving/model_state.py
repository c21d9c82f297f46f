"""The model serving runs: the shared :class:`RecModel` over the mirror, swapped whole on a dense sync.

A request takes ``holder.current`` once and uses that :class:`ServingModel` to the end, so a
dense-weight swap (a new model built beside the old one, then one reference assignment) never
changes the weights under a request in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from features.ids import feature_ids
from rtrec.recipe.model import ModelConfig, RecModel, masked_mean, recent_summary
from serving.mirror import ParamMirror
from rtrec.recipe.examples import ModelSlots, context_strings, pad_strings, slot_ids
from rtrec.recipe.trainer import Scorer, pull_rows

__all__ = ["ServingModel", "ModelHolder", "UserSide"]


@dataclass(frozen=True)
class ServingModel:
    """One immutable model version: the scorer over the mirror and the dense version it loaded."""

    scorer: Scorer
    dense_version: Any

    @property
    def model(self) -> RecModel:
        return self.scorer.model

    def item_vectors(self, item_fids: np.ndarray, category_ids: np.ndarray, category_known: np.ndarray) -> np.ndarray:
        """Item-tower vectors ``(n, D)`` of items given by feature ID, with their categories' feature
        IDs where ``category_known`` (:meth:`serving.catalog.ItemCatalog.category_ids`), rows from
        the mirror.

        Equals ``Scorer.embed_items(names, categories)``, but needs no raw names or category
        strings, so every synced item is embedded by a few vectorised calls.
        """
        params, dim = self.scorer.params, self.scorer.slots.dim
        known = np.asarray(category_known, dtype=bool)
        with torch.no_grad():
            items = torch.from_numpy(params.pull_many(np.asarray(item_fids, dtype=np.uint64)))
            cat_rows = np.zeros((known.size, dim), dtype=np.float32)
            if known.any():
                cat_rows[known] = params.pull_many(np.asarray(category_ids, dtype=np.uint64)[known])
            return self.model.item_vectors(items, torch.from_numpy(cat_rows)).numpy()

    def user_sides(self, user_ids: Sequence[str], recents: Sequence[Sequence[str]],
                   contexts: Sequence[Mapping[str, Any] | None]) -> UserSide:
        """The users' part of the model, ``B`` users at once: rows pulled once, means and tower vectors."""
        slots = self.scorer.slots
        user = feature_ids(slots.user, list(user_ids))
        recent_ids, recent_valid = slot_ids(slots.item, pad_strings(recents))
        ctx_ids, ctx_valid = slot_ids(slots.context, context_strings(contexts))
        with torch.no_grad():
            pulled = pull_rows(self.scorer.params, [(user, np.ones(user.size, dtype=bool)), (ctx_ids, ctx_valid),
                                                    (recent_ids, recent_valid)], slots.dim)
            u, ctx, rec = pulled.fields
            recent_mean = recent_summary(rec, torch.from_numpy(recent_valid))
            context_mean = masked_mean(ctx, torch.from_numpy(ctx_valid))
            return UserSide(u, recent_mean, context_mean, self.model.user_vector_from(u, recent_mean, context_mean))

    def user_side(self, user_id: str, recent: Sequence[str], context: Mapping[str, Any] | None) -> UserSide:
        """:meth:`user_sides` of one user."""
        return self.user_sides([user_id], [recent], [context])

    def score_rows(self, sides: UserSide, rows: np.ndarray, item_fids: np.ndarray,
                   categories: Sequence[str | None], dense: np.ndarray) -> np.ndarray:
        """Ranking scores ``(n,)`` (:meth:`RecModel.ranking_logit` through a sigmoid) of ``n`` (user, item) pairs: user ``rows[i]`` of ``sides`` with
        item ``item_fids[i]`` -- the candidates of several requests in one pass of the ranking head."""
        slots, n = self.scorer.slots, len(item_fids)
        cats = np.array(["" if c is None else str(c) for c in categories] or [""], dtype=str)[:n]
        cat_ids, cat_valid = slot_ids(slots.category, cats)
        with torch.no_grad():
            pulled = pull_rows(self.scorer.params, [(np.asarray(item_fids, dtype=np.uint64), np.ones(n, dtype=bool)),
                                                    (cat_ids, cat_valid)], slots.dim)
            items, cat_rows = pulled.fields
            v = self.model.item_vectors(items, cat_rows)
            r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            z = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
            logits = self.model.rank_logits(sides.user, sides.recent_mean, sides.context_mean, sides.vector,
                                            items, cat_rows, v, z, rows=r)
            return torch.sigmoid(self.model.ranking_logit(logits, sides.vector[r], v, z)).numpy()

    def score_with(self, side: UserSide, item_fids: np.ndarray, categories: Sequence[str | None],
                   dense: np.ndarray) -> np.ndarray:
        """Ranking scores ``(n,)`` of ``n`` candidate items (by feature ID) for the one user of ``side``."""
        return self.score_rows(side, np.zeros(len(item_fids), dtype=np.int64), item_fids, categories, dense)

    def score_candidates(self, user_id: str, recent: Sequence[str], context: Mapping[str, Any] | None,
                         item_fids: np.ndarray, categories: Sequence[str | None], dense: np.ndarray) -> np.ndarray:
        """Ranking scores ``(n,)`` of one user with ``n`` candidate items given by feature ID.

        The same numbers as ``Scorer.score_many(ExampleBatch.for_scoring(...))``, but the user's
        fields (user row, recent items, context) are mapped, pulled and run through the user tower
        once and broadcast over the candidates instead of once per candidate.
        """
        return self.score_with(self.user_side(user_id, recent, context), item_fids, categories, dense)


@dataclass(frozen=True)
class UserSide:
    """The users' tensors of one batch of requests: ``(B, d)`` rows and means, ``(B, 2d)`` recent-item
    summaries (:func:`rtrec.recipe.model.recent_summary`), ``(B, D)`` tower vectors."""

    user: torch.Tensor
    recent_mean: torch.Tensor
    context_mean: torch.Tensor
    vector: torch.Tensor


class ModelHolder:
    """Holds the current :class:`ServingModel`; :meth:`load_dense` builds a new one and swaps it in."""

    def __init__(self, mirror: ParamMirror, config: ModelConfig, slots: ModelSlots) -> None:
        self.mirror, self.config, self.slots = mirror, config, slots
        self.current = ServingModel(Scorer(mirror, RecModel(config), slots), dense_version=None)

    def load_dense(self, tensors: dict[str, np.ndarray], version: Any) -> ServingModel:
        """Build a model with these dense weights (ValueError if they do not fit) and swap it in."""
        model = RecModel(self.config)
        model.load_dense_arrays(tensors)
        model.eval()
        fresh = ServingModel(Scorer(self.mirror, model, self.slots), dense_version=version)
        self.current = fresh  # one reference assignment: requests in flight keep the old model
        return fresh
