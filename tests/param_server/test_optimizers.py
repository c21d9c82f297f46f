"""Vectorised optimizers equal a per-coordinate, per-step brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from param_server.config import EmbeddingConfig
from param_server.initializers import Uniform
from param_server.optimizers import FTRL, SGD, Adagrad, optimizer_from_dict
from param_server.table import EmbeddingTable


def reference_sgd(w: float, g: float, opt: SGD, state: list[float]) -> float:
    return w - opt.lr * g


def reference_adagrad(w: float, g: float, opt: Adagrad, state: list[float]) -> float:
    state[0] += g * g
    return w - opt.lr * g / (math.sqrt(state[0]) + opt.eps)


def reference_ftrl(w: float, g: float, opt: FTRL, state: list[float]) -> float:
    z, n = state
    sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / opt.alpha
    z += g - sigma * w
    n += g * g
    state[:] = [z, n]
    if abs(z) <= opt.l1:
        return 0.0
    return -(z - math.copysign(opt.l1, z)) / ((opt.beta + math.sqrt(n)) / opt.alpha + opt.l2)


def initial_state(opt: object, w0: float) -> list[float]:
    if isinstance(opt, Adagrad):
        return [opt.initial_accumulator]
    if isinstance(opt, FTRL):
        return [-(w0 * (opt.beta / opt.alpha + opt.l2)) - math.copysign(opt.l1, w0) * (w0 != 0), 0.0]
    return []


CASES = [
    (SGD(lr=0.1), reference_sgd),
    (Adagrad(lr=0.2, initial_accumulator=0.1), reference_adagrad),
    (FTRL(alpha=0.1, beta=1.0, l1=0.0, l2=0.0), reference_ftrl),
    (FTRL(alpha=0.1, beta=1.0, l1=0.05, l2=0.1), reference_ftrl),
]


@pytest.mark.parametrize(("opt", "reference"), CASES, ids=lambda c: getattr(c, "name", ""))
def test_table_updates_equal_brute_force_reference(opt: object, reference: object) -> None:
    dim, keys, steps = 3, np.array([11, 12, 13], dtype=np.uint64), 6
    table = EmbeddingTable(EmbeddingConfig("t", 1, dim=dim, initializer=Uniform(0.3), optimizer=opt))  # type: ignore[arg-type]
    w0 = Uniform(0.3).values(keys, dim).astype(np.float64)
    weights = w0.copy()
    states = [[initial_state(opt, w0[i, j]) for j in range(dim)] for i in range(keys.size)]
    rng = np.random.default_rng(1)
    for step in range(steps):
        batch = keys[rng.integers(0, keys.size, 5)]  # with repeats: gradients of a key are summed
        g = rng.standard_normal((5, dim)).astype(np.float32)
        table.push_many(batch, g, ts=float(step), version=step + 1)
        for i, key in enumerate(keys):  # brute force: one coordinate at a time
            mine = batch == key
            if not mine.any():
                continue
            summed = g[mine].astype(np.float64).sum(axis=0)
            for j in range(dim):
                weights[i, j] = reference(weights[i, j], float(np.float32(summed[j])), opt, states[i][j])  # type: ignore[operator]
    np.testing.assert_allclose(table.pull_many(keys), weights, rtol=2e-5, atol=2e-6)


def test_ftrl_new_row_starts_at_its_initial_weights() -> None:
    opt = FTRL(alpha=0.1, l1=0.01, l2=0.2)
    w = np.array([[0.3, -0.2, 0.0]], dtype=np.float32)
    state = opt.init_state(w)
    after = w.copy()
    opt.apply(after, state, np.zeros_like(w))
    np.testing.assert_allclose(after, w, atol=1e-7)


def test_ftrl_l1_drives_small_weights_to_exact_zero() -> None:
    opt = FTRL(alpha=0.1, l1=10.0)
    w = np.zeros((1, 2), dtype=np.float32)
    state = opt.init_state(w)
    opt.apply(w, state, np.array([[0.5, -0.5]], dtype=np.float32))
    assert w.tolist() == [[0.0, 0.0]]


def test_unknown_optimizer_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizer_from_dict({"name": "adam"})
