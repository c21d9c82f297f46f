"""Sparse optimizers applied on the parameter server, as Monolith does: workers push gradients.

Each optimizer is a frozen dataclass (its configuration) with one interface, vectorised over the
rows of a batch: ``state_width(dim)`` float32 values of per-row state, ``init_state(weights)``
for freshly admitted rows, and ``apply(weights, state, grads)`` that updates gathered copies in
place. Duplicate IDs within a batch are summed before ``apply`` (by the table), so each row is
updated once per push.

>>> w = np.array([[1.0, -1.0]], dtype=np.float32)
>>> s = Adagrad(lr=0.5, initial_accumulator=0.0).init_state(w)
>>> Adagrad(lr=0.5, initial_accumulator=0.0).apply(w, s, np.array([[2.0, 0.0]], dtype=np.float32))
>>> w.round(3).tolist(), s.tolist()
([[0.5, -1.0]], [[4.0, 0.0]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Union

import numpy as np

__all__ = ["Optimizer", "SGD", "Adagrad", "FTRL", "optimizer_from_dict"]


class Optimizer(Protocol):
    """What every sparse optimizer provides."""

    name: ClassVar[str]

    def state_width(self, dim: int) -> int: ...

    def init_state(self, weights: np.ndarray) -> np.ndarray: ...

    def apply(self, weights: np.ndarray, state: np.ndarray, grads: np.ndarray) -> None: ...


@dataclass(frozen=True)
class SGD:
    """Plain stochastic gradient descent: ``w -= lr * g``; no state."""

    lr: float = 0.05
    name: ClassVar[str] = "sgd"

    def state_width(self, dim: int) -> int:
        return 0

    def init_state(self, weights: np.ndarray) -> np.ndarray:
        return np.zeros((weights.shape[0], 0), dtype=np.float32)

    def apply(self, weights: np.ndarray, state: np.ndarray, grads: np.ndarray) -> None:
        weights -= np.float32(self.lr) * grads


@dataclass(frozen=True)
class Adagrad:
    """Adagrad (Duchi et al. 2011), per coordinate: ``G += g**2; w -= lr * g / (sqrt(G) + eps)``.

    State: the accumulator ``G`` (one float per coordinate), starting at ``initial_accumulator``
    as TensorFlow's does, so the first steps are not huge.
    """

    lr: float = 0.05
    initial_accumulator: float = 0.1
    eps: float = 1e-8
    name: ClassVar[str] = "adagrad"

    def state_width(self, dim: int) -> int:
        return dim

    def init_state(self, weights: np.ndarray) -> np.ndarray:
        return np.full(weights.shape, self.initial_accumulator, dtype=np.float32)

    def apply(self, weights: np.ndarray, state: np.ndarray, grads: np.ndarray) -> None:
        state += grads * grads
        weights -= np.float32(self.lr) * grads / (np.sqrt(state) + np.float32(self.eps))


@dataclass(frozen=True)
class FTRL:
    """FTRL-Proximal (McMahan et al. 2013), per coordinate, with state ``z`` and ``n``::

        sigma = (sqrt(n + g**2) - sqrt(n)) / alpha
        z += g - sigma * w;  n += g**2
        w = 0                                                  if |z| <= l1
        w = -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)   otherwise

    A new row's ``z`` is chosen so that the rule reproduces its initial weights (``n = 0``).
    """

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 0.0
    name: ClassVar[str] = "ftrl"

    def state_width(self, dim: int) -> int:
        return 2 * dim

    def init_state(self, weights: np.ndarray) -> np.ndarray:
        dim = weights.shape[1]
        state = np.zeros((weights.shape[0], 2 * dim), dtype=np.float32)
        denominator = self.beta / self.alpha + self.l2
        state[:, :dim] = -(weights * np.float32(denominator)) - np.sign(weights) * np.float32(self.l1)
        return state

    def apply(self, weights: np.ndarray, state: np.ndarray, grads: np.ndarray) -> None:
        dim = weights.shape[1]
        z, n = state[:, :dim], state[:, dim:]
        alpha = np.float32(self.alpha)
        n_new = n + grads * grads
        sigma = (np.sqrt(n_new) - np.sqrt(n)) / alpha
        z += grads - sigma * weights
        n[...] = n_new
        denominator = (np.float32(self.beta) + np.sqrt(n)) / alpha + np.float32(self.l2)
        shrunk = z - np.sign(z) * np.float32(self.l1)
        weights[...] = np.where(np.abs(z) <= self.l1, np.float32(0.0), -shrunk / denominator)


AnyOptimizer = Union[SGD, Adagrad, FTRL]
_BY_NAME: dict[str, type] = {cls.name: cls for cls in (SGD, Adagrad, FTRL)}


def optimizer_from_dict(spec: dict) -> AnyOptimizer:
    """Build an optimizer from ``{"name": "adagrad", "lr": 0.05, ...}`` (config files, snapshots).

    >>> optimizer_from_dict({"name": "ftrl", "l1": 0.1})
    FTRL(alpha=0.05, beta=1.0, l1=0.1, l2=0.0)
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in _BY_NAME:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[name](**spec)
