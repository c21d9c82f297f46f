"""The report folder of a run: ``summary.md`` (table + run facts), ``results.json``, PNG plots.

Plots show each metric per period of event time (a week by default), one line per variant, so
the reader sees when the model overtakes the baselines and how stale weights hurt over time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from evaluation.metrics import METRIC_NAMES
from evaluation.config import EvalConfig
from evaluation.runner import EvalResult

__all__ = ["summary_line", "write_report"]


def summary_line(dataset: str, result: EvalResult) -> dict:
    """The last stdout line: dataset, event count, each variant's overall metrics (and, on streams
    with impressions, ``labelled``: the prequential click AUC and log loss of the ranking head,
    ``model``, and of the logistic regression on counts, ``counts_lr``, on the same examples)."""
    out = {"dataset": dataset, "events": result.events, **result.summary(), "evaluated": result.evaluated,
           "batches": result.batches, "seconds": round(result.seconds, 1)}
    if result.labelled is not None:
        out["labelled"] = result.labelled.summary()
    return out


def write_report(out: Path, dataset: str, result: EvalResult, config: EvalConfig) -> list[Path]:
    """Write summary.md, results.json and one PNG per metric into ``out``; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    files = [_plot(out / f"{name.replace('@', '_at_')}.png", name, result, config.period_s)
             for name in METRIC_NAMES]
    results = out / "results.json"
    labelled = {} if result.labelled is None else {"labelled": result.labelled.summary()}
    results.write_text(json.dumps({"summary": summary_line(dataset, result), **labelled, "config": asdict(config),
                                   "settings": result.settings,
                                   "over_time": _over_time(result, config.period_s)}, indent=2, default=str))
    summary = out / "summary.md"
    summary.write_text(_markdown(dataset, result, config, [p.name for p in files]))
    return [summary, results, *files]


def _over_time(result: EvalResult, period_s: float) -> dict:
    series = {}
    for name, log in result.logs.items():
        starts, means, counts = log.over_time(period_s)
        series[name] = {"period_start": starts.tolist(), "events": counts.tolist(),
                        **{k: np.round(v, 4).tolist() for k, v in means.items()}}
    return series


def _plot(path: Path, metric: str, result: EvalResult, period_s: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, log in result.logs.items():
        starts, means, _ = log.over_time(period_s)
        dates = [datetime.fromtimestamp(s, tz=timezone.utc) for s in starts]
        ax.plot(dates, means[metric], marker=".", label=name)
    ax.set_title(f"{metric} per {period_s / 86_400:g} days of event time (prequential)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown(dataset: str, result: EvalResult, config: EvalConfig, plots: list[str]) -> str:
    summary = result.summary()
    rows = [f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['mrr']:.4f} | "
            f"{result.seconds_by_variant.get(name, 0.0):.1f} |" for name, m in summary.items()]
    cold = [f"- `{name}`: {n} of {result.evaluated} answers were serving's cold-start list (user not synced)"
            for name, n in result.cold_start.items()]
    lines = [f"# Prequential evaluation: {dataset}", "",
             f"{result.raw_events} events ({result.events} positive) in {result.batches} worker micro-batches; "
             f"the first {result.warmup_events} positives are warm-up (learned, not evaluated); "
             f"{result.evaluated} evaluated; {result.repeats_skipped} repeated (user, item) pairs learned but "
             f"not evaluated. Wall time {result.seconds:.1f} s.", "",
             "| variant | HR@10 | NDCG@10 | MRR@10 | seconds |", "|---|---|---|---|---|", *rows, "",
             "`model`, `batch` and `hashed` are serving's top 10 (`recommend_many`: FAISS retrieval, ranking "
             "head with Redis real-time features, business rules) over what the worker pipeline trained; "
             "the baselines rank every item seen so far minus the user's own, knowing the user's history as "
             "the system had applied it when asked (`cooccurrence_exact`: the exact history, an oracle). "
             "MRR is cut at 10 (a rank "
             "beyond 10 counts 0). A served variant's seconds include its syncs; `model`'s also the "
             "training that `batch` shares.", "", *cold, *_labelled(result), "",
             *_comparisons(summary), "", "## Configuration", "", "```json",
             json.dumps({"eval": asdict(config), "settings": result.settings}, indent=2, default=str), "```", "",
             "## Over time", "", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def _labelled(result: EvalResult) -> list[str]:
    """Click predictions of the impressions (streams with impressions): the ranking head and the counts baseline."""
    if result.labelled is None:
        return []
    names = {"model": "`model` (ranking head, click)", "counts_lr": "`counts_lr` (logistic regression on counts)"}
    rows = [f"| {names[name]} | {m['examples']} | {m['positives']} | {m['auc']} | {m['log_loss']} |"
            for name, m in result.labelled.summary().items()]
    return ["", "## Click predictions of impressions", "",
            "Each impression example (an impression and whether it was clicked within the join window) is "
            "predicted once, in the worker micro-batch that trains on it, before the update; both rows are "
            "the same examples in the same order. Positive-only actions, sampled negatives and replayed "
            "batches are not counted.", "",
            "| predictor | examples | clicked | AUC | log loss |", "|---|---|---|---|---|", *rows]


def _comparisons(summary: dict[str, dict[str, float]]) -> list[str]:
    """The model's HR@10 against each other variant that ran (issue 12's acceptance compares them)."""
    if "model" not in summary:
        return []
    model = summary["model"]["hr@10"]
    out = []
    for other in ("popularity", "trending", "batch", "hashed", "cooccurrence", "cooccurrence_exact"):
        if other in summary and summary[other]["hr@10"] > 0:
            value = summary[other]["hr@10"]
            out.append(f"- model HR@10 / {other} HR@10 = {model / value:.3f} (gap {model - value:+.4f})")
    return out
