"""Initial values of newly admitted embedding rows, derived from the ID itself.

The value of a new row is a pure function of ``(feature ID, coordinate, seed)`` -- a counter-based
generator built on :func:`mix64` -- rather than draws from a stateful RNG. So a row gets the same
start wherever and whenever it is admitted: on any shard, in any batch order, after a restore.
That keeps a sharded table equal to the in-process one and restores bit-identical.

>>> ids = np.array([5, 6], dtype=np.uint64)
>>> a = Uniform(scale=0.1).values(ids, dim=4)
>>> a.shape, a.dtype, bool(np.abs(a).max() <= 0.1)
((2, 4), dtype('float32'), True)
>>> bool((a == Uniform(scale=0.1).values(ids[::-1], dim=4)[::-1]).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from param_server.hash_index import mix64

__all__ = ["Zeros", "Uniform", "Normal", "initializer_from_dict"]

_TWO_POW_53 = float(2**53)


def _unit_uniform(ids: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Values in [0, 1) as float64, one per (ID, coordinate), from 53 bits of a mixed counter."""
    ids = np.asarray(ids, dtype=np.uint64)
    counter = mix64(ids, seed)[:, None] + np.arange(1, dim + 1, dtype=np.uint64)[None, :]
    bits = mix64(counter.ravel()).reshape(ids.size, dim) >> np.uint64(11)
    return bits.astype(np.float64) / _TWO_POW_53


@dataclass(frozen=True)
class Zeros:
    """All-zero rows (e.g. for bias-like slots trained with FTRL)."""

    name: ClassVar[str] = "zeros"

    def values(self, ids: np.ndarray, dim: int) -> np.ndarray:
        return np.zeros((np.asarray(ids).size, dim), dtype=np.float32)


@dataclass(frozen=True)
class Uniform:
    """Uniform in ``[-scale, scale)``, the usual small-random start of embeddings."""

    scale: float = 0.05
    seed: int = 0
    name: ClassVar[str] = "uniform"

    def values(self, ids: np.ndarray, dim: int) -> np.ndarray:
        unit = _unit_uniform(ids, dim, self.seed)
        return ((unit * 2.0 - 1.0) * self.scale).astype(np.float32)


@dataclass(frozen=True)
class Normal:
    """Normal with mean 0 and standard deviation ``std`` (Box-Muller over two hashed uniforms)."""

    std: float = 0.01
    seed: int = 0
    name: ClassVar[str] = "normal"

    def values(self, ids: np.ndarray, dim: int) -> np.ndarray:
        u1 = _unit_uniform(ids, dim, self.seed)
        u2 = _unit_uniform(ids, dim, self.seed ^ 0x5BD1E995)
        radius = np.sqrt(-2.0 * np.log1p(-u1))
        return (radius * np.cos(2.0 * np.pi * u2) * self.std).astype(np.float32)


AnyInitializer = Union[Zeros, Uniform, Normal]
_BY_NAME: dict[str, type] = {cls.name: cls for cls in (Zeros, Uniform, Normal)}


def initializer_from_dict(spec: dict) -> AnyInitializer:
    """Build an initializer from ``{"name": "uniform", "scale": 0.05}``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in _BY_NAME:
        raise ValueError(f"unknown initializer {name!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[name](**spec)
