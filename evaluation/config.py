"""Configuration of an evaluation run and of the model variant, as typed dataclasses.

Kept apart from the code that runs them so the command line can read the defaults without
importing torch.

>>> EvalConfig(variants=("model", "bogus"))
Traceback (most recent call last):
...
ValueError: unknown variants ['bogus']; known: ('model', 'batch', 'hashed', 'popularity', 'trending', 'cooccurrence')
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["VARIANTS", "TowerConfig", "EvalConfig"]

VARIANTS = ("model", "batch", "hashed", "popularity", "trending", "cooccurrence")


@dataclass(frozen=True)
class TowerConfig:
    """Hyperparameters of the model variant (chosen on the first 30 % of ml-100k, see README).

    Attributes:
        dim: floats per sparse row.
        tower_dim, tower_hidden, temperature: the towers (see :class:`rtrec.recipe.model.ModelConfig`).
        sparse_lr, init_scale: Adagrad learning rate and initial range of the sparse rows.
        dense_lr: Adam learning rate of the tower weights.
        steps: gradient steps per batch.
        popularity_half_life_s: half-life of the real-time popularity feature.
        production_admission: keep the production admission/expiry of each slot (else admit at once,
            never expire).
        recent_len: the user's last items averaged in the user tower.
        last_item_as_context: also feed the latest item as the tower's context field.
        replay_batches: extra steps per batch on past events drawn uniformly (experience replay).
        replay_window: the replayed events come from this many latest events (0 = all the past).
    """

    dim: int = 32
    tower_dim: int = 32
    tower_hidden: int = 64
    temperature: float = 0.05
    sparse_lr: float = 0.05
    init_scale: float = 0.05
    dense_lr: float = 1e-3
    steps: int = 2
    popularity_half_life_s: float = 7 * 86_400.0
    production_admission: bool = True
    recent_len: int = 5
    last_item_as_context: bool = False
    replay_batches: int = 2
    replay_window: int = 0



@dataclass(frozen=True)
class EvalConfig:
    """How the evaluation runs.

    Attributes:
        warmup: share of the stream learned from but not evaluated.
        until: share of the stream processed at all (< 1 for tuning on a prefix).
        batch_size: most events per batch (ranked together, then learned together).
        refresh_s: event seconds between weight refreshes of the ``batch`` variant.
        hash_buckets: buckets per slot of the ``hashed`` variant.
        trending_half_life_s: half-life of the ``trending`` baseline.
        cooccurrence_query: the user's last items the ``cooccurrence`` baseline sums over.
        cooccurrence_window: pairs counted within this many of a user's actions (None = all).
        period_s: width of the periods of the over-time metrics.
        variants: which variants to run.
        towers: the model's hyperparameters.
        seed: seeds initial weights and tie-breaking.
    """

    warmup: float = 0.1
    until: float = 1.0
    batch_size: int = 32
    refresh_s: float = 86_400.0
    hash_buckets: int = 1000
    trending_half_life_s: float = 7 * 86_400.0
    cooccurrence_query: int = 5
    cooccurrence_window: int | None = 10
    period_s: float = 7 * 86_400.0
    variants: tuple[str, ...] = VARIANTS
    towers: TowerConfig = field(default_factory=TowerConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")
        if not 0.0 <= self.warmup < self.until <= 1.0:
            raise ValueError(f"need 0 <= warmup < until <= 1, got {self.warmup}, {self.until}")
        if self.batch_size < 1 or self.hash_buckets < 1:
            raise ValueError("batch_size and hash_buckets must be >= 1")
