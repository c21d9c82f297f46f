"""The model shared by trainer and serving: shapes, masks, unknown rows, dense weights as arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from param_server.store import ParamStore
from rtrec.recipe.model import COVISITS, DENSE_PREFIX, ModelConfig, RecModel, SparseFields, masked_mean

CONFIG = ModelConfig(sparse_dim=8, tower_dim=16)


def _random_fields(batch: int, dim: int, seed: int = 0, n_recent: int = 3) -> SparseFields:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return SparseFields(r(batch, dim), r(batch, dim), r(batch, dim), r(batch, 2, dim),
                        torch.ones(batch, 2), r(batch, n_recent, dim), torch.ones(batch, n_recent))


def test_dense_weights_round_trip_bit_exactly_through_the_param_store() -> None:
    source, target = RecModel(CONFIG, seed=0), RecModel(CONFIG, seed=1)
    store = ParamStore()
    store.push_dense(source.dense_arrays())
    target.load_dense_arrays(store.pull_dense(source.dense_names()).tensors)
    for name, value in source.dense_arrays().items():
        assert name.startswith(DENSE_PREFIX)
        assert value.dtype == np.float32
        assert np.array_equal(value.view(np.uint32), target.dense_arrays()[name].view(np.uint32))
    fields = _random_fields(5, CONFIG.sparse_dim)
    dense = torch.rand(5, CONFIG.n_dense)
    assert torch.equal(source(fields, dense).logits, target(fields, dense).logits)


def test_loading_dense_arrays_of_another_config_is_a_value_error() -> None:
    model = RecModel(CONFIG)
    arrays = RecModel(ModelConfig(sparse_dim=8, tower_dim=4)).dense_arrays()
    with pytest.raises(ValueError, match="shape"):
        model.load_dense_arrays(arrays)
    del arrays[next(iter(arrays))]
    with pytest.raises(ValueError, match="missing"):
        model.load_dense_arrays(arrays)


def test_same_seed_gives_same_initial_weights_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = RecModel(CONFIG, seed=7), RecModel(CONFIG, seed=7)
    assert torch.equal(torch.rand(1), expected)
    assert all(np.array_equal(v, b.dense_arrays()[k]) for k, v in a.dense_arrays().items())


def test_unknown_user_and_item_zero_rows_give_finite_outputs() -> None:
    model = RecModel(CONFIG)
    out = model(SparseFields.zeros(4, CONFIG.sparse_dim, n_context=2, n_recent=5))
    for t in (out.user_vectors, out.item_vectors, out.logits):
        assert torch.isfinite(t).all()
    assert out.logits.shape == (4, len(CONFIG.heads))


def test_padding_rows_do_not_change_the_user_vector() -> None:
    model = RecModel(CONFIG)
    fields = _random_fields(3, CONFIG.sparse_dim, n_recent=2)
    padded = SparseFields(fields.user, fields.item, fields.category, fields.context, fields.context_mask,
                          torch.cat([fields.recent, 100 * torch.ones(3, 4, CONFIG.sparse_dim)], dim=1),
                          torch.cat([fields.recent_mask, torch.zeros(3, 4)], dim=1))
    assert torch.allclose(model(fields).user_vectors, model(padded).user_vectors, atol=1e-6)


def test_masked_mean_of_no_valid_rows_is_zero() -> None:
    rows = torch.ones(2, 3, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert masked_mean(rows, mask).tolist() == [[1.0] * 4, [0.0] * 4]


def test_normalised_towers_have_unit_vectors_and_logits_are_scaled_inner_products() -> None:
    model = RecModel(CONFIG)
    out = model(_random_fields(6, CONFIG.sparse_dim))
    assert torch.allclose(out.user_vectors.norm(dim=1), torch.ones(6), atol=1e-5)
    logits = model.retrieval_logits(out.user_vectors, out.item_vectors)
    assert torch.allclose(logits, out.user_vectors @ out.item_vectors.T / CONFIG.temperature)


def test_gradients_reach_every_sparse_input() -> None:
    model = RecModel(CONFIG)
    fields = _random_fields(4, CONFIG.sparse_dim)
    leaves = [fields.user, fields.item, fields.category, fields.context, fields.recent]
    for leaf in leaves:
        leaf.requires_grad_(True)
    out = model(fields, torch.rand(4, CONFIG.n_dense))
    (out.logits.sum() + model.retrieval_logits(out.user_vectors, out.item_vectors).sum()).backward()
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves)


def test_wrong_dense_width_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="dense features"):
        RecModel(CONFIG)(SparseFields.zeros(2, CONFIG.sparse_dim), torch.zeros(2, CONFIG.n_dense + 1))


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_the_serving_order_adds_the_weighted_covisits_to_the_mean_of_head_and_towers(weight: float) -> None:
    model = RecModel(ModelConfig(sparse_dim=8, tower_dim=16, covisit_weight=weight))
    fields = _random_fields(4, 8)
    z = torch.zeros(4, model.config.n_dense)
    out = model(fields, z)
    base = (out.logits[:, 0] + (out.user_vectors * out.item_vectors).sum(1) / model.config.temperature) / 2
    z[:, COVISITS] = torch.log1p(torch.tensor([0.0, 1.0, 5.0, 50.0]))
    scored = model.ranking_logit(out.logits, out.user_vectors, out.item_vectors, z)
    assert torch.allclose(scored, base + weight * z[:, COVISITS], atol=1e-6)


def _head_by_its_equations(model: RecModel, x0: torch.Tensor) -> torch.Tensor:
    """The ranking head of the module docstring, one full ``x0`` row per pair."""
    x = x0
    for layer in model.cross:
        x = x0 * layer.linear(x) + x
    deep = model.deep(x0)
    return model.heads(torch.cat([x, deep], dim=1))


@pytest.mark.parametrize("config", [CONFIG, ModelConfig(sparse_dim=8, tower_dim=16, cross_layers=0),
                                    ModelConfig(sparse_dim=8, tower_dim=16, deep_hidden=())])
def test_candidates_of_a_user_rank_as_if_each_pair_had_its_own_copy_of_the_user(config: ModelConfig) -> None:
    # serving computes the user's part of the first layers once per user (rows=); the logits must be
    # those of the head's equations over full per-pair inputs, which training also computes
    model = RecModel(config, seed=3)
    d, g = config.sparse_dim, torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    users, n = 3, 11
    user, history, context, u = r(users, d), r(users, 3 * d), r(users, d), r(users, config.tower_dim)
    item, category, v, dense = r(n, d), r(n, d), r(n, config.tower_dim), r(n, config.n_dense)
    rows = torch.tensor([0, 2, 2, 1, 0, 1, 2, 0, 0, 1, 2])
    with torch.no_grad():
        shared = model.rank_logits(user, history, context, u, item, category, v, dense, rows=rows)
        per_pair = model.rank_logits(user[rows], history[rows], context[rows], u[rows], item, category, v, dense)
        x0 = torch.cat([user[rows], history[rows], context[rows], item, category, u[rows] * v,
                        history[rows, :d] * item, dense], dim=1)
        expected = _head_by_its_equations(model, x0)
    assert torch.allclose(shared, expected, atol=1e-5)
    assert torch.allclose(per_pair, expected, atol=1e-5)
