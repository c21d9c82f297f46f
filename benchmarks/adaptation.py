"""Adaptation to an interest shift: real-time training against a model refreshed once a simulated day.

The stream: :class:`producers.simulator.ClickSimulator` over ``--days`` days of event time (start
on a day boundary, no trending items, so the only change is the shift): at ``--shift-hours`` a
known fifth of the users switch to a new taste over categories. Only clicks are used (an
impression is not a choice; likes/shares/purchases repeat a click's item).

The run: ``rtrec eval``'s prequential loop (:func:`evaluation.runner.run_prequential`), in
process and in event-time order, with two variants of the production model: ``real_time`` (the
``model`` variant: weights updated after every batch of ``--batch-size`` events, a few event
minutes) and ``batch`` (ranks with a frozen copy of the same training run's weights, refreshed at
every ``--refresh-hours`` boundary of event time, a simulated day by default). Both read the
user's latest items as they are at the event (real-time features), as serving does. Each
evaluated click (first click of that user on that item, after the 10 % warm-up) is ranked among
all items seen so far before anything learns it.

Figures, per variant, over the shifted users only (HR@10 = the clicked item in the top 10):

- ``hr_pre``: mean HR@10 of their clicks in the ``--pre-hours`` before the shift (their level on
  the interest they had; the new interest has no clicks yet);
- ``hr_right_after``: mean HR@10 of each one's first ``RIGHT_AFTER`` clicks after the shift;
- ``recovery_events``: the smallest ``k`` such that the clicks made after ``k`` earlier
  post-shift clicks of the same user (the ``k+1``-th to ``k+WINDOW_EVENTS``-th, pooled over
  users) reach ``--recovery-share`` (80 %) of ``hr_pre``; i.e. how many of their own new-interest
  clicks the model must learn before it serves them about as well as before;
- ``hr_until_refresh``: their mean HR@10 from the shift to the batch variant's next refresh (the
  hours in which only real-time training can know about the shift); ``hr_post_day``: the same
  over the first day after the shift;
- ``recovery_s``: event seconds from the shift to the start of the first ``--bin-minutes`` bin
  from which the pooled HR@10 of ``WINDOW_BINS`` consecutive bins reaches the same target.

``None`` means "not recovered within the stream". The non-shifted users' HR@10 before and after is
reported as a control (``control_pre``, ``control_post``): it should not move.

    python -m benchmarks.adaptation [--users 2000 --items 1000 --days 3 --shift-hours 36]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from benchmarks.common import report
from evaluation.config import EvalConfig
from evaluation.runner import run_prequential
from evaluation.stream import EvalStream
from producers.simulator import ClickSimulator, SimulatorConfig

RECOVERY_SHARE = 0.8
RIGHT_AFTER = 3
WINDOW_EVENTS = 5
WINDOW_BINS = 2
DAY_S = 86_400.0
T0 = 19_676 * DAY_S  # 2023-11-15 00:00 UTC: a day boundary, so "days" of the batch variant align
CHUNK_S = 600.0  # event seconds generated per simulator call (its tastes switch between calls)


def post_shift_index(users: np.ndarray, ts: np.ndarray, shift_ts: float) -> np.ndarray:
    """Per event (in stream order): 1 for its user's first event at or after ``shift_ts``, 2 for the
    second, ...; 0 for events before the shift.

    >>> post_shift_index(np.array([0, 1, 0, 0, 1]), np.array([1., 2., 3., 4., 5.]), 3.0).tolist()
    [0, 0, 1, 2, 1]
    """
    after = ts >= shift_ts
    out = np.zeros(users.size, dtype=np.int64)
    order = np.argsort(users[after], kind="stable")  # stable: keeps each user's events in time order
    grouped = users[after][order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    rank = np.arange(grouped.size) - np.repeat(starts, np.diff(np.r_[starts, grouped.size]))
    ranks = np.empty(grouped.size, dtype=np.int64)
    ranks[order] = rank + 1
    out[after] = ranks
    return out


def first_recovery(hits: np.ndarray, counts: np.ndarray, target: float, window: int) -> int | None:
    """The first position ``i`` whose pooled rate ``sum(hits[i:i+w]) / sum(counts[i:i+w])`` reaches
    ``target``; positions with no events never count. ``None`` if there is none.

    >>> first_recovery(np.array([0., 1., 3., 4.]), np.array([4, 4, 4, 4]), 0.8, 2)
    2
    >>> first_recovery(np.array([0., 1.]), np.array([4, 4]), 0.8, 1) is None
    True
    """
    hits, counts = np.asarray(hits, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    kernel = np.ones(window)
    pooled_hits = np.convolve(hits, kernel)[window - 1:]
    pooled_counts = np.convolve(counts, kernel)[window - 1:]
    ok = (counts > 0) & (pooled_counts > 0) & (pooled_hits >= target * np.maximum(pooled_counts, 1e-12))
    found = np.flatnonzero(ok)
    return int(found[0]) if found.size else None


def sums_by(positions: np.ndarray, values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sum of values, count)`` per position ``0..size-1`` (positions outside are dropped)."""
    keep = (positions >= 0) & (positions < size)
    return (np.bincount(positions[keep], weights=values[keep], minlength=size),
            np.bincount(positions[keep], minlength=size))


def simulate(args: argparse.Namespace) -> tuple[EvalStream, set[str]]:
    """The click stream and the IDs of the users whose taste shifts."""
    config = SimulatorConfig(users=args.users, items=args.items, categories=args.categories, seed=args.seed,
                             popularity_zipf=args.popularity_zipf, trending_items=0,
                             shift_at_s=args.shift_hours * 3600.0)
    sim = ClickSimulator(config, run_id="adapt")
    events = []
    for lo in np.arange(T0, T0 + args.days * DAY_S, CHUNK_S):
        events += [e for e in sim.traffic(float(lo), float(lo) + CHUNK_S, args.requests_per_hour / 3600.0)
                   if e.action == "click"]
    return EvalStream.from_events(events), {f"u{u}" for u in sim.shifted_users.tolist()}


def adaptation_figures(stream: EvalStream, evaluated: np.ndarray, hits: np.ndarray, shifted: np.ndarray,
                       shift_ts: float, pre_s: float, bin_s: float, share: float = RECOVERY_SHARE,
                       refresh_s: float = DAY_S) -> dict:
    """The figures of the module docstring for one variant; ``evaluated`` are stream indices of ``hits``."""
    users, ts = stream.users[evaluated], stream.ts[evaluated]
    mine = shifted[users]
    index = post_shift_index(users, ts, shift_ts)
    pre = mine & (ts < shift_ts) & (ts >= shift_ts - pre_s)
    hr_pre = float(hits[pre].mean())
    target = share * hr_pre
    after = mine & (index > 0)
    max_k = int(index[after].max())
    by_k, n_k = sums_by(index[after] - 1, hits[after], max_k)  # position k = after k earlier post-shift clicks
    bins = int(np.ceil((ts.max() - shift_ts) / bin_s)) + 1
    by_bin, n_bin = sums_by(((ts[after] - shift_ts) // bin_s).astype(np.int64), hits[after], bins)
    k = first_recovery(by_k, n_k, target, WINDOW_EVENTS)
    b = first_recovery(by_bin, n_bin, target, WINDOW_BINS)
    right_after = after & (index <= RIGHT_AFTER)
    control = ~mine
    return {
        "hr_pre": round(hr_pre, 4), "hr_right_after": round(float(hits[right_after].mean()), 4),
        "recovery_target": round(target, 4), "recovery_events": k,
        "recovery_s": None if b is None else round(b * bin_s),
        "hr_until_refresh": round(float(hits[after & (ts < np.ceil(shift_ts / refresh_s) * refresh_s)].mean()), 4),
        "hr_post_day": round(float(hits[after & (ts < shift_ts + DAY_S)].mean()), 4),
        "control_pre": round(float(hits[control & (ts < shift_ts) & (ts >= shift_ts - pre_s)].mean()), 4),
        "control_post": round(float(hits[control & (ts >= shift_ts)].mean()), 4),
        "hr_by_event": [round(float(h / n), 3) if n else None for h, n in zip(by_k[:12], n_k[:12])],
        "hr_by_bin": [round(float(h / n), 3) if n else None for h, n in zip(by_bin[:12], n_bin[:12])],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    """real-time / batch, ``None`` when either did not recover (or batch at once)."""
    return round(a / b, 3) if a is not None and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--popularity-zipf", type=float, default=0.5,
                        help="skew of how often items are shown (the simulator's default 1.05 lets exposure, "
                             "not taste, decide the clicks, and the shift barely moves HR@10)")
    parser.add_argument("--days", type=float, default=4.0, help="event days simulated")
    parser.add_argument("--requests-per-hour", type=float, default=1200.0, help="simulated requests per event hour")
    parser.add_argument("--shift-hours", type=float, default=36.0, help="event hours from the start to the shift")
    parser.add_argument("--refresh-hours", type=float, default=24.0, help="batch variant: hours between refreshes")
    parser.add_argument("--pre-hours", type=float, default=12.0, help="hours before the shift for hr_pre")
    parser.add_argument("--recovery-share", type=float, default=RECOVERY_SHARE,
                        help="recovered = this share of hr_pre (default 0.8)")
    parser.add_argument("--bin-minutes", type=float, default=120.0, help="time bins of recovery_s")
    parser.add_argument("--batch-size", type=int, default=64, help="events ranked, then learned, together")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    wall = time.perf_counter()
    stream, shifted_ids = simulate(args)
    shifted = np.array([u in shifted_ids for u in stream.user_ids])
    print(f"simulated {len(stream):,} clicks of {stream.n_users:,} users on {stream.n_items:,} items "
          f"in {time.perf_counter() - wall:.1f} s; {int(shifted.sum())} users shift at hour {args.shift_hours:g}",
          flush=True)
    torch.set_num_threads(args.threads)
    config = EvalConfig(variants=("model", "batch"), refresh_s=args.refresh_hours * 3600.0, seed=args.seed,
                        batch_size=args.batch_size)
    result = run_prequential(stream, config)
    print(f"prequential run: {result.evaluated:,} evaluated clicks in {result.seconds:.1f} s", flush=True)
    end = int(round(len(stream) * config.until))
    evaluated = result.warmup_events + np.flatnonzero(~stream.repeat[result.warmup_events:end])
    shift_ts = T0 + args.shift_hours * 3600.0
    figures = {}
    for variant, name in (("model", "real_time"), ("batch", "batch")):
        hits = result.logs[variant].values()["hr@10"]
        assert hits.size == evaluated.size, "the evaluated events and the logged ranks must align"
        figures[name] = adaptation_figures(stream, evaluated, hits, shifted, shift_ts,
                                           args.pre_hours * 3600.0, args.bin_minutes * 60.0, args.recovery_share,
                                           args.refresh_hours * 3600.0)
        print(f"{name}: {figures[name]}", flush=True)
    rt, batch = figures["real_time"], figures["batch"]
    for fig in figures.values():  # the series were for the readable lines; the JSON keeps the figures
        fig.pop("hr_by_event"), fig.pop("hr_by_bin")
    report("adaptation", {
        "clicks": len(stream), "evaluated": result.evaluated, "users": stream.n_users, "items": stream.n_items,
        "shifted_users": int(shifted.sum()), "shift_hours": args.shift_hours, "refresh_hours": args.refresh_hours,
        "recovery_share": args.recovery_share, "real_time": rt, "batch": batch,
        "recovery_events_ratio": _ratio(rt["recovery_events"], batch["recovery_events"]),
        "recovery_s_ratio": _ratio(rt["recovery_s"], batch["recovery_s"]),
        "seconds": round(time.perf_counter() - wall, 1),
    })


if __name__ == "__main__":
    main()
