"""``rtrec eval``: arguments, and the run that loads a stream, evaluates it and writes the report.

The report goes to ``--out``; progress and the summary table go to stderr; the LAST stdout line
is the JSON summary (CONTRACT.md, "Prequential evaluation").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from rtrec.errors import RtrecError

if TYPE_CHECKING:
    from evaluation.config import EvalConfig

__all__ = ["add_arguments", "run"]

log = logging.getLogger("rtrec.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rtrec eval``; the deployed system's own knobs come from settings (RTREC_*)."""
    from evaluation.config import VARIANTS, EvalConfig

    defaults = EvalConfig()
    parser.add_argument("file", nargs="?", help="CSV, TSV or JSONL event file (as for rtrec replay)")
    parser.add_argument("--dataset", choices=["ml-100k", "obd-random", "obd-bts", "simulator"],
                        help="evaluate on a bundled dataset instead (obd-*: Open Bandit Dataset impressions with "
                             "clicks; simulator: 10 minutes of the click simulator)")
    parser.add_argument("--columns", help="event field=file column, e.g. user_id=userId,item_id=movieId,ts=timestamp")
    parser.add_argument("--action", default="click", help="action for rows without one (default click)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N events of the file")
    parser.add_argument("--out", default=None, help="report folder (default reports/eval-<dataset or file>)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--warmup", type=float, default=defaults.warmup, help="share of the stream not evaluated")
    parser.add_argument("--until", type=float, default=defaults.until, help="share of the stream processed")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="replay pace in events/s (0: each event arrives at its own event time)")
    parser.add_argument("--sync-every-s", type=float, default=defaults.sync_every_s,
                        help="seconds between serving syncs of model and hashed (default: as live, after "
                             "the training steps, at most every RTREC_SYNC_MIN_INTERVAL_S)")
    parser.add_argument("--batch-refresh-hours", type=float, default=defaults.batch_refresh_s / 3600,
                        help="the batch variant's serving syncs at these boundaries only")
    parser.add_argument("--hash-buckets", type=int, default=defaults.hash_buckets, help="rows per slot (hashed)")
    parser.add_argument("--trending-half-life-hours", type=float, default=defaults.trending_half_life_s / 3600)
    parser.add_argument("--cooccurrence-window", type=int, default=defaults.cooccurrence_window,
                        help="cooccurrence: pairs within this many of a user's actions (0 = whole history)")
    parser.add_argument("--period-days", type=float, default=defaults.period_s / 86_400, help="plot resolution")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def config_from_args(args: argparse.Namespace) -> "EvalConfig":
    """The :class:`~evaluation.config.EvalConfig` the arguments describe."""
    from evaluation.config import EvalConfig

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    return EvalConfig(warmup=args.warmup, until=args.until, rate=args.rate or None, sync_every_s=args.sync_every_s,
                      batch_refresh_s=args.batch_refresh_hours * 3600, hash_buckets=args.hash_buckets,
                      trending_half_life_s=args.trending_half_life_hours * 3600,
                      cooccurrence_window=args.cooccurrence_window or None, period_s=args.period_days * 86_400,
                      variants=variants, seed=args.seed)


def run(args: argparse.Namespace, torch_threads: int = 1) -> int:
    """Load, evaluate, write the report; print the JSON summary as the last stdout line."""
    import faiss
    import torch

    from evaluation.report import summary_line, write_report
    from evaluation.runner import run_prequential
    from evaluation.stream import NEGATIVE_ACTIONS, load_events

    if not args.dataset and not args.file:
        raise RtrecError("give an event FILE or --dataset NAME")
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(torch_threads)  # one small query at a time, as serving sets it
    for noisy in ("param_server.store", "serving", "serving.sync", "serving.main"):
        # expiry passes, index rebuilds and dense loads log at INFO: thousands of lines in a replay
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
    except ValueError as exc:  # a bad option value: say which, as for any CLI mistake
        raise RtrecError(str(exc)) from exc
    name = args.dataset or Path(args.file).stem
    try:
        events = load_events(args.dataset, args.file, args.columns, args.action, args.limit)
    except (OSError, ValueError) as exc:  # no such file, a bad --columns mapping
        raise RtrecError(f"cannot read the events: {exc}") from exc
    positives = sum(e.action not in NEGATIVE_ACTIONS for e in events)
    log.info("%s: %d events, %d positive", name, len(events), positives)
    if positives < 2:
        raise RtrecError(f"{name} has {positives} positive events; need at least 2")
    result = run_prequential(events, config, progress=None if args.no_progress else _progress())
    out = Path(args.out or f"reports/eval-{name}")
    files = write_report(out, name, result, config)
    log.info("report: %s", ", ".join(str(f) for f in files))
    print((out / "summary.md").read_text(), file=sys.stderr)
    print(json.dumps(summary_line(name, result)), flush=True)
    return 0


def _progress():
    """A callback that logs about every 10 % of the batches."""
    state = {"next": 0.1}

    def report(done: int, total: int) -> None:
        if done / total >= state["next"] or done == total:
            log.info("evaluated %d/%d batches (%.0f%%)", done, total, 100 * done / total)
            state["next"] = done / total + 0.1

    return report
