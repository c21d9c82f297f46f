"""Faults: a stream with bad events in it, while a worker, a parameter-server shard and serving are
killed with SIGKILL and restarted; then what was lost, doubled, dead-lettered and recovered.

On the local stack (broker, Redis, 2 parameter-server shards, serving) one worker consumes a
simulated stream produced at a steady rate, with ``--bad`` invalid messages mixed in. During it:
the worker is killed and restarted (it resumes from its committed offsets and re-primes its
joiner), shard 1 is killed and restarted (it restores its last snapshot, taken every
``--snapshot-every`` s; the worker notices the new epoch and retrains everything after the
snapshot into it), and serving is killed and restarted on the same port while a client keeps
asking it for recommendations.

What is measured, against the events sent:

* ``events_lost`` / ``duplicates_applied``: per simulated user and action, the 24 h counts in
  Redis against the events sent (a missing effect counts as lost, a doubled one as duplicate).
* ``dlq_expected`` / ``dlq_seen``: the bad messages sent / the distinct ones found in
  ``actions.dlq`` (``dlq_messages`` counts the dead letters including re-deliveries).
* ``model_recovered``: against a no-fault reference. Two more workers (own consumer groups, own
  Redis databases, own single-shard parameter servers) train on the same topic at the same time
  with no faults. Row *values* are not comparable between runs: micro-batch boundaries follow
  timing, IDs are deduplicated per push, and Adagrad's first steps are ``lr * sign(g)`` per
  coordinate, so two no-fault runs already differ by ~100 % (relative error of the learned
  parts ``row - initial row``, 1.08, seen in a first version of this benchmark). Admission is
  set to the first push on every shard here, as it counts pushes, not examples. What a restored shard that lost updates gets wrong is *which* rows it
  holds and *when* each was last trained. So for every row of reference A that routes to shard 1,
  the fault run's shard 1 must hold it with the same last-update event time (within
  ``TOLERANCE_S``: an update's time is its batch's latest event). ``rows_agreeing`` is that share
  over all rows, ``rows_at_stake_agreeing`` over the rows whose last update in the reference falls
  between the restored snapshot (plus ``STAKE_MARGIN_S``) and the kill -- those a restore without
  replay leaves stale or missing, so for them the fault run's update must also be later than the
  snapshot. The shard is killed once it trained ``3 * STAKE_MARGIN_S`` event seconds past its
  snapshot. Each share must be within 0.01 of the same share of reference B against A (the noise
  floor of this run). With the worker's replay switched off (tried once by hand) the same run
  gave ``rows_agreeing`` 0.866 (588 rows missing), ``rows_at_stake_agreeing`` 0.043 of 561,
  references 1.0 and 1.0: not recovered.
* ``serving_errors_during_faults``: failed /recommend requests (errors, 5xx, refused
  connections) while the faults happened; serving is down while it restarts, so this is not 0.

Impression logging of serving is off here so that the events in Kafka are exactly those sent.

    python -m benchmarks.faults [--events 30000] [--rate 800] [--bad 60] [--snapshot-every 6]

``FAULTS_WORKDIR=DIR`` keeps the stack's logs and snapshots in DIR.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np
import redis
from kafka import KafkaConsumer, TopicPartition

from benchmarks.common import report
from benchmarks.ingest import T0, simulated_events
from features.reader import FeatureReader
from param_server.client import ParamServerClient
from param_server.config import DEFAULT_TABLES, tables_to_json
from param_server.sharding import shard_of
from param_server.snapshot import read_snapshot
from producers.client import EventProducer
from rtrec.events import Event, action_label
from rtrec.metrics_http import scrape
from rtrec.settings import load_settings
from rtrec.stack.broker import ensure_topics
from rtrec.stack.launcher import LocalStack, StackOptions, read_ready_line
from rtrec.stack.process import ManagedProcess, free_port


#: Event seconds two runs' last update of a row may differ by and still agree (batch boundaries).
TOLERANCE_S = 60.0
#: Event seconds one micro-batch can span here (1,000 events, 50 per event second): rows count as at
#: stake only if their reference update came this long after the snapshot, so batch boundaries
#: cannot put an honest retrain before the snapshot's clock.
STAKE_MARGIN_S = 30.0


def bad_messages(n: int) -> list[bytes]:
    """``n`` distinct invalid messages of several kinds (each carries its index, so each is unique)."""
    kinds = [
        lambda k: b"{not json %d" % k,
        lambda k: b'{"event_id":"bad-%d","user_id":"u","item_id":"i","action":"click"}' % k,  # no ts
        lambda k: b'{"event_id":"bad-%d","user_id":"u","item_id":"i","action":"click","ts":"soon"}' % k,
        lambda k: b"\xff\xfe bad utf-8 %d" % k,
        lambda k: b'{"event_id":"bad-%d","user_id":"u","item_id":"i","action":"click","ts":1,"x":"%s"}'
                  % (k, b"y" * 20_000),  # too large
        lambda k: b'[%d]' % k,
    ]
    return [kinds[k % len(kinds)](k) for k in range(n)]


class Component:
    """A restartable ``rtrec <command>`` child with a fixed environment (ports included)."""

    def __init__(self, stack: LocalStack, name: str, command: str, extra: dict[str, str]) -> None:
        self.stack, self.name, self.command = stack, name, command
        self.env = stack.child_env(RTREC_METRICS_PORT=str(free_port()), **extra)
        self.process: ManagedProcess | None = None
        self.ready: dict = {}
        self.starts = 0

    def start(self) -> dict:
        self.starts += 1
        self.process = ManagedProcess(f"{self.name}-{self.starts}", [sys.executable, "-m", "rtrec.cli", self.command],
                                      self.stack.workdir / f"{self.name}-{self.starts}.log", env=self.env,
                                      stdout=subprocess.PIPE)
        self.process.start()
        self.ready = read_ready_line(self.process, 120)
        return self.ready

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hook, no final snapshot, no commit."""
        assert self.process is not None and self.process.pid is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.proc.wait()  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=10)


@dataclass
class ServingProbe:
    """Asks serving for recommendations in a loop and records each answer's time and success."""

    url: str
    users: int
    results: list[tuple[float, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(1)
        with httpx.Client(timeout=2.0) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(f"{self.url}/recommend", json={"user_id": f"u{rng.randrange(self.users)}", "k": 10})
                    ok = r.status_code < 500
                except httpx.HTTPError:
                    ok = False
                self.results.append((time.monotonic(), ok))
                time.sleep(0.05)


def produce(bootstrap: str, topic: str, events: list[Event], bad: list[bytes], rate: float,
            progress: list[int]) -> None:
    """Send the events (with the bad messages spread among them) at ``rate`` per second."""
    rng = random.Random(7)
    slots = sorted(rng.sample(range(len(events)), len(bad)))
    bad_at = dict(zip(slots, bad))
    start = time.monotonic()
    with EventProducer(bootstrap, topic, linger_ms=5) as producer:
        for n, event in enumerate(events):
            if n in bad_at:
                producer.send_raw(f"bad{n}", bad_at[n])
            producer.send(event)
            progress[0] = n + 1
            ahead = start + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def topic_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Next offset per partition, by reading the topic (Tansu's ListOffsets answers were seen stale)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=8 << 20)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends: dict[int, int] = {}
        while batch := consumer.poll(timeout_ms=2000, max_records=50_000):
            for tp, records in batch.items():
                ends[tp.partition] = max(ends.get(tp.partition, 0), records[-1].offset + 1)
        return ends
    finally:
        consumer.close()


def dead_letters(bootstrap: str, topic: str) -> list[str]:
    """The ``raw`` field of every message in the dead-letter topic."""
    import json

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out = []
        while batch := consumer.poll(timeout_ms=2000):
            out += [json.loads(r.value)["raw"] for records in batch.values() for r in records]
        return out
    finally:
        consumer.close()


def feature_errors(redis_url: str, events: list[Event]) -> tuple[int, int]:
    """(lost, duplicated): per user and action, the 24 h counts in Redis against the events sent."""
    expected: dict[str, Counter] = {}
    for e in events:
        expected.setdefault(e.user_id, Counter())[f"{action_label(e.action)}_24h"] += 1
    users = sorted(expected)
    reader = FeatureReader(redis.Redis.from_url(redis_url))
    lost = doubled = 0
    for start in range(0, len(users), 2000):
        chunk = users[start:start + 2000]
        for user, features in zip(chunk, reader.users(chunk)):
            seen = {k: v for k, v in features["counts"].items() if k.endswith("_24h")}
            for name in set(expected[user]) | set(seen):
                diff = seen.get(name, 0) - expected[user].get(name, 0)
                lost += max(0, -diff)
                doubled += max(0, diff)
    return lost, doubled


def applied_everywhere(redis_urls: list[str], n_events: int) -> bool:
    for url in redis_urls:
        counts = FeatureReader(redis.Redis.from_url(url)).stream()["counts"]
        if sum(v for k, v in counts.items() if k.endswith("_24h")) < n_events:
            return False
    return True


def shard_stats(addr: str) -> dict:
    host, port = addr.rsplit(":", 1)
    with ParamServerClient(host, int(port)) as client:
        return client.stats()


def trained_since_snapshot(addr: str, event_s: float) -> bool:
    """The shard's event clock moved ``event_s`` past that of its last snapshot (so a kill loses that)."""
    stats = shard_stats(addr)
    path = stats["snapshot"]["path"]
    if path is None or stats["event_clock"] is None:
        return False
    clock = read_snapshot(path)[1]["event_clock"]
    return clock is not None and stats["event_clock"] - clock >= event_s


def shard_offsets(addr: str, topic: str) -> dict[int, int]:
    return {int(p): o for p, o in shard_stats(addr)["offsets"].get(topic, {}).items()}


def snapshot_rows(addr: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per table, (ids, last update event time) of every row: a fresh snapshot of the shard, read back."""
    host, port = addr.rsplit(":", 1)
    with ParamServerClient(host, int(port)) as client:
        arrays, _ = read_snapshot(client.snapshot())
    tables = {c.name for c in DEFAULT_TABLES}
    return {t: (arrays[f"sparse.{t}.keys"], arrays[f"sparse.{t}.last_ts"]) for t in tables}


def agreement(rows: dict, reference: dict, shard: int, num_shards: int, window: tuple[float, float],
              tolerance_s: float) -> tuple[float, float, int]:
    """How many of the reference's rows (of ``shard``) ``rows`` holds with the same last update time.

    Returns (share over all rows, share over the rows whose reference update time falls in
    ``window``, number of those). Same = present and within ``tolerance_s`` of event time (an
    update's time is its micro-batch's latest event, so batch boundaries move it a little); for
    the rows in ``window`` also updated after ``window[0]`` (the restored snapshot's clock), so a
    row that kept its snapshot state does not pass for a retrained one.
    """
    hit = total = stake_hit = stake = 0
    detail = {}
    for table, (ref_ids, ref_ts) in reference.items():
        keep = shard_of(ref_ids, num_shards) == shard if num_shards > 1 else np.ones(ref_ids.size, dtype=bool)
        ref_ids, ref_ts = ref_ids[keep], ref_ts[keep]
        ids, ts = rows[table]
        order = np.argsort(ids)
        where = np.clip(np.searchsorted(ids[order], ref_ids), 0, max(ids.size - 1, 0))
        found = (ids[order][where] == ref_ids) if ids.size else np.zeros(ref_ids.size, dtype=bool)
        same = found & (np.abs(ts[order][where] - ref_ts) <= tolerance_s) if ids.size else found
        at_stake = (ref_ts > window[0] + STAKE_MARGIN_S) & (ref_ts <= window[1])
        retrained = same & (ts[order][where] > window[0]) if ids.size else same
        hit, total = hit + int(same.sum()), total + ref_ids.size
        stake_hit, stake = stake_hit + int(retrained[at_stake].sum()), stake + int(at_stake.sum())
        detail[table] = (ref_ids.size, int((~found).sum()), int((found & ~same).sum()))
    print(f"  rows (in the reference, missing, stale) per table: {detail}", flush=True)
    return hit / max(total, 1), stake_hit / max(stake, 1), stake


def wait(condition, timeout_s: float, what: str) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            print(f"gave up waiting for {what} after {timeout_s:.0f} s", flush=True)
            return False
        time.sleep(0.25)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=800.0, help="events per second")
    parser.add_argument("--bad", type=int, default=60)
    parser.add_argument("--snapshot-every", type=float, default=6.0)
    args = parser.parse_args()
    # Every shard admits IDs at their first push: admission counts pushes (the trainer sends each ID
    # once per batch), so with admit_after > 1 whether an ID gets a row depends on how its events fell
    # into micro-batches, which differs between any two runs.
    tables = tables_to_json(tuple(replace(t, admit_after=1) for t in DEFAULT_TABLES))
    os.environ.update({"RTREC_LOG_IMPRESSIONS": "false", "RTREC_SNAPSHOT_INTERVAL_S": str(args.snapshot_every),
                       "RTREC_JOIN_WINDOW_S": "30", "RTREC_LOG_LEVEL": "WARNING", "RTREC_PS_TABLES": tables})
    settings = load_settings(log_level="WARNING")
    events = simulated_events(args.events, seed=3)
    bad = bad_messages(args.bad)
    n_users = 20_000
    print(f"{len(events):,} simulated events and {len(bad)} bad ones at {args.rate:.0f}/s", flush=True)
    workdir = Path(os.environ["FAULTS_WORKDIR"]) if os.environ.get("FAULTS_WORKDIR") else None
    with LocalStack(settings, StackOptions(simulate=False, workers=0, param_servers=2, workdir=workdir)) as stack:
        db = stack.info.redis.rsplit("/", 1)[0]
        shards = list(stack.info.param_server)
        shard_proc = next(c for c in stack.children if c.name == "param-server-1")
        shard1 = Component(stack, "param-server-1", "param-server", {
            "RTREC_PS_SHARD": "1", "RTREC_PS_NUM_SHARDS": "2", "RTREC_PS_PORT": shards[1].rsplit(":", 1)[1],
            "RTREC_SNAPSHOT_DIR": str(stack.workdir / "snapshots-1")})
        shard1.process = shard_proc
        serving_proc = next(c for c in stack.children if c.name == "serving")
        serving = Component(stack, "serving", "serve", {"RTREC_HTTP_PORT": stack.info.serving.rsplit(":", 1)[1]})
        serving.process = serving_proc
        worker = Component(stack, "worker", "worker", {"RTREC_DATA_DIR": str(stack.workdir / "w"),
                                                       "RTREC_WORKER_GROUP": "faults"})
        refs = []
        for name, n in (("ref-a", 1), ("ref-b", 2)):
            shard = Component(stack, f"{name}-shard", "param-server", {
                "RTREC_PS_SHARD": "0", "RTREC_PS_NUM_SHARDS": "1", "RTREC_PS_PORT": "0",
                "RTREC_SNAPSHOT_DIR": str(stack.workdir / f"snapshots-{name}")})
            addr = shard.start()["param_server"]
            ensure_topics(stack.info.kafka, [f"{name}.dlq"], settings.topic_partitions)
            refs.append((addr, Component(stack, f"{name}-worker", "worker", {
                "RTREC_DATA_DIR": str(stack.workdir / name), "RTREC_WORKER_GROUP": name,
                "RTREC_DLQ_TOPIC": f"{name}.dlq",
                "RTREC_PARAM_SERVERS": addr, "RTREC_REDIS_URL": f"{db}/{n}"}), shard))
        components = [worker] + [w for _, w, _ in refs]
        for component in components:
            component.start()
        print("stack, worker and two reference workers ready", flush=True)

        progress = [0]
        producer = threading.Thread(target=produce, args=(stack.info.kafka, settings.actions_topic, events, bad,
                                                          args.rate, progress), daemon=True)
        probe = ServingProbe(stack.info.serving, n_users)
        prober = threading.Thread(target=probe.run, daemon=True)
        started = time.monotonic()
        producer.start()
        prober.start()
        duration = len(events) / args.rate
        kills = 0
        plan = [(0.2, "worker", worker), (0.45, "parameter-server shard 1", shard1), (0.7, "serving", serving)]
        fault_start = None
        downtime: dict[str, tuple[float, float]] = {}
        for at, name, component in plan:
            while time.monotonic() - started < at * duration:
                time.sleep(0.1)
            if component is shard1:  # kill it while it trains, a while after its last snapshot
                wait(lambda: trained_since_snapshot(shards[1], 3 * STAKE_MARGIN_S), 30, "shard 1 training since its snapshot")
                clock_at_kill = shard_stats(shards[1])["event_clock"]
            t, sent = time.monotonic(), progress[0]
            fault_start = fault_start or t
            component.kill()
            kills += 1
            component.start()
            downtime[name] = (t, time.monotonic())
            if component is shard1:
                restored_from = shard_stats(shards[1])["snapshot"]["path"]
                clock_at_snapshot = read_snapshot(restored_from)[1]["event_clock"]
            print(f"t={t - started:5.1f} s: killed {name} (SIGKILL) at event {sent:,}; "
                  f"back after {time.monotonic() - t:.1f} s", flush=True)
        producer.join()
        print(f"produced in {time.monotonic() - started:.1f} s", flush=True)
        wait(lambda: applied_everywhere([f"{db}/0", f"{db}/1", f"{db}/2"], len(events)), 300, "features")
        ends = topic_ends(stack.info.kafka, settings.actions_topic)
        wait(lambda: all(shard_offsets(a, settings.actions_topic) == ends for a in shards + [r[0] for r in refs]),
             120, "training up to the end of the topic")
        time.sleep(2.0)
        probe.stop.set()
        prober.join()
        fault_end = time.monotonic()

        lost, doubled = feature_errors(f"{db}/0", events)
        ref_lost, ref_doubled = feature_errors(f"{db}/1", events)
        raws = dead_letters(stack.info.kafka, settings.dlq_topic)
        expected_raw = {b.decode("utf-8", errors="replace") for b in bad}
        dlq_seen = len(expected_raw & set(raws))
        rows_a, rows_b = snapshot_rows(refs[0][0]), snapshot_rows(refs[1][0])
        window = (clock_at_snapshot, clock_at_kill)
        fault_all, fault_stake, stake = agreement(snapshot_rows(shards[1]), rows_a, 1, 2, window, TOLERANCE_S)
        ref_all, ref_stake, _ = agreement(rows_b, rows_a, 1, 2, window, TOLERANCE_S)
        replays = scrape(worker.ready["metrics"]).get("rtrec_worker_recovery_replays_total", 0.0)
        replayed = scrape(worker.ready["metrics"]).get("rtrec_worker_recovery_replayed_events_total", 0.0)
        print(f"  the worker replayed {replayed:,.0f} events in {replays:.0f} replay(s); restored snapshot at "
              f"event time {window[0] - T0:.1f} s, killed at {window[1] - T0:.1f} s", flush=True)
        recovered = stake > 0 and fault_all >= ref_all - 0.01 and fault_stake >= ref_stake - 0.01
        serving_down = downtime["serving"]
        in_faults = [(t, ok) for t, ok in probe.results if fault_start <= t <= fault_end]
        failures = sum(1 for _, ok in in_faults if not ok)
        outside_restart = sum(1 for t, ok in in_faults if not ok and not serving_down[0] <= t <= serving_down[1] + 1.0)
        print(f"features: lost {lost}, doubled {doubled} (reference run: {ref_lost}, {ref_doubled}); "
              f"dead letters {dlq_seen} of {len(bad)} ({len(raws)} messages)", flush=True)
        print(f"restored shard vs no-fault reference A: {fault_all:.4f} of its rows agree "
              f"(reference B: {ref_all:.4f}); of the {stake:,} rows last updated between the restored "
              f"snapshot and the kill: {fault_stake:.4f} (reference B: {ref_stake:.4f})", flush=True)
        print(f"serving: {failures} failed of {len(in_faults)} requests during the faults, {outside_restart} "
              f"of them outside serving's own restart", flush=True)
        for component in components + [shard for _, _, shard in refs] + [serving, shard1]:
            component.stop()
    report("faults", {
        "events_sent": len(events), "events_lost": lost, "duplicates_applied": doubled, "kills": kills,
        "dlq_expected": len(bad), "dlq_seen": dlq_seen, "dlq_messages": len(raws),
        "model_recovered": bool(recovered), "rows_agreeing": round(fault_all, 4),
        "reference_rows_agreeing": round(ref_all, 4), "rows_at_stake": stake,
        "rows_at_stake_agreeing": round(fault_stake, 4), "reference_rows_at_stake_agreeing": round(ref_stake, 4),
        "serving_errors_during_faults": failures, "serving_errors_outside_its_restart": outside_restart,
        "serving_requests_during_faults": len(in_faults),
    })


if __name__ == "__main__":
    main()
