"""Load and soak: the whole local stack (``rtrec up``'s launcher) under a steady simulated stream.

* ``test_soak_memory_stays_bounded`` (marked ``slow``: ``make soak``): several minutes
  (``RTREC_SOAK_SECONDS``, default 240) at a steady rate while a client asks serving for
  recommendations. The simulated world has a small fixed population, so once it has been seen
  every quantity must level off: the RSS of every process and the parameter-server rows; Redis'
  per-user/item keys stay within what the world allows (their windows are rings of buckets). Redis'
  ``used_memory`` levels off too: redelivered messages are recognised by the Kafka offsets the
  feature store records per partition (no key per event), and the event_id marks (against a
  producer that sent an event twice) live ``RTREC_DEDUPE_WINDOW_S``, here 60 s so that their
  number levels off within the warm-up; the test prints Redis' growth per event in the second
  half (bounded: at most 20 bytes) and what the marks cost at the default window.
  Serving must answer every request, with p99 latency under a second.
* ``test_every_redis_key_has_a_ttl`` (short, in ``make test``): what keeps the feature store from
  growing forever -- every key the stack writes expires.

Each sample is printed, so ``make soak`` shows the curves.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import redis

from features.config import FeatureConfig
from param_server.client import ParamServerClient
from rtrec.settings import load_settings
from rtrec.stack.launcher import LocalStack, StackOptions
from rtrec.stack.process import ManagedProcess

pytestmark = pytest.mark.integration

SOAK_S = float(os.environ.get("RTREC_SOAK_SECONDS", "240"))
RATE = 400.0
USERS, ITEMS, CATEGORIES = 300, 500, 20  # the simulator's default number of categories
#: The soak's event_id window: short enough to fill within the warm-up (the default is 300 s).
DEDUPE_WINDOW_S = 60


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MiB."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def sample(stack: LocalStack) -> dict[str, float]:
    out = {f"rss_mb.{c.name}": rss_mb(c.pid) for c in stack.children if c.pid is not None}
    out["rss_mb.redis"] = rss_mb(stack.redis.process.pid) if getattr(stack.redis, "process", None) else 0.0
    client = redis.Redis.from_url(stack.info.redis)
    out["redis_used_mb"] = client.info("memory")["used_memory"] / 2**20
    seen = other = 0
    for key in client.scan_iter(count=5000):  # one pass, so both counts are of the same moment
        if b"seen:" in key:
            seen += 1  # one per applied event, kept for the dedupe TTL (~1 day)
        else:
            other += 1  # per user, per item, rankings, catalogue: bounded by the world
    out["redis_dedupe_keys"], out["redis_other_keys"] = seen, other
    # events consumed so far: the feature store's applied offsets, summed over partitions
    out["applied_offsets"] = float(sum(int(o) for o in client.hvals("rtrec:offsets")))
    marks = [k for k, _ in zip(client.scan_iter(match="rtrec:seen:*", count=1000), range(200))]
    sizes = [client.memory_usage(k) or 0 for k in marks]
    out["bytes_per_mark"] = sum(sizes) / len(sizes) if sizes else 0.0
    rows = 0
    for addr in stack.info.param_server:
        host, port = addr.rsplit(":", 1)
        with ParamServerClient(host, int(port)) as client:
            rows += sum(t["rows"] for t in client.stats()["tables"].values())
    out["param_rows"] = rows
    out["t"] = time.monotonic()
    return out


class LatencyProbe:
    """/recommend for random simulated users, a few per second, recording latencies and failures."""

    def __init__(self, url: str) -> None:
        self.url, self.latencies, self.failures = url, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=5.0) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    r = client.post(f"{self.url}/recommend", json={"user_id": f"u{rng.integers(USERS)}", "k": 10})
                    if r.status_code >= 500:
                        self.failures += 1
                    else:
                        self.latencies.append(time.perf_counter() - start)
                except httpx.HTTPError:
                    self.failures += 1
                time.sleep(0.1)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """The stack with a simulator of a small, fixed world (300 users, 500 items) at a steady rate."""
    monkeypatch.setenv("RTREC_DEDUPE_WINDOW_S", str(DEDUPE_WINDOW_S))  # the workers inherit it
    settings = load_settings(log_level="WARNING")
    with LocalStack(settings, StackOptions(simulate=False, workdir=tmp_path)) as running:
        simulator = ManagedProcess("simulate", [sys.executable, "-m", "rtrec.cli", "simulate", "--rate", str(RATE),
                                                "--duration", "1e9", "--users", str(USERS), "--items", str(ITEMS)],
                                   tmp_path / "simulate.log", env=running.child_env())
        simulator.start()
        running.children.append(simulator)  # stopped with the stack
        yield running


def growth(series: list[float]) -> tuple[float, float]:
    """(growth over the first half, growth over the second half) of a sampled series."""
    mid = len(series) // 2
    return series[mid] - series[0], series[-1] - series[mid]


@pytest.mark.slow
@pytest.mark.timeout(SOAK_S + 300)
def test_soak_memory_stays_bounded(stack: LocalStack) -> None:
    probe = LatencyProbe(stack.info.serving)
    probe.thread.start()
    samples: list[dict[str, float]] = []
    start = time.monotonic()
    while time.monotonic() - start < SOAK_S:
        samples.append(sample(stack))
        print(f"t={time.monotonic() - start:6.1f} s " + " ".join(f"{k}={v:.1f}" for k, v in samples[-1].items()
                                                           if k != "t"), flush=True)
        assert stack.check_children() is None, stack.check_children()
        time.sleep(10.0)
    probe.stop.set()
    probe.thread.join()
    latencies = np.array(probe.latencies)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"serving: {latencies.size} requests, {probe.failures} failed, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    warm = samples[len(samples) // 4:]  # the first quarter is start-up: imports, first model sync

    def series(key: str) -> list[float]:
        return [s[key] for s in warm]

    # Bounded by the world: per user a window-count string per action, a state hash, a recent and a
    # session list; per item a window-count string per action and a co-visitation set; per (user,
    # category) the strings of the actions its features read; a handful of stream-wide keys
    # (window counts per action, watermark, rankings, catalogue, applied offsets, actions).
    actions = len(redis.Redis.from_url(stack.info.redis).smembers("rtrec:actions"))
    uc_actions = len(FeatureConfig().user_category_actions)
    world = USERS * (actions + 3) + ITEMS * (actions + 1) + USERS * CATEGORIES * uc_actions + actions + 12
    assert max(s["redis_other_keys"] for s in samples) <= world, world
    # Levels off: every process' memory and the parameter-server rows.
    for key in [k for k in samples[0] if k.startswith("rss_mb.")] + ["param_rows"]:
        _, second = growth(series(key))
        slack = 16.0 if key.startswith("rss_mb.") else 2.0  # MiB of allocator noise; a couple of keys or IDs
        assert second <= 0.05 * warm[0][key] + slack, (key, [round(s[key], 1) for s in samples])
    # Redis levels off: redelivery is told by offsets (no key per event), and the event_id marks
    # are as many as the window holds (rate x window), each expiring after it.
    _, events = growth(series("applied_offsets"))
    _, used = growth(series("redis_used_mb"))
    _, seconds = growth(series("t"))
    per_event, rate = used * 2**20 / max(events, 1), events / seconds
    mark = max(s["bytes_per_mark"] for s in warm)
    print(f"redis grew {used:.2f} MiB for {events:.0f} events in the second half: {per_event:.1f} bytes per event "
          f"in steady state at {rate:.0f} events/s; event_id marks: {warm[-1]['redis_dedupe_keys']:.0f} "
          f"({DEDUPE_WINDOW_S} s window), {mark:.0f} bytes each: {rate * 300 * mark / 2**20:.1f} MiB in all "
          f"at the default 300 s window")
    assert events > 0 and per_event <= 20.0, per_event
    _, marks = growth(series("redis_dedupe_keys"))
    assert marks <= 0.1 * warm[-1]["redis_dedupe_keys"] + 0.05 * events, marks  # levelled off with the window
    assert probe.failures == 0
    assert p99 < 1000.0, p99


def test_every_redis_key_has_a_ttl(stack: LocalStack) -> None:
    """Keys without expiry are a fixed handful (the event-time watermark), never per user or item."""
    client = redis.Redis.from_url(stack.info.redis)
    deadline = time.monotonic() + 60
    while client.dbsize() < 100 and time.monotonic() < deadline:
        time.sleep(1.0)

    def keys_without_ttl() -> tuple[int, set[bytes]]:
        keys = list(client.scan_iter(count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        return len(keys), {k for k, ttl in zip(keys, pipe.execute()) if ttl == -1}

    n_before, before = keys_without_ttl()
    time.sleep(10.0)
    n_after, after = keys_without_ttl()
    assert n_before >= 100 and n_after > n_before  # the stream goes on writing
    assert after == before and len(after) <= 3, sorted(after)[:10]
