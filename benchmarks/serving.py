"""Benchmark of serving: /recommend latency under a fixed offered load, against /healthz of the same server.

Set-up: the local stack's broker and Redis; one parameter-server process holding 100,000 items
and 100,000 users (plus categories, contexts and dense weights); real-time features in Redis
from simulated clicks (recent items per user, item counters, trending/popular); serving
(``rtrec serve --processes N``, ``--processes``, default 2, ranking ``--ranked`` candidates per
request) synced from the parameter server. An open-loop load generator
in another process offers a fixed rate of /recommend (k = 10, users
drawn over all 100,000) for ``--duration`` seconds and measures each latency from the request's
scheduled send time (no coordinated omission); the same run first offers the same rate of
/healthz (the baseline: HTTP stack and event loop without any recommendation work). The load
generator sends pre-encoded requests on raw keep-alive sockets (see :func:`_open_loop_raw`:
httpx itself could not offer 300/s on two cores next to the server), a pool of 16 connections
used in turn.

Then the knee: offered rates stepped 300 -> 600 -> 1,000 -> 1,500 requests/s (``--knee-duration``
s each) until one has p99 above 25 ms or any error; ``knee_qps`` is the last that held, for
/recommend, and ``bare_knee_qps`` for /healthz of the same processes (``knee_ratio`` the first
over the second). Dense weights change during the /recommend run as they do under training: a
thread pushes the initial weights with 5 % noise every ``--dense-push-s`` seconds (10), and serving
pulls them on its own cadence (``RTREC_DENSE_SYNC_INTERVAL_S``), re-embeds every item and rebuilds
the index, so the latencies include those rebuilds. ``dense_sync_ms``: serving's mean time per
such rebuild during the run (``rtrec_serving_index_rebuild_duration_seconds``, ``dense_syncs`` of
them over all processes); ``first_index_build_ms``: the mean of the start-up builds before it.
``cpu_ms_per_request``: CPU seconds serving's processes (and their children: the impression
senders) used during the /recommend run, per answered request: the cost a busy shared machine
cannot hide in its latencies; ``redis_cpu_ms_per_request`` the same of the feature Redis (every
master of a cluster), which serving's reads keep busy on the same cores.

``--redis-cluster N`` puts the features on a local Redis Cluster of N masters (one feature shard
per master, as ``rtrec up --redis-cluster N``); the field ``redis_cluster`` says which (0: one Redis).

Run: ``python -m benchmarks.serving [--rate 300 --duration 30 --processes 2 --ranked 50]``; the
last line is JSON with ``items, offered_qps, achieved_qps, p50_ms, p99_ms, errors, bare_p99_ms,
p99_ratio, processes, ranked, redis_cluster, cpu_ms_per_request, redis_cpu_ms_per_request, knee_qps, bare_knee_qps, knee_ratio,
dense_sync_ms, dense_syncs, first_index_build_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
import numpy as np

from benchmarks.common import cpu_seconds, report
from features.ids import feature_ids
from features.client import is_cluster_client, redis_client
from features.config import FeatureConfig
from features.writer import FeatureWriter
from param_server.config import DEFAULT_TABLES
from param_server.client import ParamServerClient
from rtrec.events import Event
from rtrec.metrics_http import scrape
from rtrec.recipe.model import RecModel
from rtrec.settings import load_settings
from rtrec.stack.launcher import LocalStack, StackOptions
from rtrec.stack.process import terminate

ITEMS = 100_000
USERS = 100_000
CATEGORIES = 50
CLICKS = 60_000  # simulated clicks written to Redis (recent items, counters, rankings)
CHUNK = 65_536
KNEE_STEPS = (300.0, 600.0, 1000.0, 1500.0)  # offered requests/s of the knee search
KNEE_P99_MS = 25.0  # the knee: the highest step within this p99 and without errors
POOL = 16  # keep-alive connections the load generator opens up front


def _body(i: int) -> dict:
    """Request ``i``'s body: users spread over all of them by a fixed permutation (cache-hostile)."""
    return {"user_id": str((i * 7919) % USERS), "k": 10, "context": {"device": "ios"}}


def _spawn(args: list[str], env: dict[str, str], log: IO[bytes], timeout_s: float) -> tuple[subprocess.Popen, dict]:
    """Start ``rtrec <args>`` and read its JSON ready line."""
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", *args], env=env, stdout=subprocess.PIPE, stderr=log)
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"rtrec {' '.join(args)} exited with {proc.wait()} before it was ready; log: {log.name}")
        if line.lstrip().startswith(b"{") and json.loads(line).get("ready"):
            return proc, json.loads(line)
    raise RuntimeError(f"rtrec {' '.join(args)} not ready within {timeout_s} s")



def populate_params(addr: str) -> None:
    """Rows for every item, user, category and context (zero gradients: initial values) and dense weights."""
    host, port = addr.rsplit(":", 1)
    with ParamServerClient(host, int(port)) as client:
        now = time.time()
        parts = [feature_ids(2, np.arange(ITEMS)), feature_ids(1, np.arange(USERS)), feature_ids(1, np.arange(USERS)),
                 feature_ids(3, [f"c{j}" for j in range(CATEGORIES)]),
                 feature_ids(4, ["device=ios", "device=android", "device=web"])]
        for ids in parts:  # users twice: their table admits an ID on its second sighting
            for lo in range(0, ids.size, CHUNK):
                chunk = ids[lo:lo + CHUNK]
                client.push_many(chunk, np.zeros((chunk.size, DEFAULT_TABLES[0].dim), dtype=np.float32), ts=now)
        client.push_dense(RecModel().dense_arrays())
        print(f"parameter server: {client.stats()['tables']}", file=sys.stderr)


class DensePusher:
    """Pushes the initial dense weights with fresh 5 % noise every ``every_s`` seconds while running
    (what a trainer's dense syncs look like to serving: a new version, every weight moved a little)."""

    def __init__(self, addr: str, every_s: float) -> None:
        host, port = addr.rsplit(":", 1)
        self.client, self.every_s = ParamServerClient(host, int(port)), every_s
        self.base = RecModel().dense_arrays()
        self.stop = threading.Event()
        self.pushes = 0
        self.thread = threading.Thread(target=self._run, name="dense-pusher", daemon=True)

    def __enter__(self) -> "DensePusher":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.client.close()

    def _run(self) -> None:
        rng = np.random.default_rng(1)
        while not self.stop.wait(self.every_s):
            self.client.push_dense({k: (v * (1 + 0.05 * rng.standard_normal(v.shape))).astype(np.float32)
                                    for k, v in self.base.items()})
            self.pushes += 1


def redis_cpu_seconds(url: str) -> float:
    """CPU seconds (user + system) the Redis of ``url`` used so far, summed over a cluster's masters."""
    client = redis_client(url)
    if is_cluster_client(client):
        replies = list(client.info("cpu", target_nodes=client.PRIMARIES).values())
    else:
        replies = [client.info("cpu")]
    client.close()
    return sum(r["used_cpu_user"] + r["used_cpu_sys"] for r in replies)


def populate_features(redis_url: str, config: FeatureConfig, rng: np.random.Generator) -> None:
    """Simulated clicks (Zipf-popular items) of random users into the feature store."""
    writer = FeatureWriter(redis_client(redis_url), config)
    users = rng.integers(0, USERS, size=CLICKS)
    items = (rng.zipf(1.2, size=CLICKS) - 1) % ITEMS
    now = time.time()
    events = [Event(f"bench-{n}", str(u), str(i), "click", now - CLICKS + n, item={"category": f"c{i % CATEGORIES}"})
              for n, (u, i) in enumerate(zip(users.tolist(), items.tolist()))]  # per event: Event objects
    for lo in range(0, len(events), 2000):
        writer.write_many(events[lo:lo + 2000])


def _wait_indexed(metrics_url: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    indexed = 0.0
    while time.monotonic() < deadline:
        samples = scrape(metrics_url)
        per_process = [v for k, v in samples.items() if k.startswith("rtrec_serving_index_items{")]
        indexed = min(per_process) if per_process else samples.get("rtrec_serving_index_items", 0.0)
        if indexed >= ITEMS:
            break
        time.sleep(0.5)
    return indexed


def _request(url: str, body: dict | None) -> bytes:
    """One pre-encoded HTTP/1.1 keep-alive request (GET without a body, else POST JSON)."""
    parts = urlsplit(url)
    if body is None:
        return f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    data = json.dumps(body).encode()
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


async def _open_loop_raw(url: str, rate: float, duration_s: float, post: bool, timeout_s: float = 5.0) -> dict:
    """An open-loop schedule over raw keep-alive sockets.

    httpx spends about 3 ms of CPU per request, so on two cores it cannot offer 300 requests/s
    next to the server; pre-encoded requests on a pool of connections cost a tenth of that.
    Request ``i`` is due at ``t0 + i / rate`` and its latency counts from then.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    n = int(rate * duration_s)
    payloads = [_request(url, _body(i) if post else None) for i in range(n)]
    latencies = np.full(n, np.nan)
    errors = 0
    reasons: dict[str, int] = {}
    # A pool opened up front and used in turn, as a load balancer holds connections: several
    # serving processes on one port (SO_REUSEPORT) each get their share of connections.
    idle = deque([await asyncio.open_connection(host, port) for _ in range(POOL)])

    async def one(i: int, due: float) -> None:
        nonlocal errors
        for attempt in (1, 2):
            reused = bool(idle)
            conn = idle.popleft() if reused else await asyncio.open_connection(host, port)
            reader, writer = conn
            try:
                writer.write(payloads[i])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
            except (OSError, asyncio.IncompleteReadError) as exc:
                writer.close()
                if reused and attempt == 1 and not getattr(exc, "partial", b""):
                    continue  # a kept-alive connection the server had closed: any HTTP client retries
                errors += 1
                reasons[type(exc).__name__] = reasons.get(type(exc).__name__, 0) + 1
                return
            except asyncio.TimeoutError:
                errors += 1
                reasons["timeout"] = reasons.get("timeout", 0) + 1
                writer.close()
                return
            try:
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await asyncio.wait_for(reader.readexactly(length), timeout_s)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                errors += 1
                reasons[type(exc).__name__] = reasons.get(type(exc).__name__, 0) + 1
                writer.close()
                return
            status = int(head.split(b" ", 2)[1])
            if status >= 400:
                errors += 1
                reasons[f"http_{status}"] = reasons.get(f"http_{status}", 0) + 1
            else:
                latencies[i] = time.perf_counter() - due
            idle.append(conn)
            return

    start = time.perf_counter()
    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    ok = latencies[~np.isnan(latencies)] * 1000.0
    pct = (lambda q: round(float(np.percentile(ok, q)), 2)) if ok.size else (lambda q: float("nan"))
    return {"offered_qps": rate, "achieved_qps": round(ok.size / elapsed, 1), "requests": n, "errors": errors,
            "error_reasons": reasons,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": pct(100)}


def loadgen_main(argv: list[str]) -> None:
    """``--loadgen URL RATE DURATION post|get``: one open-loop run in this process; prints its JSON."""
    url, rate, duration, kind = argv[0], float(argv[1]), float(argv[2]), argv[3]
    print(json.dumps(asyncio.run(_open_loop_raw(url, rate, duration, kind == "post"))), flush=True)


def _load(url: str, rate: float, duration: float, kind: str) -> dict:
    """Run the load generator in its own process (own GIL and event loop)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--loadgen", url, str(rate), str(duration), kind],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _knee(url: str, kind: str, duration_s: float) -> float | None:
    """The highest of :data:`KNEE_STEPS` offered with p99 <= :data:`KNEE_P99_MS` and no error, stepping
    up until one fails (None if the first does, or with ``duration_s`` 0)."""
    knee = None
    for rate in KNEE_STEPS if duration_s > 0 else ():
        run = _load(url, rate, duration_s, kind)
        print(f"knee step {urlsplit(url).path} {rate:.0f}/s: {run}", file=sys.stderr)
        if run["errors"] or not run["p99_ms"] <= KNEE_P99_MS:
            break
        knee = rate
    return knee


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        loadgen_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="offered requests/s (default 300)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per measured run (default 30)")
    parser.add_argument("--no-impressions", action="store_true",
                        help="serve without Kafka impression logging (to measure what it costs)")
    parser.add_argument("--processes", type=int, default=2, help="serving processes (rtrec serve --processes; default 2)")
    parser.add_argument("--ranked", type=int, default=None,
                        help="candidates ranked per request (RTREC_SERVING_RANKED; default the setting's)")
    parser.add_argument("--dense-push-s", type=float, default=10.0,
                        help="seconds between new dense weights pushed during the /recommend run (default 10)")
    parser.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                        help="features on a local Redis Cluster of N masters, one shard per master")
    parser.add_argument("--knee-duration", type=float, default=10.0,
                        help="seconds per step of the knee search (default 10; 0 = no knee search)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rtrec-bench-serving-"))
    settings = load_settings(log_level="WARNING")
    stack = LocalStack(settings, StackOptions(components=False, simulate=False, workdir=workdir,
                                              redis_cluster=args.redis_cluster))
    procs: list[subprocess.Popen] = []
    try:
        info = stack.start()
        env = dict(os.environ, RTREC_KAFKA=info.kafka, RTREC_REDIS_URL=info.redis, RTREC_LOG_LEVEL="INFO",
                   RTREC_METRICS_PORT="0", RTREC_SNAPSHOT_DIR=str(workdir / "snapshots"), RTREC_PS_PORT="0",
                   RTREC_SNAPSHOT_INTERVAL_S="3600", RTREC_FEATURE_SHARDS=str(stack.features_config().shards))
        ps, ready = _spawn(["param-server"], env, (workdir / "param-server.log").open("wb"), 60)
        procs.append(ps)
        started = time.perf_counter()
        populate_params(ready["param_server"])
        populate_features(info.redis, stack.features_config(), np.random.default_rng(0))
        print(f"populated {ITEMS} items, {USERS} users, {CLICKS} clicks in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)

        ranked = args.ranked or settings.serving_ranked
        serve_env = dict(env, RTREC_PARAM_SERVERS=ready["param_server"], RTREC_HTTP_PORT="0",
                         RTREC_SERVING_PROCESSES=str(args.processes), RTREC_SERVING_RANKED=str(ranked))
        if args.no_impressions:  # an unreachable broker: serving runs without its impression log
            serve_env["RTREC_KAFKA"] = "127.0.0.1:1"
        started = time.perf_counter()
        server, served = _spawn(["serve"], serve_env, (workdir / "serving.log").open("wb"), 300)
        procs.append(server)
        indexed = _wait_indexed(served["metrics"], 120)
        print(f"serving ready with {indexed:.0f} items indexed in {time.perf_counter() - started:.1f} s "
              f"(log: {workdir / 'serving.log'})", file=sys.stderr)
        base = served["serving"]
        sample = httpx.post(f"{base}/recommend", json=_body(1)).json()
        print(f"sample: {sample}", file=sys.stderr)

        _load(f"{base}/recommend", min(args.rate, 100.0), 3.0, "post")  # warm-up
        # The baseline first: a /recommend run that falls behind leaves a backlog in the server.
        bare = _load(f"{base}/healthz", args.rate, args.duration, "get")
        print(f"/healthz:   {bare}", file=sys.stderr)
        cpu_before, redis_before = cpu_seconds(server.pid), redis_cpu_seconds(info.redis)
        before = scrape(served["metrics"])
        with DensePusher(ready["param_server"], args.dense_push_s) as pusher:
            rec = _load(f"{base}/recommend", args.rate, args.duration, "post")
        during = scrape(served["metrics"])
        answered = max(1, rec["requests"] - rec["errors"])
        cpu_ms = 1000 * (cpu_seconds(server.pid) - cpu_before) / answered
        redis_ms = 1000 * (redis_cpu_seconds(info.redis) - redis_before) / answered
        print(f"/recommend: {rec}; serving CPU {cpu_ms:.2f} ms, Redis {redis_ms:.2f} ms per request; {pusher.pushes} dense pushes",
              file=sys.stderr)
        bare_knee = _knee(f"{base}/healthz", "get", args.knee_duration)
        knee = _knee(f"{base}/recommend", "post", args.knee_duration)
        rebuild = "rtrec_serving_index_rebuild_duration_seconds"
        first_builds, first_sum = before.get(f"{rebuild}_count", 0.0), before.get(f"{rebuild}_sum", 0.0)
        rebuilds = during.get(f"{rebuild}_count", 0.0) - first_builds
        rebuild_s = during.get(f"{rebuild}_sum", 0.0) - first_sum
        report("serving", {
            "items": int(indexed), "users": USERS, "offered_qps": rec["offered_qps"],
            "achieved_qps": rec["achieved_qps"], "p50_ms": rec["p50_ms"], "p99_ms": rec["p99_ms"],
            "errors": rec["errors"], "bare_p50_ms": bare["p50_ms"], "bare_p99_ms": bare["p99_ms"],
            "bare_errors": bare["errors"],
            "p99_ratio": round(rec["p99_ms"] / bare["p99_ms"], 2) if bare["p99_ms"] else None,
            "impressions": not args.no_impressions, "processes": args.processes, "ranked": ranked,
            "redis_cluster": args.redis_cluster,
            "cpu_ms_per_request": round(cpu_ms, 2), "redis_cpu_ms_per_request": round(redis_ms, 2),
            "knee_qps": knee, "bare_knee_qps": bare_knee,
            "knee_ratio": round(knee / bare_knee, 3) if knee and bare_knee else None,
            "dense_sync_ms": round(1000 * rebuild_s / rebuilds, 1) if rebuilds else None,
            "dense_syncs": int(rebuilds),
            "first_index_build_ms": round(1000 * first_sum / first_builds, 1) if first_builds else None,
        })
    finally:
        for proc in reversed(procs):
            terminate(proc, grace_s=15)
        stack.stop()


if __name__ == "__main__":
    main()
