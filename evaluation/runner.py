"""The prequential loop over the deployed system: for each worker micro-batch, first ask, then learn.

The events (time order) are cut into the micro-batches a live worker would see
(:func:`evaluation.batches.micro_batches` with the worker's settings), each batch into the worker's
slices, and turned into the JSON bytes producers send (:func:`rtrec.events.encode_event`). For
each batch:

1. every serving instance syncs if its period has passed (``model``, ``hashed``: ``sync_every_s``
   of the replay clock, by default as live serving syncs; ``batch``: at each hour boundary of
   event time, as a model retrained every hour would be served);
2. then, slice by slice, the slice's targets -- positive events after the warm-up whose (user,
   item) pair is new -- are asked of every variant: serving's ``recommend_many`` (top 10 after
   retrieval, ranking head and business rules) for the served variants, a full ranking of the
   items seen so far minus the user's own for the baselines; the rank of the event's item is
   logged (beyond 10 = a miss);
3. only then does the slice go into the baselines and through the worker pipeline(s) (validate,
   Redis features, joiner; the batch's last slice also trains against the parameter store), so
   the next slice's asks read its features, as live requests during a batch do.

``model`` and ``batch`` are two serving instances over one trained store; ``hashed`` is a second
pipeline and store whose tables fold IDs into ``hash_buckets`` rows per slot, on Redis DB 1.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import redis

from evaluation.baselines import Cooccurrence, Popularity, Trending
from evaluation.batches import EvalBatch, micro_batches
from evaluation.config import K, SERVED_VARIANTS, VARIANTS, EvalConfig
from evaluation.labelled import LabelledRun, record_predictions
from evaluation.metrics import MetricLog, list_ranks, target_ranks
from evaluation.stream import NEGATIVE_ACTIONS, EvalStream
from evaluation.system import ServedModel, TrainedSystem, embedded_redis, hashed_tables
from rtrec.events import Event, encode_event
from rtrec.settings import Settings, load_settings

__all__ = ["EvalConfig", "EvalResult", "VARIANTS", "run_prequential", "arrival_times"]

log = logging.getLogger(__name__)


class Ranker(Protocol):
    name: str

    def scores(self, batch: EvalBatch) -> np.ndarray: ...

    def learn(self, batch: EvalBatch) -> None: ...


@dataclass
class EvalResult:
    """Per-variant metric logs and the counts and timings of the run."""

    logs: dict[str, MetricLog]
    events: int
    evaluated: int
    warmup_events: int
    repeats_skipped: int
    seconds: float
    seconds_by_variant: dict[str, float]
    batches: int = 0
    raw_events: int = 0
    cold_start: dict[str, int] = field(default_factory=dict)
    labelled: LabelledRun | None = None
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: {k: round(v, 4) for k, v in log_.summary().items()} for name, log_ in self.logs.items()}


@dataclass
class _Run:
    """Everything one run holds: the stream, its raw bytes, the systems, servers and baselines."""

    ordered: list[Event]
    values: list[bytes]
    stream: EvalStream
    stream_index: np.ndarray  # per raw event: its index in ``stream`` (-1 for negative actions)
    systems: dict[str, TrainedSystem]
    served: dict[str, ServedModel]
    baselines: list[Ranker]
    config: EvalConfig
    result: EvalResult
    tiebreak: np.ndarray


def run_prequential(events: Sequence[Event], config: EvalConfig = EvalConfig(), settings: Settings | None = None,
                    progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Ask, log, then learn, micro-batch by micro-batch over the first ``until`` of the stream.

    Starts a Redis of its own for the run (stopped at the end, also on error).
    """
    settings = settings or load_settings()
    start = time.perf_counter()
    needs_redis = bool(set(SERVED_VARIANTS) & set(config.variants))
    with embedded_redis(settings) if needs_redis else nullcontext("") as url:
        run = _prepare(events, config, settings, url)
        ts = arrival_times(run.ordered, config.rate)
        bounds = micro_batches(ts, settings.worker_batch_within_s, settings.worker_batch_size)
        for n, (lo, hi) in enumerate(bounds):
            slices = [(lo + a, lo + b) for a, b in micro_batches(ts[lo:hi], settings.worker_slice_s, hi - lo)]
            _step(run, lo, hi, float(ts[lo]), slices)
            if progress is not None:
                progress(n + 1, len(bounds))
    result = run.result
    result.batches, result.seconds = len(bounds), time.perf_counter() - start
    return result


def arrival_times(events: Sequence[Event], rate: float | None) -> np.ndarray:
    """When each event reaches the worker: its event time, or its place in a replay at ``rate``/s.

    >>> from rtrec.events import Event
    >>> evs = [Event(str(n), "u", "i", "click", 100.0 * n) for n in range(3)]
    >>> arrival_times(evs, None).tolist(), arrival_times(evs, 10.0).tolist()
    ([0.0, 100.0, 200.0], [0.0, 0.1, 0.2])
    """
    ts = np.array([e.ts for e in events], dtype=np.float64)
    if rate is None or ts.size == 0:
        return ts
    return ts[0] + np.arange(ts.size) / rate


def _prepare(events: Sequence[Event], config: EvalConfig, settings: Settings, url: str) -> _Run:
    """Order and encode the events, build systems, serving instances and baselines."""
    ordered = sorted(events, key=lambda e: e.ts)
    stream = EvalStream.from_events(ordered, recent_len=config.cooccurrence_query)
    positive = np.array([e.action not in NEGATIVE_ACTIONS for e in ordered], dtype=bool)
    counted = np.cumsum(positive)
    end = int(round(len(stream) * config.until))
    n_raw = int(np.searchsorted(counted, end, side="left")) + 1 if end else 0
    ordered = ordered[:n_raw]
    stream_index = np.where(positive[:n_raw], counted[:n_raw] - 1, -1)
    systems, served = _systems(config, settings, url)
    result = EvalResult({name: MetricLog() for name in config.variants}, end, 0,
                        int(round(len(stream) * config.warmup)), 0, 0.0, {name: 0.0 for name in config.variants},
                        raw_events=n_raw, cold_start={name: 0 for name in served},
                        labelled=_labelled(ordered, systems),
                        settings=_settings_used(settings))
    return _Run(ordered, [encode_event(e) for e in ordered], stream, stream_index, systems, served,
                _baselines(stream, config), config, result, np.random.default_rng(config.seed).permutation(stream.n_items))


def _systems(config: EvalConfig, settings: Settings, url: str) -> tuple[dict[str, TrainedSystem], dict[str, ServedModel]]:
    """The trained systems (``model``: production tables on DB 0; ``hashed``: folded tables on DB 1)
    and the serving instances of the served variants."""
    systems: dict[str, TrainedSystem] = {}
    served: dict[str, ServedModel] = {}
    # live, serving long-polls the parameter server and syncs as soon as a training step lands, at
    # most every sync_min_interval_s; here every micro-batch ends in a training step, so the replay
    # syncs at the first batch that starts that long after the last sync
    every = settings.sync_min_interval_s if config.sync_every_s is None else config.sync_every_s
    if {"model", "batch"} & set(config.variants):
        systems["model"] = TrainedSystem.build(settings, _db(url, 0), seed=config.seed)
    if "model" in config.variants:
        served["model"] = ServedModel.build(settings, systems["model"], every)
    if "batch" in config.variants:  # a periodic retrain ships the whole model: dense weights at every refresh
        served["batch"] = ServedModel.build(settings, systems["model"], config.batch_refresh_s, aligned=True,
                                            dense_interval_s=0.0)
    if "hashed" in config.variants:
        systems["hashed"] = TrainedSystem.build(settings, _db(url, 1), hashed_tables(config.hash_buckets),
                                                seed=config.seed)
        served["hashed"] = ServedModel.build(settings, systems["hashed"], every)
    return systems, served


def _labelled(ordered: Sequence[Event], systems: dict[str, TrainedSystem]) -> LabelledRun | None:
    """The model trainer's click predictions of impression examples, and a counts baseline's of the
    same examples, on streams with impressions (:mod:`evaluation.labelled`)."""
    if "model" not in systems or not any(e.action == "impression" for e in ordered):
        return None
    return record_predictions(systems["model"].pipeline.train)


def _db(url: str, db: int) -> redis.Redis:
    """A client of database ``db`` of the run's Redis (feature writes are per DB)."""
    return redis.Redis.from_url(url.rsplit("/", 1)[0] + f"/{db}")


def _baselines(stream: EvalStream, config: EvalConfig) -> list[Ranker]:
    out: list[Ranker] = []
    if "popularity" in config.variants:
        out.append(Popularity(stream.n_items))
    if "trending" in config.variants:
        out.append(Trending(stream.n_items, config.trending_half_life_s))
    for name, exact in (("cooccurrence", False), ("cooccurrence_exact", True)):
        if name in config.variants:
            out.append(Cooccurrence(stream.n_items, config.cooccurrence_query, config.cooccurrence_window, exact))
    return out


def _step(run: _Run, lo: int, hi: int, now: float, slices: Sequence[tuple[int, int]]) -> None:
    """One micro-batch: sync what is due, then slice by slice as the worker stages them: ask for the
    slice's targets, let the baselines learn it and stage it in the systems (features written at
    once, one training step with the last slice). A live request during the batch reads the
    features of the slices staged before it, and so do these asks."""
    event_time = run.ordered[lo].ts  # the batch variant refreshes at hour boundaries of event time
    for name, served in run.served.items():
        _timed(run.result, name, served.maybe_sync, event_time if served.aligned else now)
    for a, b in slices:
        _ask_then_learn_baselines(run, a, b)
        for name, system in run.systems.items():
            _timed(run.result, name, system.process, run.values[a:b], b == hi)


def _ask_then_learn_baselines(run: _Run, lo: int, hi: int) -> None:
    """Ask every variant for the targets among events ``lo:hi`` -- positive events after the
    warm-up whose (user, item) pair is new -- then let the baselines learn those events."""
    raw = np.arange(lo, hi)
    positives = raw[run.stream_index[lo:hi] >= 0]
    sidx = run.stream_index[positives]
    after_warmup = sidx >= run.result.warmup_events
    is_target = after_warmup & ~run.stream.repeat[sidx]
    run.result.repeats_skipped += int((after_warmup & ~is_target).sum())
    run.result.evaluated += int(is_target.sum())
    if is_target.any():
        _ask_served(run, positives[is_target])
        _rank_baselines(run, sidx[is_target], first_of_user(run.stream.users[sidx], sidx)[is_target])
    for ranker in run.baselines:
        if sidx.size:
            _timed(run.result, ranker.name, ranker.learn, EvalBatch(run.stream, sidx))


def _ask_served(run: _Run, raw_targets: np.ndarray) -> None:
    """Serving's top-K for each target event; log where the event's item was."""
    events = [run.ordered[i] for i in raw_targets.tolist()]
    items = [e.item_id for e in events]
    ts = np.array([e.ts for e in events])
    for name, served in run.served.items():
        t0 = time.perf_counter()
        lists, cold = served.recommend(events, K)
        run.result.logs[name].add_many(ts, list_ranks(lists, items))
        run.result.cold_start[name] += cold
        run.result.seconds_by_variant[name] += time.perf_counter() - t0


def first_of_user(users: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Per event of a slice, its user's first event in the slice: the history the deployed system
    had applied when each of them was asked.

    >>> first_of_user(np.array([7, 3, 7, 3, 9]), np.array([10, 11, 12, 13, 14])).tolist()
    [10, 11, 10, 11, 14]
    """
    _, first, inverse = np.unique(users, return_index=True, return_inverse=True)
    return events[first[inverse]]


def _rank_baselines(run: _Run, targets: np.ndarray, as_of: np.ndarray) -> None:
    """Each baseline's rank of the target among the items seen so far that its user has not acted
    on, both as of ``as_of`` (what the system had applied, see :class:`EvalBatch`; the
    ``cooccurrence_exact`` oracle: as of the target itself)."""
    batch = EvalBatch(run.stream, targets, as_of)
    masks: dict[bool, np.ndarray] = {}
    for ranker in run.baselines:
        t0 = time.perf_counter()
        exact = bool(getattr(ranker, "exact_history", False))
        candidates = masks[exact] if exact in masks else masks.setdefault(exact, batch.candidates(exact))
        ranks = target_ranks(np.asarray(ranker.scores(batch)), batch.items, candidates, run.tiebreak)
        run.result.logs[ranker.name].add_many(batch.ts, ranks)
        run.result.seconds_by_variant[ranker.name] += time.perf_counter() - t0


def _timed(result: EvalResult, name: str, fn: Callable, *args: object) -> object:
    """Call ``fn`` and charge its time to ``name`` (the ``model`` system's training is ``model``'s)."""
    t0 = time.perf_counter()
    out = fn(*args)
    result.seconds_by_variant[name] = result.seconds_by_variant.get(name, 0.0) + time.perf_counter() - t0
    return out


def _settings_used(settings: Settings) -> dict:
    """The deployed system's settings a reader of the report needs to know."""
    keys = ("worker_batch_size", "worker_batch_within_s", "worker_slice_s", "join_window_s", "sync_interval_s",
            "sync_min_interval_s", "dense_sync_interval_s", "serving_ranked", "serving_covisited", "torch_threads")
    return {k: getattr(settings, k) for k in keys}
