"""Configuration of an evaluation run, as a typed dataclass.

Kept apart from the code that runs it so the command line can read the defaults without
importing torch. The deployed system's own knobs (micro-batching, join window, sync interval,
model, trainer, ranking) are NOT here: ``rtrec eval`` takes them from :mod:`rtrec.settings` and the
recipe's defaults, as the worker and serving do.

>>> EvalConfig(variants=("model", "bogus"))
Traceback (most recent call last):
...
ValueError: unknown variants ['bogus']; known: ('model', 'batch', 'hashed', 'popularity', 'trending', 'cooccurrence', 'cooccurrence_exact')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VARIANTS", "SERVED_VARIANTS", "EvalConfig"]

VARIANTS = ("model", "batch", "hashed", "popularity", "trending", "cooccurrence", "cooccurrence_exact")
#: Variants answered by a serving instance over a trained parameter store (the rest are baselines).
SERVED_VARIANTS = ("model", "batch", "hashed")
#: List length asked from serving and cut-off of every metric.
K = 10


@dataclass(frozen=True)
class EvalConfig:
    """How the evaluation runs.

    Attributes:
        warmup: share of the positive events learned from but not evaluated.
        until: share of the positive events processed at all (< 1 for quick runs on a prefix).
        rate: replay pace in events per second (default 200, ``benchmarks.live_quality``'s), or
            None: events arrive at their own event time. The worker's micro-batches, the serving
            syncs and the ``batch`` refreshes all run on this arrival clock; events keep their own
            ``ts`` (features, windows and expiry use it). At event time a sparse log (ml-100k: one
            rating per ~3 minutes) gives ~one event per micro-batch (49,282 training steps for
            ml-100k, about an hour here); at 200/s a micro-batch holds ~40 events
            (``worker_batch_within_s``, 0.2 s).
        sync_every_s: arrival seconds between serving syncs of ``model`` and ``hashed`` (None: as
            live, where serving syncs as soon as a training step lands but at most every
            ``settings.sync_min_interval_s``; every micro-batch here ends in a training step, so
            the replay syncs at the first batch that starts that long after the last sync).
        batch_refresh_s: the ``batch`` variant's serving syncs only when arrival time crosses a
            multiple of this (an hour: periodic retraining served hourly, CONTRACT.md).
        hash_buckets: rows per slot of the ``hashed`` variant's parameter store.
        trending_half_life_s: half-life of the ``trending`` baseline.
        cooccurrence_query: the user's last items the ``cooccurrence`` baselines sum over
            (``cooccurrence``: as the system had applied them when asked; ``cooccurrence_exact``:
            every earlier event, those of the same slice too).
        cooccurrence_window: pairs counted within this many of a user's actions (None = all).
        period_s: width of the periods of the over-time metrics.
        variants: which variants to run.
        seed: seeds the trainer's initial weights and negative sampling, and tie-breaking of baselines.
    """

    warmup: float = 0.1
    until: float = 1.0
    rate: float | None = 200.0
    sync_every_s: float | None = None
    batch_refresh_s: float = 3600.0
    hash_buckets: int = 10_000
    trending_half_life_s: float = 7 * 86_400.0
    cooccurrence_query: int = 5
    cooccurrence_window: int | None = 10
    period_s: float = 7 * 86_400.0
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")
        if not 0.0 <= self.warmup < self.until <= 1.0:
            raise ValueError(f"need 0 <= warmup < until <= 1, got {self.warmup}, {self.until}")
        if self.hash_buckets < 1 or self.batch_refresh_s <= 0:
            raise ValueError("hash_buckets must be >= 1 and batch_refresh_s > 0")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be > 0 events/s (or None: event time), got {self.rate}")
        if self.sync_every_s is not None and self.sync_every_s <= 0:
            raise ValueError(f"sync_every_s must be > 0, got {self.sync_every_s}")
