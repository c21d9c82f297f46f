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
    """The options of ``rtrec eval`` (defaults: the configuration tuned on ml-100k, see README)."""
    from evaluation.config import VARIANTS, EvalConfig, TowerConfig

    run_defaults, tower = EvalConfig(), TowerConfig()
    parser.add_argument("file", nargs="?", help="CSV, TSV or JSONL event file (as for rtrec replay)")
    parser.add_argument("--dataset", choices=["ml-100k"], help="evaluate on a bundled dataset instead")
    parser.add_argument("--columns", help="event field=file column, e.g. user_id=userId,item_id=movieId,ts=timestamp")
    parser.add_argument("--action", default="click", help="action for rows without one (default click)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N events of the file")
    parser.add_argument("--out", default=None, help="report folder (default reports/eval-<dataset or file>)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=run_defaults.seed)
    parser.add_argument("--warmup", type=float, default=run_defaults.warmup, help="share of the stream not evaluated")
    parser.add_argument("--until", type=float, default=run_defaults.until, help="share of the stream processed")
    parser.add_argument("--batch-size", type=int, default=run_defaults.batch_size)
    parser.add_argument("--hash-buckets", type=int, default=run_defaults.hash_buckets, help="buckets per slot (hashed)")
    parser.add_argument("--refresh-hours", type=float, default=run_defaults.refresh_s / 3600,
                        help="event hours between weight refreshes of the batch variant")
    parser.add_argument("--trending-half-life-hours", type=float, default=run_defaults.trending_half_life_s / 3600)
    parser.add_argument("--cooccurrence-window", type=int, default=run_defaults.cooccurrence_window,
                        help="cooccurrence: pairs within this many of a user's actions (0 = whole history)")
    parser.add_argument("--period-days", type=float, default=run_defaults.period_s / 86_400, help="plot resolution")
    parser.add_argument("--dim", type=int, default=tower.dim, help="model: floats per sparse row")
    parser.add_argument("--steps", type=int, default=tower.steps, help="model: gradient steps per batch")
    parser.add_argument("--sparse-lr", type=float, default=tower.sparse_lr, help="model: Adagrad rate of sparse rows")
    parser.add_argument("--dense-lr", type=float, default=tower.dense_lr, help="model: Adam rate of tower weights")
    parser.add_argument("--temperature", type=float, default=tower.temperature, help="model: softmax temperature")
    parser.add_argument("--recent-len", type=int, default=tower.recent_len,
                        help="model: recent items in the user tower")
    parser.add_argument("--replay-batches", type=int, default=tower.replay_batches,
                        help="model: extra steps per batch on replayed past events")
    parser.add_argument("--popularity-half-life-hours", type=float, default=tower.popularity_half_life_s / 3600,
                        help="model: half-life of its real-time popularity feature")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def config_from_args(args: argparse.Namespace) -> "EvalConfig":
    """The :class:`~evaluation.runner.EvalConfig` the arguments describe."""
    from dataclasses import replace

    from evaluation.config import EvalConfig, TowerConfig

    towers = replace(TowerConfig(), dim=args.dim, steps=args.steps, sparse_lr=args.sparse_lr,
                     dense_lr=args.dense_lr, temperature=args.temperature, recent_len=args.recent_len,
                     replay_batches=args.replay_batches,
                     popularity_half_life_s=args.popularity_half_life_hours * 3600)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    return replace(EvalConfig(), warmup=args.warmup, until=args.until, batch_size=args.batch_size,
                   hash_buckets=args.hash_buckets, refresh_s=args.refresh_hours * 3600,
                   trending_half_life_s=args.trending_half_life_hours * 3600,
                   cooccurrence_window=args.cooccurrence_window or None,
                   period_s=args.period_days * 86_400, variants=variants, towers=towers, seed=args.seed)


def run(args: argparse.Namespace, torch_threads: int = 1) -> int:
    """Load, evaluate, write the report; print the JSON summary as the last stdout line."""
    import torch

    from evaluation.report import summary_line, write_report
    from evaluation.runner import run_prequential
    from evaluation.stream import load_stream

    if not args.dataset and not args.file:
        raise RtrecError("give an event FILE or --dataset NAME")
    torch.set_num_threads(torch_threads)
    # The store logs every expiry pass at INFO; over a replayed stream that is hundreds of lines.
    logging.getLogger("param_server.store").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
    except ValueError as exc:  # a bad option value: say which, as for any CLI mistake
        raise RtrecError(str(exc)) from exc
    name = args.dataset or Path(args.file).stem
    recent_len = max(config.towers.recent_len, config.cooccurrence_query)
    try:
        stream = load_stream(args.dataset, args.file, args.columns, args.action, args.limit, recent_len)
    except (OSError, ValueError) as exc:  # no such file, a bad --columns mapping
        raise RtrecError(f"cannot read the events: {exc}") from exc
    log.info("%s: %d events (%d dropped as negative actions), %d users, %d items",
             name, len(stream), stream.dropped, stream.n_users, stream.n_items)
    if len(stream) < 2:
        raise RtrecError(f"{name} has {len(stream)} positive events; need at least 2")
    result = run_prequential(stream, config, progress=None if args.no_progress else _progress())
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
