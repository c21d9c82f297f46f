"""End-to-end ingestion: Kafka → stream workers → Redis features (+ examples), on the local stack.

Starts the broker, Redis and a parameter server, produces a simulated stream as fast as the broker
takes it, then starts N worker processes (`rtrec worker`) and measures until every event's effect
is in Redis and every example is trained. ``events_per_s`` is the sustained rate, from the first
applied batch to the last (``seconds_with_startup`` also counts start-up and the group join).
Producing first keeps the producer off the 2 cores the workers need. Baselines in the same run,
measured the same way: an aiokafka consumer that reads the same events and does nothing, and a
Faust agent that does nothing (benchmarks/faust_noop.py).
``events_lost`` is checked against Redis itself: the stream-wide 24 h window count must equal the
number of events sent.

What durability costs: the same run again on a durable stack (``rtrec up --data-dir``: the broker
on its on-disk object store, Redis with its AOF fsynced every second, snapshots on disk) in a
temporary folder. ``durable_events_per_s`` is measured the same way; ``durable_ratio`` is it over
the in-memory run's ``events_per_s`` of the same invocation; ``durable_produce_ratio`` compares how
fast the broker took the events (there every produce is a file written through the object store).

What a Redis Cluster costs or gains (``--redis-cluster N``): the in-memory run again with the
features on a local cluster of N masters, one feature shard per master (``rtrec up --redis-cluster
N``). Then ``events_per_s`` is the cluster run's, ``single_redis_events_per_s`` the single Redis
run's of the same invocation, and ``redis_cluster_ratio`` the first over the second.

    python -m benchmarks.ingest [--events 200000] [--workers 1] [--no-durable] [--redis-cluster N]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import report, total
from features.client import redis_client
from features.reader import FeatureReader
from producers.client import EventProducer
from producers.simulator import ClickSimulator, SimulatorConfig
from rtrec.settings import Settings, load_settings
from rtrec.stack.launcher import LocalStack, StackOptions, read_ready_line
from rtrec.stack.process import ManagedProcess, free_port

T0 = 1_700_000_000.0


def simulated_events(n: int, seed: int = 0) -> list:
    sim = ClickSimulator(SimulatorConfig(users=20_000, items=50_000, seed=seed))
    per_request = sim.events_per_request()
    events = sim.requests(int(1.05 * n / per_request) + 1, T0, T0 + 600.0)  # 10 minutes of event time
    return events[:n]


def start_workers(stack: LocalStack, n: int) -> tuple[list[ManagedProcess], list[str]]:
    workers, urls = [], []
    for k in range(n):
        env = stack.child_env(RTREC_METRICS_PORT=str(free_port()), RTREC_DATA_DIR=str(stack.workdir / f"w{k}"),
                              RTREC_JOIN_WINDOW_S="30", RTREC_LOG_LEVEL="WARNING")
        worker = ManagedProcess(f"worker-{k}", [sys.executable, "-m", "rtrec.cli", "worker"],
                                stack.workdir / f"worker-{k}.log", env=env, stdout=subprocess.PIPE)
        worker.start()
        workers.append(worker)
    for worker in workers:
        urls.append(read_ready_line(worker, 120)["metrics"])
    return workers, urls


async def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    """Events/s of a consumer that only reads (the speed limit of this broker and client)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        got, start = 0, time.perf_counter()
        while got < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            got += sum(len(records) for records in batches.values())
        return got / (time.perf_counter() - start)
    finally:
        await consumer.stop()


def faust_noop_rate(stack: LocalStack, n: int) -> float:
    """Events/s of a Faust agent that does nothing (benchmarks/faust_noop.py), from its first batch."""
    noop = ManagedProcess("faust-noop", [sys.executable, "-m", "benchmarks.faust_noop", "--events", str(n)],
                          stack.workdir / "faust-noop.log", stdout=subprocess.PIPE,
                          env=stack.child_env(RTREC_DATA_DIR=str(stack.workdir / "noop")))
    noop.start()
    try:
        result = read_ready_line(noop, 300)
        return result["events"] / result["seconds"]
    finally:
        noop.stop()


@dataclass(frozen=True)
class IngestRun:
    """One end-to-end run: produce everything, then drain it through the workers."""

    produce_events_per_s: float
    events_per_s: float
    seconds: float
    seconds_with_startup: float
    events_lost: int
    examples: float
    trained: float
    raw_consume_events_per_s: float | None = None
    faust_noop_events_per_s: float | None = None


def counted_in_redis(reader: FeatureReader) -> int:
    """Events applied so far, as the store counts them: the stream-wide 24 h counts, every action
    (the simulated stream spans 10 minutes of event time)."""
    return int(sum(n for name, n in reader.stream()["counts"].items() if name.endswith("_24h")))


def ingest(settings: Settings, events: list, workers: int, data_dir: Path | None,
           baselines: bool, redis_cluster: int = 0) -> IngestRun:
    """Produce ``events`` into a fresh stack (durable in ``data_dir``, or in memory; its features on
    a Redis Cluster of ``redis_cluster`` masters if > 0), then time the workers."""
    label = "durable" if data_dir is not None else f"redis-cluster-{redis_cluster}" if redis_cluster else "in-memory"
    options = StackOptions(simulate=False, workers=0, data_dir=data_dir,  # broker, Redis, param server
                           redis_cluster=redis_cluster)
    with LocalStack(settings, options) as stack:
        start = time.perf_counter()
        with EventProducer(stack.info.kafka, settings.actions_topic, linger_ms=20, batch_bytes=1 << 20) as producer:
            producer.send_many(events)
        produced_s = time.perf_counter() - start
        print(f"[{label}] produced in {produced_s:.1f} s ({len(events) / produced_s:,.0f} events/s, kafka-python)",
              flush=True)
        start = time.perf_counter()
        procs, urls = start_workers(stack, workers)
        print(f"[{label}] {workers} worker(s) started in {time.perf_counter() - start:.1f} s; draining", flush=True)
        # Progress is read from Redis (the stream-wide 24 h count, one small read), not by scraping
        # the workers: a scrape renders every metric of the process and holds its GIL meanwhile,
        # and polled a few times a second it took ~13 % of the pipeline process's samples (py-spy),
        # where a Prometheus server scrapes every 15 s. The workers' own counter is scraped rarely,
        # as a fallback should Redis never reach the total (events lost).
        reader = FeatureReader(redis_client(stack.info.redis), stack.features_config())
        deadline = time.monotonic() + 600
        while (applied := counted_in_redis(reader)) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        first = time.perf_counter()  # the workers are consuming: the sustained rate counts from here
        first_applied = applied
        scraped_at = time.monotonic()
        while applied < len(events) and time.monotonic() < deadline:
            time.sleep(0.05)
            applied = counted_in_redis(reader)
            if time.monotonic() - scraped_at > 5.0:
                scraped_at = time.monotonic()
                applied = max(applied, total(urls, "rtrec_features_events_applied_total"))
        done = time.perf_counter()
        examples = total(urls, "rtrec_worker_examples_total")
        deadline = time.monotonic() + 120  # the joiner's last examples are trained with the final batch
        while (trained := total(urls, "rtrec_trainer_examples_total")) < examples and time.monotonic() < deadline:
            time.sleep(1.0)
            examples = total(urls, "rtrec_worker_examples_total")
        counted = counted_in_redis(reader)
        batches = total(urls, "rtrec_worker_batch_size_count")
        busy = total(urls, "rtrec_worker_batch_seconds_sum")
        print(f"[{label}] worker batches: {batches:,.0f}, mean size {len(events) / max(batches, 1):,.0f}, "
              f"pipeline busy {busy:.1f} s of {time.perf_counter() - start:.1f} s", flush=True)
        for worker in procs:
            worker.stop()
        raw = faust_noop = None
        if baselines:
            raw = asyncio.run(raw_consume(stack.info.kafka, settings.actions_topic, len(events)))
            faust_noop = faust_noop_rate(stack, len(events))
    return IngestRun(len(events) / produced_s, (len(events) - first_applied) / (done - first), done - first,
                     done - start, len(events) - counted, examples, trained, raw, faust_noop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-durable", action="store_true", help="skip the run on the durable stack")
    parser.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                        help="also run with the features on a local Redis Cluster of N masters")
    args = parser.parse_args()
    settings = load_settings(log_level="WARNING")
    events = simulated_events(args.events)
    print(f"generated {len(events):,} simulated events", flush=True)
    run = ingest(settings, events, args.workers, None, baselines=True)
    assert run.raw_consume_events_per_s and run.faust_noop_events_per_s
    raw, faust_noop = run.raw_consume_events_per_s, run.faust_noop_events_per_s
    print(f"end to end: {len(events):,} events in {run.seconds_with_startup:.1f} s including worker start-up; "
          f"sustained from the first applied batch {run.events_per_s:,.0f} events/s; "
          f"raw consumer {raw:,.0f} events/s; no-op Faust agent {faust_noop:,.0f} events/s; "
          f"examples {run.examples:,.0f}, trained {run.trained:,.0f}", flush=True)
    figures = {
        "events": len(events), "workers": args.workers, "events_per_s": round(run.events_per_s),
        "raw_consume_events_per_s": round(raw), "ratio_to_raw": round(run.events_per_s / raw, 3),
        "faust_noop_events_per_s": round(faust_noop), "ratio_to_faust_noop": round(run.events_per_s / faust_noop, 3),
        "events_lost": run.events_lost, "examples": int(run.examples), "examples_trained": int(run.trained),
        "seconds": round(run.seconds, 2), "seconds_with_startup": round(run.seconds_with_startup, 2),
        "produce_events_per_s": round(run.produce_events_per_s),
    }
    if not args.no_durable:
        with tempfile.TemporaryDirectory(prefix="rtrec-ingest-durable-") as folder:
            durable = ingest(settings, events, args.workers, Path(folder), baselines=False)
        print(f"durable stack: sustained {durable.events_per_s:,.0f} events/s "
              f"({durable.events_per_s / run.events_per_s:.2f} of in-memory), produced at "
              f"{durable.produce_events_per_s:,.0f} events/s", flush=True)
        figures.update({
            "durable_events_per_s": round(durable.events_per_s),
            "durable_ratio": round(durable.events_per_s / run.events_per_s, 3),
            "durable_produce_events_per_s": round(durable.produce_events_per_s),
            "durable_produce_ratio": round(durable.produce_events_per_s / run.produce_events_per_s, 3),
            "durable_events_lost": durable.events_lost, "durable_seconds": round(durable.seconds, 2),
        })
    if args.redis_cluster:
        cluster = ingest(settings, events, args.workers, None, baselines=False, redis_cluster=args.redis_cluster)
        print(f"redis cluster of {args.redis_cluster}: sustained {cluster.events_per_s:,.0f} events/s "
              f"({cluster.events_per_s / run.events_per_s:.2f} of one Redis)", flush=True)
        figures.update({
            "events_per_s": round(cluster.events_per_s), "single_redis_events_per_s": round(run.events_per_s),
            "redis_cluster": args.redis_cluster,
            "redis_cluster_ratio": round(cluster.events_per_s / run.events_per_s, 3),
            "ratio_to_raw": round(cluster.events_per_s / raw, 3),
            "ratio_to_faust_noop": round(cluster.events_per_s / faust_noop, 3),
            "redis_cluster_events_lost": cluster.events_lost,
            "redis_cluster_examples_trained": int(cluster.trained),
        })
    report("ingest", figures)


if __name__ == "__main__":
    main()
