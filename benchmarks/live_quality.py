"""Recommendation quality of the deployed system: replay a log through the running stack, and before
each event ask serving what it would recommend to that user.

Set-up: the local stack as ``rtrec up --no-simulate`` starts it (broker, Redis, one parameter
server, one stream worker, serving). The log (``--dataset ml-100k``, or a CSV/JSONL file with
``--columns`` read by ``rtrec replay``'s own reader) is put in the order a live service would
see it (:func:`live_order`): each user's events keep their log order, users take turns round
robin (the k-th event of every user before the (k+1)-th of any), at most ``--max-per-user`` events
each. Every event goes out as a ``click`` (ml-100k ratings are positives; negative actions of a
file are dropped), with the item's category where the log has one, a new ``event_id`` and the wall
time at which it is sent as ``ts``; at most ``--rate`` events/s overall and at least
``--user-gap`` seconds between two events of one user.

One sample per event (u, i): right before the event is sent, ``POST /recommend {"user_id": u,
"k": 10, "explain": true}`` (at most ``--concurrency`` asks in flight; a user's next event waits
until this one was asked and sent). A hit is ``i`` in the 10 items, at 1-based rank r: HR@10 and
NDCG@10 = 1/log2(r + 1) as in ``rtrec eval`` (``evaluation/metrics.py``). A click on a
recommended item carries the response's ``request_id``, as an app would log it; other clicks carry
none (the user found the item elsewhere). Serving logs every list it returns as impressions, so
the worker also learns from what was shown and not clicked, as it would live.

Baselines, on the very same sent stream: for each event, from every event sent before it (the
baselines know the user's exact history, as this client does), most popular so far and item-to-item
co-occurrence over the user's last 5 items (pairs counted within 10 actions of a user), both
without the items the user already acted on, ranking only items that were sent before; ties are
broken by a seeded random priority per item. They are ``rtrec eval``'s own rankers
(``evaluation/baselines.py``), run after the live part over the sent stream one event at a time
(:func:`baseline_ranks`); an event's baseline state may hold the few events other users sent
between its ask and its send (at most ``--concurrency``).

Counted events (``evaluated``) exclude a warm-up (the first 10 % of the events sent, as ``rtrec
eval``), events whose (user, item) pair was sent before (serving never recommends an item the
user acted on, ``rtrec eval`` skips them too) and asks that failed (counted in ``errors``).

The offline figure: the sent stream (user, item, ``ts`` as sent, ``click``, the item's category) is
written to a JSONL file of events
and evaluated by ``rtrec eval`` after the stack is down; ``offline_hr_at_10`` is its ``model``
HR@10 and ``live_to_offline`` the live HR@10 divided by it.

Every counted miss is put where the item was lost, following a request through serving
(``serving/ranking.py``) and using serving's ``explain`` answer: ``served_cold_start`` (the user
has no row in serving yet, the list is trending/popular), ``lost_not_indexed`` (``GET
/embeddings/item/{id}`` is 404: no row for the item in serving; an item is not asked again once
serving said yes, since a row stays for 30 days of event time, and ``index_asks`` counts these
requests, load the benchmark itself puts on serving), ``lost_not_retrieved`` (not among
the candidates handed to the ranking head: FAISS's best ``RTREC_SERVING_RANKED`` and the
co-visitation channel's ``RTREC_SERVING_COVISITED``; of those, ``not_retrieved_beyond_ranked_cut``
FAISS did return, below its cut), ``lost_ranked_below_k``
(scored by the head, but not in its top k) and ``lost_to_rules`` (in the head's top k, dropped by
exclusion, the category cap or exploration slots). Beside them, for diagnosis: ``model_served``
(counted asks not answered with the cold-start list) with the live and the popularity HR@10 on
just those, and ``new_item_events`` (counted events whose item was never sent before: no ranker
can hit them). The client's p50/p99 are set beside serving's own mean /recommend time and its
syncs, read from its /metrics.

    python -m benchmarks.live_quality [--dataset ml-100k | FILE --columns user_id=..,item_id=..,ts=..]
        [--max-per-user 50] [--rate 200] [--user-gap 1.0] [--concurrency 8] [--limit N] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import aiohttp
import numpy as np
import orjson

from benchmarks.common import report
from evaluation.baselines import Cooccurrence, Popularity
from evaluation.batches import EvalBatch
from evaluation.metrics import target_ranks
from evaluation.stream import EvalStream
from benchmarks.freshness import nearest_rank
from producers.client import EventProducer
from rtrec.events import Event
from rtrec.metrics_http import scrape
from rtrec.settings import load_settings
from rtrec.stack.launcher import LocalStack, ReadyInfo, StackOptions

K = 10
WARMUP_SHARE = 0.1  # as rtrec eval's default warm-up
RECENT_QUERY = 5  # co-occurrence: the user's last 5 items are the query
PAIR_WINDOW = 10  # co-occurrence: pairs within 10 actions of a user (rtrec eval's tuned default)
MAX_COOCCURRENCE_ITEMS = 8192  # dense float32 table: 256 MiB at most; beyond it the baseline is off
NEGATIVE_ACTIONS = frozenset({"impression", "skip"})  # not choices of the user (as evaluation/stream.py)
LOSSES = ("served_cold_start", "lost_not_indexed", "lost_not_retrieved", "lost_ranked_below_k", "lost_to_rules")
EVAL_TIMEOUT_S = 1800
JSON = {"content-type": "application/json"}


# -- the order a live service sees -------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """One event to send: who, what, and the item's category if the log has one."""

    user_id: str
    item_id: str
    category: str | None = None


def live_order(log: Sequence[Planned], max_per_user: int, limit: int | None = None) -> list[Planned]:
    """The log as a live service would see it: round robin over users, each user's events in log order.

    Users take turns in order of their first event; round k holds the k-th event of every user
    who has one, so no user's (k+1)-th event comes before anyone's k-th. At most ``max_per_user``
    events per user (their first ones), at most ``limit`` in all (the first ones of this order).

    >>> log = [Planned("a", "1"), Planned("b", "2"), Planned("a", "3"), Planned("a", "4")]
    >>> [(p.user_id, p.item_id) for p in live_order(log, max_per_user=2)]
    [('a', '1'), ('b', '2'), ('a', '3')]
    """
    if max_per_user < 1:
        raise ValueError(f"max_per_user must be >= 1, got {max_per_user}")
    per_user: dict[str, list[Planned]] = {}
    for event in log:  # dicts keep insertion order: users by their first event
        mine = per_user.setdefault(event.user_id, [])
        if len(mine) < max_per_user:
            mine.append(event)
    out: list[Planned] = []
    for k in range(max((len(v) for v in per_user.values()), default=0)):
        out.extend(events[k] for events in per_user.values() if k < len(events))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def planned_from_events(events: Sequence[Event]) -> list[Planned]:
    """Positive events of a log (in its order) as planned clicks; impressions and skips are dropped."""
    out = []
    for e in events:
        if e.action in NEGATIVE_ACTIONS:
            continue
        category = e.item.get("category") if e.item else None
        out.append(Planned(e.user_id, e.item_id, str(category) if category is not None else None))
    return out


def load_log(dataset: str | None, path: str | None, columns: str | None) -> list[Event]:
    """The log in timestamp order, read by the producers' own readers (the dataset or ``rtrec replay``'s)."""
    if dataset:
        from producers.datasets import load_dataset

        return load_dataset(dataset)
    if not path:
        raise SystemExit("give --dataset NAME or an event FILE (with --columns)")
    from producers.replay import load_events, parse_columns

    loaded = load_events(Path(path), parse_columns(columns), "click")
    if loaded.skipped:
        print(f"skipped {sum(loaded.skipped.values())} malformed rows: {dict(loaded.skipped)}", flush=True)
    return loaded.events


# -- metrics -----------------------------------------------------------------------------------

def rank_in(items: Sequence[str], target: str) -> float:
    """1-based position of ``target`` in a served list, ``inf`` if it is not there.

    >>> rank_in(["a", "b", "c"], "b"), rank_in(["a"], "z")
    (2.0, inf)
    """
    for n, item in enumerate(items, start=1):
        if item == target:
            return float(n)
    return math.inf


def hr_ndcg(ranks: Sequence[float], k: int = K) -> tuple[float, float]:
    """Mean HR@k and NDCG@k (``[r <= k] / log2(r + 1)``) of 1-based ranks; ``nan`` for no ranks.

    >>> hr_ndcg([1.0, 3.0, 11.0, math.inf])
    (0.5, 0.375)
    """
    if not ranks:
        return math.nan, math.nan
    hits = [r for r in ranks if r <= k]
    return len(hits) / len(ranks), sum(1.0 / math.log2(r + 1.0) for r in hits) / len(ranks)


def counted(outcomes: Sequence["Outcome"], sent: int, warmup_share: float = WARMUP_SHARE) -> list["Outcome"]:
    """The outcomes that count: after the warm-up (by send order), first time the pair was sent, ask answered."""
    warmup_end = int(round(sent * warmup_share))
    return [o for o in outcomes if o.seq >= warmup_end and not o.repeat and not o.error]


def loss_of(rank: float, explain: dict | None, indexed: bool | None, target: str, k: int = K) -> str | None:
    """Where a missed item was lost (None for a hit), from serving's explain answer.

    In request order: the user got the cold-start list; the item has no row in serving; neither
    retrieval channel (FAISS, co-visitation) handed it to the ranking head; the head scored it
    below its top k; the rules dropped it.

    >>> loss_of(math.inf, {"cold_start": False, "ranked": ["x", "t"]}, True, "t", k=1)
    'lost_ranked_below_k'
    >>> loss_of(math.inf, {"cold_start": False, "ranked": ["t", "x"]}, True, "t", k=1)
    'lost_to_rules'
    """
    if rank <= k:
        return None
    if explain is None:
        return None  # serving gave no explanation: not classified
    if explain.get("cold_start"):
        return "served_cold_start"
    ranked = list(explain.get("ranked") or [])
    if target in ranked:
        return "lost_to_rules" if ranked.index(target) < k else "lost_ranked_below_k"
    return "lost_not_indexed" if indexed is False else "lost_not_retrieved"


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded for the JSON line; None if either is missing or ``b`` is not positive."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return round(a / b, 3)


def rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


# -- baselines ---------------------------------------------------------------------------------

def baseline_ranks(outcomes: Sequence["Outcome"], seed: int = 0, query_len: int = RECENT_QUERY,
                   window: int = PAIR_WINDOW,
                   max_cooccurrence_items: int = MAX_COOCCURRENCE_ITEMS) -> list[dict[str, float | None]]:
    """Per outcome (in ``outcomes``' order): the rank of its item by popularity and co-occurrence
    (None when the catalogue outgrew the dense table), from every event sent before it.

    ``rtrec eval``'s rankers, learned one sent event at a time; ranks are 1-based, ``inf`` for an
    item never sent before or one the user already acted on.

    >>> sent = [Outcome(n, u, i, float(n), False, math.inf, {}, 0.0)
    ...         for n, (u, i) in enumerate([("a", "x"), ("b", "x"), ("b", "y"), ("c", "y"), ("c", "z"), ("a", "y")])]
    >>> baseline_ranks(sent)[-1]  # popularity: a has x; y (2) above z (1). co-occurrence: the x-y pair
    {'popularity': 1.0, 'cooccurrence': 1.0}
    """
    order = sorted(range(len(outcomes)), key=lambda n: outcomes[n].seq)
    stream = EvalStream.from_events([Event(str(n), outcomes[n].user_id, outcomes[n].item_id, "click", float(k))
                                     for k, n in enumerate(order)], recent_len=query_len)
    rankers: list = [Popularity(stream.n_items)]
    if stream.n_items <= max_cooccurrence_items:
        rankers.append(Cooccurrence(stream.n_items, query_len, window, exact_history=True))
    else:
        print(f"co-occurrence baseline off: {stream.n_items} items, more than {max_cooccurrence_items}", flush=True)
    tiebreak = np.random.default_rng(seed).permutation(stream.n_items)
    out: list[dict[str, float | None]] = [{} for _ in outcomes]
    for k, n in enumerate(order):  # one event at a time: each ranks with every earlier one learned
        batch = EvalBatch(stream, np.array([k]))
        candidates = batch.candidates()
        ranks = {r.name.removesuffix("_exact"): float(target_ranks(np.asarray(r.scores(batch)), batch.items,
                                                                    candidates, tiebreak)[0]) for r in rankers}
        out[n] = {"popularity": ranks["popularity"], "cooccurrence": ranks.get("cooccurrence")}
        for ranker in rankers:
            ranker.learn(batch)
    return out


# -- the live run ------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One asked-and-sent event: its place in the sent stream and how each ranker did on it."""

    seq: int  # position in the sent stream (0 = first sent)
    user_id: str
    item_id: str
    ts: float  # as sent
    repeat: bool
    rank: float  # in serving's list (inf: not in it)
    baseline: dict[str, float | None]  # filled in after the live part (:func:`baseline_ranks`)
    latency_s: float
    error: bool = False
    loss: str | None = None
    cold_start: bool | None = None  # serving answered with its cold-start list (None: it did not say)
    beyond_cut: bool = False  # a miss FAISS did return, but below the candidates the head ranks
    category: str | None = None  # the item's, as sent


@dataclass
class LiveRun:
    """Sends the planned events through the stack and asks serving before each; collects outcomes."""

    http: aiohttp.ClientSession
    producer: EventProducer
    run: str
    outcomes: list[Outcome] = field(default_factory=list)
    sent_pairs: set[tuple[str, str]] = field(default_factory=set)
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0  # from the first dispatch until the last event was sent
    sent_at: dict[str, float] = field(default_factory=dict)  # per user: when its last event was sent (monotonic)
    #: items serving answered ``GET /embeddings/item`` for: a row stays until the parameter server
    #: expires it (30 days of event time without an update), far beyond a replay, so each item is
    #: asked until its first yes only, and the diagnosis adds little load to what is measured
    indexed_items: set[str] = field(default_factory=set)
    index_asks: int = 0  # GET /embeddings/item requests sent

    async def one(self, n: int, event: Planned) -> None:
        """Ask, diagnose a miss, then send the event."""
        repeat = (event.user_id, event.item_id) in self.sent_pairs
        started = time.perf_counter()
        body, error = None, False
        try:
            async with self.http.post("/recommend", data=orjson.dumps({"user_id": event.user_id, "k": K,
                                                                       "explain": True}),
                                      headers=JSON) as response:
                if response.status == 200:
                    body = orjson.loads(await response.read())
                else:
                    self.errors[f"HTTP {response.status}"] += 1
                    error = True
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
            error = True
        latency = time.perf_counter() - started
        served = [it["item_id"] for it in body["items"]] if body else []
        rank = rank_in(served, event.item_id)
        loss, cold, beyond = None, None, False
        explain = body.get("explain") if body is not None else None
        if isinstance(explain, dict):
            cold = bool(explain.get("cold_start"))
        if body is not None and rank > K:
            loss = loss_of(rank, explain, await self._indexed(event.item_id, body), event.item_id)
            beyond = loss == "lost_not_retrieved" and event.item_id in (explain.get("retrieved") or [])
        ts = self._send(n, event, body if rank <= K else None)  # no await from here: seq = send order
        self.outcomes.append(Outcome(len(self.outcomes), event.user_id, event.item_id, ts, repeat,
                                     rank, {}, latency, error, loss, cold, beyond, event.category))

    async def _indexed(self, item: str, body: dict) -> bool | None:
        """Whether serving has a row for the item (only asked when the explanation needs it, and
        not again once serving said yes: :attr:`indexed_items`)."""
        explain = body.get("explain") or {}
        if not explain or explain.get("cold_start") or item in (explain.get("ranked") or []):
            return None
        if item in self.indexed_items:
            return True
        self.index_asks += 1
        try:
            async with self.http.get(f"/embeddings/item/{item}") as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None
        if status == 200:
            self.indexed_items.add(item)
        return {200: True, 404: False}.get(status)

    def _send(self, n: int, event: Planned, hit_body: dict | None) -> float:
        """Send the click stamped now (returns that ``ts``); a click on a recommended item carries
        that list's request_id, as an application would log it."""
        ts = time.time()
        self.producer.send(Event(
            f"lq-{self.run}-{n}", event.user_id, event.item_id, "click", ts,
            request_id=hit_body["request_id"] if hit_body else None,
            item={"category": event.category} if event.category else None))
        self.sent_pairs.add((event.user_id, event.item_id))
        self.sent_at[event.user_id] = time.monotonic()
        return ts


async def run_live(info: ReadyInfo, topic: str, plan: list[Planned], args: argparse.Namespace, run: str) -> LiveRun:
    """Dispatch the plan in order at ``args.rate``, keeping each user's events ``args.user_gap`` apart."""
    # aiohttp, not httpx: with httpx this client used 4.7 ms of CPU per event (45 % of a core of
    # the two the stack under test runs on), with aiohttp 0.9 ms
    connector = aiohttp.TCPConnector(limit=2 * args.concurrency + 2)
    timeout = aiohttp.ClientTimeout(total=30)
    slots = asyncio.Semaphore(args.concurrency)
    last: dict[str, asyncio.Task] = {}  # per user: the task of its last event (ask, then send)
    tasks: set[asyncio.Task] = set()
    async with aiohttp.ClientSession(info.serving, connector=connector, timeout=timeout) as http:
        with EventProducer(info.kafka, topic) as producer:
            live = LiveRun(http, producer, run)
            due, started, interval = time.monotonic(), time.monotonic(), 1.0 / args.rate
            for n, event in enumerate(plan):
                previous = last.get(event.user_id)
                if previous is not None:
                    await previous  # asked and sent; this one is asked, so sent, at least a gap later
                    await _sleep_until(live.sent_at[event.user_id] + args.user_gap)
                await _sleep_until(due)
                await slots.acquire()
                task = asyncio.create_task(_with_slot(live.one(n, event), slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                last[event.user_id] = task
                due = max(due + interval, time.monotonic())  # no burst to catch up after a wait
                if (n + 1) % 1000 == 0:
                    _progress(live, n + 1, len(plan), time.monotonic() - started)
            await asyncio.gather(*tasks)
            live.seconds = time.monotonic() - started
            producer.flush()
    return live


async def _with_slot(work, slots: asyncio.Semaphore) -> None:
    try:
        await work
    finally:
        slots.release()


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _progress(live: LiveRun, done: int, total: int, seconds: float) -> None:
    """One readable line: events so far, rate, running HR@10 of the model (baselines come after the run)."""
    ranks = [o for o in live.outcomes if not o.repeat and not o.error]
    hr, _ = hr_ndcg([o.rank for o in ranks])
    cold = sum(o.loss == "served_cold_start" for o in ranks)
    print(f"  {done}/{total} events, {done / seconds:.0f}/s; HR@10 so far (warm-up included) live {hr:.3f}; "
          f"cold-start lists {cold}; errors {sum(live.errors.values())}", flush=True)


def serving_side(metrics_url: str) -> dict[str, float]:
    """Serving's own view of the run from its /metrics: mean /recommend time inside serving (to set
    beside the client's p50/p99) and its syncs (count, mean seconds), which share its process."""
    m = scrape(metrics_url)
    name, sync = "rtrec_serving_request_duration_seconds", "rtrec_serving_sync_duration_seconds"
    asks = m.get(f"{name}_count{{endpoint=/recommend}}", 0.0)
    syncs = m.get(f"{sync}_count", 0.0)
    return {"serving_mean_recommend_ms": round(1000 * m.get(f"{name}_sum{{endpoint=/recommend}}", 0.0) / asks, 1)
            if asks else None,
            "serving_syncs": int(syncs),
            "serving_mean_sync_ms": round(1000 * m.get(f"{sync}_sum", 0.0) / syncs, 1) if syncs else None}


# -- offline figure ----------------------------------------------------------------------------

def write_stream(outcomes: Sequence[Outcome], path: Path) -> None:
    """The sent stream as JSONL events ``rtrec eval`` reads: the clicks as sent (``ts`` as sent, the
    item's category), in send order, so the offline run sees the features the live one did."""
    with path.open("w", encoding="utf-8") as f:
        for o in sorted(outcomes, key=lambda o: o.seq):
            row = {"event_id": f"sent-{o.seq}", "user_id": o.user_id, "item_id": o.item_id, "ts": o.ts,
                   "action": "click"}
            if o.category:
                row["item"] = {"category": o.category}
            f.write(json.dumps(row) + "\n")


def model_hr_from_results(results: dict) -> float | None:
    """The ``model`` variant's HR@10 from ``results.json`` (under ``summary``, or at the top level).

    >>> model_hr_from_results({"summary": {"model": {"hr@10": 0.2}}}), model_hr_from_results({})
    (0.2, None)
    """
    for where in (results.get("summary"), results):
        if isinstance(where, dict) and isinstance(where.get("model"), dict) and "hr@10" in where["model"]:
            return float(where["model"]["hr@10"])
    return None


def offline_hr(outcomes: Sequence[Outcome], workdir: Path) -> tuple[float | None, str | None]:
    """``rtrec eval`` on the sent stream: its model HR@10, or None and why not."""
    stream = workdir / "sent.jsonl"
    write_stream(outcomes, stream)
    out = workdir / "eval"
    command = [sys.executable, "-m", "rtrec.cli", "eval", str(stream), "--out", str(out)]
    print(f"offline: {' '.join(command[1:])}", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EVAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"rtrec eval ran over {EVAL_TIMEOUT_S} s"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"rtrec eval exit {done.returncode}: {tail[0][:300]}"
    try:
        hr = model_hr_from_results(json.loads((out / "results.json").read_text()))
    except (OSError, ValueError) as exc:
        return None, f"results.json unreadable: {exc}"
    return (hr, None) if hr is not None else (None, "results.json has no model hr@10")


# -- the figures -------------------------------------------------------------------------------

def figures(live: LiveRun, offline: float | None, seconds: float) -> dict:
    """The JSON line's figures from the outcomes (see the module docstring for definitions)."""
    outcomes = live.outcomes
    kept = counted(outcomes, len(outcomes))
    hr, nd = hr_ndcg([o.rank for o in kept])
    pop, _ = hr_ndcg([o.baseline["popularity"] for o in kept])
    co_ranks = [o.baseline["cooccurrence"] for o in kept]
    co = hr_ndcg(co_ranks)[0] if all(r is not None for r in co_ranks) else None
    latency = [o.latency_s for o in outcomes if not o.error]
    losses = Counter(o.loss for o in kept if o.loss)
    warm = [o for o in kept if o.cold_start is False]
    return {
        "hr_at_10": rounded(hr), "ndcg_at_10": rounded(nd),
        "popularity_hr_at_10": rounded(pop), "cooccurrence_hr_at_10": rounded(co),
        "ratio_to_popularity": ratio(hr, pop), "ratio_to_cooccurrence": ratio(hr, co),
        "offline_hr_at_10": rounded(offline), "live_to_offline": ratio(hr, offline),
        "p50_ms": rounded(1000 * nearest_rank(latency, 50), 1) if latency else None,
        "p99_ms": rounded(1000 * nearest_rank(latency, 99), 1) if latency else None,
        "errors": sum(live.errors.values()), "events": len(outcomes), "asked": len(outcomes),
        "evaluated": len(kept), **{name: losses.get(name, 0) for name in LOSSES},
        # diagnosis: counted asks served by the model (not the cold-start list), HR@10 of the model and
        # of popularity on just those; counted events whose item was never sent before (nobody can hit them)
        "model_served": len(warm), "model_served_hr_at_10": rounded(hr_ndcg([o.rank for o in warm])[0]),
        "model_served_popularity_hr_at_10": rounded(hr_ndcg([o.baseline["popularity"] for o in warm])[0]),
        "new_item_events": sum(o.baseline["popularity"] == math.inf for o in kept),
        "not_retrieved_beyond_ranked_cut": sum(o.beyond_cut for o in kept),
        "index_asks": live.index_asks,  # the diagnosis's own GET /embeddings/item requests (load on serving)
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", help="CSV, TSV or JSONL event file (as for rtrec replay)")
    parser.add_argument("--dataset", choices=["ml-100k"], help="a bundled dataset instead of a file")
    parser.add_argument("--columns", help="event field=file column, e.g. user_id=userId,item_id=movieId,ts=timestamp")
    parser.add_argument("--max-per-user", type=int, default=50, help="first events of each user sent (default 50)")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s in all (default 200)")
    parser.add_argument("--user-gap", type=float, default=1.0, help="least seconds between a user's events (default 1)")
    parser.add_argument("--concurrency", type=int, default=8, help="asks in flight at most (default 8)")
    parser.add_argument("--limit", type=int, default=None, help="send only the first N events of the live order")
    parser.add_argument("--seed", type=int, default=0, help="baselines' tie-break priorities")
    parser.add_argument("--out", default=None,
                        help="keep the sent stream (sent.jsonl) and rtrec eval's report (eval/) here (default: a temp dir)")
    args = parser.parse_args()
    if not args.dataset and not args.file:
        args.dataset = "ml-100k"
    if args.rate <= 0 or args.concurrency < 1:
        parser.error("--rate must be > 0 and --concurrency >= 1")

    wall = time.perf_counter()
    log = load_log(args.dataset, args.file, args.columns)
    plan = live_order(planned_from_events(log), args.max_per_user, args.limit)
    users = len({p.user_id for p in plan})
    print(f"{len(plan)} events of {users} users in live order (from {len(log)} in the log, at most "
          f"{args.max_per_user} per user); {args.rate:g}/s, >= {args.user_gap:g} s per user", flush=True)
    settings = load_settings(log_level="WARNING")
    run = uuid.uuid4().hex[:6]
    with LocalStack(settings, StackOptions(simulate=False)) as stack:
        print(f"stack up in {time.perf_counter() - wall:.1f} s; serving {stack.info.serving}", flush=True)
        live = asyncio.run(run_live(stack.info, settings.actions_topic, plan, args, run))
        try:
            inside = serving_side(f"{stack.info.serving}/metrics")
        except OSError as exc:
            inside = {}
            print(f"serving metrics unreadable: {exc}", flush=True)
        died = stack.check_children()
        if died:
            print(f"a component died during the run: {died}", file=sys.stderr)
    live_seconds = time.perf_counter() - wall
    sent_per_s = len(live.outcomes) / live.seconds if live.seconds else 0.0
    print(f"sent {len(live.outcomes)} events in {live.seconds:.0f} s ({sent_per_s:.0f}/s); serving's side: "
          f"{inside}", flush=True)
    if live.errors:
        print(f"failed asks: {dict(live.errors)}", flush=True)
    for outcome, ranks in zip(live.outcomes, baseline_ranks(live.outcomes, args.seed)):
        outcome.baseline.update(ranks)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        offline, why = offline_hr(live.outcomes, Path(args.out))
    else:
        with tempfile.TemporaryDirectory(prefix="rtrec-live-quality-") as tmp:
            offline, why = offline_hr(live.outcomes, Path(tmp))
    if why:
        print(f"offline figure unavailable: {why}", flush=True)
    out = figures(live, offline, time.perf_counter() - wall)
    out.update(offline_error=why, events_per_s=round(sent_per_s, 1), **inside)
    print(f"live HR@10 {out['hr_at_10']} NDCG@10 {out['ndcg_at_10']} over {out['evaluated']} events; "
          f"popularity {out['popularity_hr_at_10']}, co-occurrence {out['cooccurrence_hr_at_10']}, "
          f"offline (rtrec eval, same events) {out['offline_hr_at_10']}; misses: "
          + ", ".join(f"{name} {out[name]}" for name in LOSSES)
          + f"; live part {live_seconds:.0f} s", flush=True)
    report("live_quality", out)


if __name__ == "__main__":
    main()
