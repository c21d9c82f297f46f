"""Does the local stack's broker get slower as its log grows? CPU of the broker over time under a
steady load.

``rtrec up`` runs Tansu with memory storage (``rtrec.stack.broker``). This starts that broker as
the local stack does (no other component), produces at a constant rate with rtrec's own producer
(``producers.client.EventProducer``; ``--linger-ms`` sets how many events share a record batch)
and reads the topic back with an aiokafka consumer that fetches as the stream worker's does
(``stream_workers.transport.FETCH_MAX_WAIT_MS``, ``--fetch-wait-ms`` to try another). Every
``--window`` seconds it reads the broker process's CPU time from ``/proc``.

The baseline is the first window of the same run: ``growth_ratio`` is the broker's CPU share in
the last window divided by that in the first, at the same offered load; a broker whose cost per
request does not depend on how much it stores stays near 1. ``--no-consumer`` runs the producer
alone, to tell a cost of writes from a cost of fetches. ``--durable`` runs the broker on the
durable stack's ``s3://`` storage (rtrec's object store, in a temporary folder) instead, and adds
the object store's CPU.

    python -m benchmarks.broker_growth [--rate 250] [--linger-ms 0] [--seconds 120] [--window 30]
        [--fetch-wait-ms N] [--no-consumer] [--durable]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from benchmarks.common import cpu_seconds, report
from producers.client import EventProducer
from rtrec.events import Event
from rtrec.settings import Settings, load_settings
from rtrec.stack.launcher import LocalStack, StackOptions
from stream_workers.transport import FETCH_MAX_WAIT_MS


def produce(bootstrap: str, topic: str, rate: float, linger_ms: int, stop: threading.Event) -> int:
    """Send impression-like events at ``rate`` per second until ``stop``; returns how many were sent."""
    sent = 0
    with EventProducer(bootstrap, topic, linger_ms) as producer:
        started = time.monotonic()
        while not stop.is_set():
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(Event(f"bg-{sent}", f"u{sent % 943}", f"i{sent % 1682}", "impression", time.time(),
                                request_id=f"r{sent // 10}"))
            sent += 1
        producer.flush()
    return sent


async def consume(bootstrap: str, topic: str, fetch_wait_ms: int, stop: asyncio.Event) -> int:
    """Read the topic from the start until ``stop``; returns how many records were read."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="broker-growth",
                                fetch_max_wait_ms=fetch_wait_ms, auto_offset_reset="earliest")
    await consumer.start()
    read = 0
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            read += sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()
    return read


def sample_cpu(pids: dict[str, int], seconds: float, window: float) -> dict[str, list[float]]:
    """Per named process, its CPU in % of a core over each ``window`` seconds of ``seconds``."""
    shares: dict[str, list[float]] = {name: [] for name in pids}
    started = last_t = time.monotonic()
    last_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    while time.monotonic() - started < seconds - 1e-6:
        time.sleep(window)
        now, cpu = time.monotonic(), {name: cpu_seconds(pid) for name, pid in pids.items()}
        for name in pids:
            shares[name].append(round(100 * (cpu[name] - last_cpu[name]) / (now - last_t), 1))
        print(f"  t={now - started:.0f} s: " + ", ".join(f"{name} {shares[name][-1]} % of a core" for name in pids),
              flush=True)
        last_t, last_cpu = now, cpu
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=250.0, help="events/s offered (default 250)")
    parser.add_argument("--linger-ms", type=int, default=0, help="producer linger; 0: a batch per event (default)")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the run (default 120)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per CPU reading (default 30)")
    parser.add_argument("--fetch-wait-ms", type=int, default=FETCH_MAX_WAIT_MS,
                        help=f"consumer's fetch wait (default: the worker's, {FETCH_MAX_WAIT_MS})")
    parser.add_argument("--no-consumer", action="store_true", help="produce only")
    parser.add_argument("--durable", action="store_true", help="the durable stack's s3:// storage, not memory")
    args = parser.parse_args()
    if args.rate <= 0 or args.window <= 0 or args.seconds < 2 * args.window:
        parser.error("need --rate > 0, --window > 0 and --seconds >= 2 windows")

    settings = load_settings(log_level="WARNING")
    with tempfile.TemporaryDirectory(prefix="rtrec-broker-growth-") as tmp:
        figures = run(args, settings, Path(tmp) if args.durable else None)
    report("broker_growth", figures)


def run(args: argparse.Namespace, settings: Settings, data_dir: Path | None) -> dict:
    """The timed run on a fresh broker (durable when ``data_dir`` is given); the report's figures."""
    with LocalStack(settings, StackOptions(simulate=False, components=False, data_dir=data_dir)) as stack:
        pids = {"broker": stack.broker.process.pid}
        if data_dir is not None:
            pids["object_store"] = stack.object_store.process.pid
        stop, loop_stop = threading.Event(), asyncio.Event()
        counts: dict[str, int] = {}
        loop = asyncio.new_event_loop()
        threads = [threading.Thread(target=lambda: counts.update(
            sent=produce(stack.info.kafka, settings.actions_topic, args.rate, args.linger_ms, stop)))]
        if not args.no_consumer:
            threads.append(threading.Thread(target=lambda: counts.update(read=loop.run_until_complete(
                consume(stack.info.kafka, settings.actions_topic, args.fetch_wait_ms, loop_stop)))))
        for thread in threads:
            thread.start()
        shares = sample_cpu(pids, args.seconds, args.window)
        stop.set()
        loop.call_soon_threadsafe(loop_stop.set)
        for thread in threads:
            thread.join()
        loop.close()
    if "sent" not in counts or ("read" not in counts and not args.no_consumer):
        raise SystemExit("the producer or the consumer failed (see above): no figures")
    first, final = shares["broker"][0], shares["broker"][-1]
    return {
        "rate": args.rate, "linger_ms": args.linger_ms, "fetch_wait_ms": None if args.no_consumer else args.fetch_wait_ms,
        "storage": "s3" if data_dir is not None else "memory", "seconds": args.seconds, "window_s": args.window,
        "broker_cpu_percent": shares["broker"], "first_cpu_percent": first, "last_cpu_percent": final,
        "growth_ratio": round(final / first, 2) if first > 0 else None,
        "object_store_cpu_percent": shares.get("object_store"),
        "events_sent": counts["sent"], "events_read": counts.get("read"),
    }


if __name__ == "__main__":
    main()
