"""End-to-end freshness on the local stack: from a click sent to Kafka until serving shows its effect.

Set-up: the whole local stack (broker, Redis, one parameter server, one stream worker, serving)
with the simulator as a child process offering background load (``--rate`` events/s). A few
probe users of this run (``fresh-<run>-p<n>``) are warmed up first: each sends an impression and
its click in three rounds a second apart, because a new user ID gets a parameter-server row only
at its second sighting in a later training batch (``param_server/config.py``: ``user_id`` has
``admit_after=2``); probing starts once serving returns an embedding for every probe user.

One probe (one sample): the probe user gets an impression of a probe item (``request_id`` r),
``--click-gap`` seconds later the click on it with the same ``request_id``, as an application
logs them. The joiner (``rtrec/recipe/joiner.py``) turns the click into a positive example in
the very batch that consumes it, because the impression is already pending; a click whose
impression is not pending (already closed, never seen) would train nothing, and a click with no
``request_id`` would train at once as a positive-only example with sampled negatives. The timer
starts when the click is handed to the producer (kafka-python, ``linger_ms=0``), then

- feature latency: until ``GET /features/user/{id}`` shows ``click_5m`` above its value before
  the click, polled every ``FEATURE_POLL_S`` (20 ms) after each answer;
- embedding latency: until ``GET /embeddings/user/{id}`` returns a vector different from the one
  before the click (trained by the worker, pushed to the parameter server, synced by serving's
  long-poll as the push lands, syncs at least ``RTREC_SYNC_MIN_INTERVAL_S`` apart), polled every
  ``EMBEDDING_POLL_S`` (50 ms).

Latencies count to the moment the answer that showed the change arrived, so they over-state the
truth by at most one poll interval plus one request. ``--concurrency`` probe users run at once;
each waits a random time in ``[0, sync interval)`` between its probes so clicks land at every
phase of the sync loop. A probe that shows no change within its timeout counts as infinitely
slow: percentiles are nearest-rank over all samples, and ``null`` when they fall on such a probe.

Baseline in the same run: a bare aiokafka consumer assigned to the actions topic receives the
very same probe clicks; ``kafka_p50_ms``/``kafka_p99_ms`` are produce→consume latencies on the
same broker under the same load (the floor under any consumer), and ``*_ratio`` divide by them.
A second bare consumer with the fetch wait faust-streaming gives the workers' consumer (1.5 s)
shows what that setting alone costs against this broker (``kafka_faust_fetch_p50_ms``, ``_p99_ms``).

    python -m benchmarks.freshness [--samples 120 --rate 300 --concurrency 5 --sync-interval 2]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import report
from producers.client import EventProducer
from rtrec.events import Event
from rtrec.metrics_http import scrape
from rtrec.settings import load_settings
from rtrec.stack.launcher import LocalStack, ReadyInfo, StackOptions

FEATURE_POLL_S = 0.020
EMBEDDING_POLL_S = 0.050
FEATURE_TIMEOUT_S = 10.0
EMBEDDING_TIMEOUT_S = 20.0
PROBE_ITEMS = 20
BARE_FETCH_WAIT_MS = 20
FAUST_FETCH_WAIT_MS = 1500  # what faust-streaming's aiokafka driver gives the workers' consumer


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile by nearest rank: the smallest value with at least ``q`` % of values at or below it.

    Infinite values (probes that timed out) sort last, so a percentile that lands on one is ``inf``.

    >>> nearest_rank([0.3, 0.1, 0.2, 0.4], 50), nearest_rank([0.1, 0.2, math.inf], 99)
    (0.2, inf)
    """
    if not values:
        return math.nan
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100], got {q}")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def as_ms(seconds: float) -> float | None:
    """Seconds as rounded milliseconds for the JSON line; ``None`` for a timed-out (inf) or missing figure."""
    return round(seconds * 1000.0, 1) if math.isfinite(seconds) else None


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if math.isfinite(a) and math.isfinite(b) and b > 0 else None


@dataclass
class Samples:
    """Latencies in seconds (``inf`` for a timeout) and the probe clicks' send times by event ID."""

    feature: list[float] = field(default_factory=list)
    embedding: list[float] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    consumed_at: dict[int, dict[str, float]] = field(default_factory=dict)  # by the consumer's fetch wait (ms)

    def kafka(self, fetch_wait_ms: int) -> list[float]:
        """Produce→consume latency of every probe click at the baseline consumer with this fetch wait."""
        seen = self.consumed_at.get(fetch_wait_ms, {})
        return [seen.get(eid, math.inf) - t for eid, t in self.sent_at.items()]


class Prober:
    """Sends probe events and polls serving; one instance per run, shared by the probe users' tasks."""

    def __init__(self, http: httpx.AsyncClient, producer: EventProducer, run: str, click_gap_s: float) -> None:
        self.http, self.producer, self.run, self.click_gap_s = http, producer, run, click_gap_s
        self.samples = Samples()
        self._n = 0

    def pair(self, user: str, *, click: bool = True) -> tuple[Event, Event]:
        """An impression of a probe item and the click on it (same ``request_id``), both stamped now."""
        self._n += 1
        rid = f"{self.run}-r{self._n}"
        item = f"fresh-{self.run}-i{self._n % PROBE_ITEMS}"
        now = time.time()
        cat = {"category": "probe"}
        return (Event(f"{rid}-imp", user, item, "impression", now, request_id=rid, item=cat),
                Event(f"{rid}-clk", user, item, "click", now, request_id=rid, item=cat))

    async def clicks(self, user: str) -> int:
        body = (await self.http.get(f"/features/user/{user}")).json()
        return int(body["counts"].get("click_5m", 0))

    async def vector(self, user: str) -> list[float] | None:
        response = await self.http.get(f"/embeddings/user/{user}")
        return response.json()["vector"] if response.status_code == 200 else None

    async def probe(self, user: str) -> None:
        """One sample: impression, pause, click; then time both effects."""
        impression, click = self.pair(user)
        self.producer.send(impression)
        await asyncio.sleep(self.click_gap_s)
        clicks_before, vector_before = await self.clicks(user), await self.vector(user)
        click = Event(click.event_id, click.user_id, click.item_id, "click", time.time(),
                      request_id=click.request_id, item=click.item)
        sent = time.perf_counter()
        self.samples.sent_at[click.event_id] = sent
        self.producer.send(click)

        async def feature() -> float:
            while time.perf_counter() - sent < FEATURE_TIMEOUT_S:
                if await self.clicks(user) > clicks_before:
                    return time.perf_counter() - sent
                await asyncio.sleep(FEATURE_POLL_S)
            return math.inf

        async def embedding() -> float:
            while time.perf_counter() - sent < EMBEDDING_TIMEOUT_S:
                now = await self.vector(user)
                if now is not None and now != vector_before:
                    return time.perf_counter() - sent
                await asyncio.sleep(EMBEDDING_POLL_S)
            return math.inf

        f, e = await asyncio.gather(feature(), embedding())
        self.samples.feature.append(f)
        self.samples.embedding.append(e)


async def watch_kafka(bootstrap: str, topic: str, prefix: bytes, prober: "Prober", stop: asyncio.Event,
                      fetch_wait_ms: int) -> None:
    """The baseline: note when each probe click arrives at a bare consumer of the actions topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_wait_ms)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:  # only keys are compared; the background's values are never parsed
                    if record.key is not None and record.key.startswith(prefix) and b'"click"' in record.value:
                        event_id = record.value.split(b'"event_id":"', 1)[1].split(b'"', 1)[0].decode()
                        prober.samples.consumed_at.setdefault(fetch_wait_ms, {}).setdefault(event_id, now)
    finally:
        await consumer.stop()


async def measure(info: ReadyInfo, topic: str, args: argparse.Namespace, run: str) -> tuple[Samples, dict]:
    """Warm up the probe users, then probe until ``args.samples`` are taken; returns them and the load figures."""
    users = [f"fresh-{run}-p{n}" for n in range(args.concurrency)]
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=4 * args.concurrency + 4)
    async with httpx.AsyncClient(base_url=info.serving, timeout=10, limits=limits) as http:
        with EventProducer(info.kafka, topic, linger_ms=0) as producer:
            prober = Prober(http, producer, run, args.click_gap)
            prefix = f"fresh-{run}-".encode()
            watchers = [asyncio.create_task(watch_kafka(info.kafka, topic, prefix, prober, stop, ms))
                        for ms in (BARE_FETCH_WAIT_MS, FAUST_FETCH_WAIT_MS)]
            started = time.perf_counter()
            for _ in range(3):  # warm-up: admission needs sightings in two different training batches
                for user in users:
                    for event in prober.pair(user):
                        producer.send(event)
                producer.flush()
                await asyncio.sleep(1.0)
            while not all([await prober.vector(u) is not None for u in users]):
                if time.perf_counter() - started > 120:
                    raise RuntimeError("probe users not admitted and synced within 120 s")
                await asyncio.sleep(0.2)
            print(f"probe users admitted and synced in {time.perf_counter() - started:.1f} s", flush=True)
            prober.samples = Samples()  # the warm-up's clicks are not samples

            load_before = _load(info)
            t0 = time.perf_counter()
            remaining = args.samples

            async def user_loop(user: str) -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await asyncio.sleep(random.uniform(0.0, args.sync_interval))
                    await prober.probe(user)
                    done = len(prober.samples.feature)
                    if done % 20 == 0:
                        print(f"  {done}/{args.samples} samples", flush=True)

            await asyncio.gather(*(user_loop(u) for u in users))
            elapsed = time.perf_counter() - t0
            load_after = _load(info)
            await asyncio.sleep(0.5)  # the last probe clicks reach the baseline consumer
            stop.set()
            await asyncio.gather(*watchers)
    return prober.samples, load_figures(load_before, load_after, elapsed)


def _load(info: ReadyInfo) -> dict[str, float]:
    """Counters of the simulator and the worker so far (rates and means come from two readings)."""
    names = ("rtrec_producer_events_sent_total", "rtrec_worker_events_processed_total",
             "rtrec_worker_batch_seconds_sum", "rtrec_worker_batch_seconds_count", "rtrec_worker_batch_size_sum")
    metrics = [scrape(url) for url in info.metrics]
    return {name: sum(m.get(name, 0.0) for m in metrics) for name in names}


def load_figures(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Background rate, worker rate and the worker's mean micro-batch (size, ms) between two readings."""
    d = {k: after[k] - before[k] for k in before}
    batches = max(d["rtrec_worker_batch_seconds_count"], 1.0)
    return {"background_events_per_s": round(d["rtrec_producer_events_sent_total"] / seconds, 1),
            "worker_events_per_s": round(d["rtrec_worker_events_processed_total"] / seconds, 1),
            "worker_batch_mean_ms": round(1000 * d["rtrec_worker_batch_seconds_sum"] / batches, 1),
            "worker_batch_mean_size": round(d["rtrec_worker_batch_size_sum"] / batches, 1),
            "probe_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=120, help="probe clicks (default 120)")
    parser.add_argument("--rate", type=float, default=300.0, help="background simulated events/s (default 300)")
    parser.add_argument("--concurrency", type=int, default=5, help="probe users in flight at once (default 5)")
    parser.add_argument("--sync-interval", type=float, default=None,
                        help="serving's RTREC_SYNC_INTERVAL_S, its longest long-poll (default: the setting, 2 s)")
    parser.add_argument("--click-gap", type=float, default=0.5, help="seconds from a probe's impression to its click")
    args = parser.parse_args()
    if args.sync_interval is not None:
        os.environ["RTREC_SYNC_INTERVAL_S"] = str(args.sync_interval)  # the children read their environment
    settings = load_settings(log_level="WARNING")
    args.sync_interval = settings.sync_interval_s
    run = uuid.uuid4().hex[:6]
    wall = time.perf_counter()
    with LocalStack(settings, StackOptions(simulate=True, simulate_rate=args.rate)) as stack:
        print(f"stack up in {time.perf_counter() - wall:.1f} s; serving {stack.info.serving}", flush=True)
        samples, load = asyncio.run(measure(stack.info, settings.actions_topic, args, run))
        died = stack.check_children()
        if died:
            print(f"a component died during the run: {died}", file=sys.stderr)
    feature, embedding = samples.feature, samples.embedding
    fig = {q: nearest_rank(feature, q) for q in (50, 99)}
    emb = {q: nearest_rank(embedding, q) for q in (50, 99)}
    base = {q: nearest_rank(samples.kafka(BARE_FETCH_WAIT_MS), q) for q in (50, 99)}
    slow = {q: nearest_rank(samples.kafka(FAUST_FETCH_WAIT_MS), q) for q in (50, 99)}
    print(f"feature ms p50/p99 {as_ms(fig[50])}/{as_ms(fig[99])}, embedding ms p50/p99 {as_ms(emb[50])}/"
          f"{as_ms(emb[99])}; bare Kafka produce->consume ms p50/p99 {as_ms(base[50])}/{as_ms(base[99])} "
          f"(fetch wait {BARE_FETCH_WAIT_MS} ms), {as_ms(slow[50])}/{as_ms(slow[99])} (fetch wait "
          f"{FAUST_FETCH_WAIT_MS} ms, as Faust's consumer); max feature {as_ms(max(feature))} ms, "
          f"max embedding {as_ms(max(embedding))} ms", flush=True)
    report("freshness", {
        "samples": len(feature), "feature_p50_ms": as_ms(fig[50]), "feature_p99_ms": as_ms(fig[99]),
        "embedding_p50_ms": as_ms(emb[50]), "embedding_p99_ms": as_ms(emb[99]),
        "feature_timeouts": sum(not math.isfinite(x) for x in feature),
        "embedding_timeouts": sum(not math.isfinite(x) for x in embedding),
        "sync_interval_s": args.sync_interval, "sync_min_interval_s": settings.sync_min_interval_s,
        "kafka_p50_ms": as_ms(base[50]), "kafka_p99_ms": as_ms(base[99]),
        "feature_p99_ratio": ratio(fig[99], base[99]), "embedding_p99_ratio": ratio(emb[99], base[99]),
        "kafka_faust_fetch_p50_ms": as_ms(slow[50]), "kafka_faust_fetch_p99_ms": as_ms(slow[99]),
        **load, "poll_feature_ms": FEATURE_POLL_S * 1000, "poll_embedding_ms": EMBEDDING_POLL_S * 1000,
        "concurrency": args.concurrency, "seconds": round(time.perf_counter() - wall, 1),
    })


if __name__ == "__main__":
    main()
