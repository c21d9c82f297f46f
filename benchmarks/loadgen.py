"""An open-loop HTTP load generator: requests leave on a fixed schedule, whatever the server does.

Request ``i`` is due at ``t0 + i / rate``; its latency is measured from that due time, not from
when it was actually sent, so a stalled server shows up as latency instead of silently lowering
the load (no coordinated omission). Runs in its own process (``python -m benchmarks.loadgen``) so
the server under test does not share its event loop or GIL.

    python -m benchmarks.loadgen http://127.0.0.1:8080/healthz --rate 300 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

import httpx
import numpy as np

#: Requests allowed in flight; beyond this a due request counts as an error (the server is drowning).
MAX_IN_FLIGHT = 2_000


@dataclass(frozen=True)
class LoadResult:
    """What a run measured; latencies in milliseconds from each request's due time."""

    offered_qps: float
    achieved_qps: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


async def _run(url: str, rate: float, duration_s: float, body: Callable[[int], dict | None],
               timeout_s: float) -> LoadResult:
    n = int(rate * duration_s)
    latencies = np.full(n, np.nan)
    errors = 0
    in_flight = 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def one(i: int, due: float) -> None:
            nonlocal errors, in_flight
            payload = body(i)
            try:
                if payload is None:
                    response = await client.get(url)
                else:
                    response = await client.post(url, json=payload)
                if response.status_code >= 400:
                    errors += 1
                else:
                    latencies[i] = time.perf_counter() - due
            except httpx.HTTPError:
                errors += 1
            finally:
                in_flight -= 1

        start = time.perf_counter()
        tasks = []
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= MAX_IN_FLIGHT:
                errors += 1
                continue
            in_flight += 1
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ok = latencies[~np.isnan(latencies)] * 1000.0
    pct = (lambda q: float(np.percentile(ok, q))) if ok.size else (lambda q: float("nan"))
    return LoadResult(offered_qps=rate, achieved_qps=round(ok.size / elapsed, 1), requests=n, errors=errors,
                      p50_ms=round(pct(50), 2), p90_ms=round(pct(90), 2), p99_ms=round(pct(99), 2),
                      max_ms=round(float(ok.max()), 2) if ok.size else float("nan"))


def run_open_loop(url: str, rate: float, duration_s: float, body: Callable[[int], dict | None] = lambda i: None,
                  timeout_s: float = 5.0) -> LoadResult:
    """Offer ``rate`` requests/s to ``url`` for ``duration_s``; ``body(i)`` None → GET, else POST JSON."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be > 0")
    return asyncio.run(_run(url, rate, duration_s, body, timeout_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--json-body", help="POST this JSON body instead of a GET")
    args = parser.parse_args()
    payload = json.loads(args.json_body) if args.json_body else None
    print(json.dumps(asdict(run_open_loop(args.url, args.rate, args.duration, lambda i: payload))), flush=True)


if __name__ == "__main__":
    main()
