"""Faults: a stream with bad events in it, while every component of the stack is killed with SIGKILL
and restarted -- a worker, a parameter-server shard, serving, Redis and the broker; then what was
lost, doubled, dead-lettered and recovered, against a no-fault reference run.

The stack is the durable one (``LocalStack`` with a data folder, what ``rtrec up --data-dir``
runs): the broker keeps its log and the consumer groups' offsets in its object store, Redis an
append-only file, the shards their snapshots. One worker consumes a simulated stream produced at
a steady rate, with ``--bad`` invalid messages mixed in. During it, one after the other (at evenly
spaced points between 15 % and 80 % of the events sent; each restart is waited for):

* shard 1 writes a snapshot (as its periodic snapshots do; they are ``--snapshot-every`` s apart,
  by default longer than a run, so none falls between) and is killed and restarted once it trained
  ``3 * STAKE_MARGIN_S`` event seconds past it: it restores the snapshot, and the worker notices
  the new epoch and retrains everything after the snapshot into it. (Killed on a clock instead, a
  slow worker on a busy machine trained too little between the periodic snapshots and the kill to
  leave any row at stake);
* serving is killed and restarted on the same port while a client keeps asking it for
  recommendations;
* Redis is killed and restarted on its append-only file: the batch in flight fails and is retried;
  had the file lost writes, the worker's next batch would find the store's applied offsets behind
  the batch and re-apply the gap from Kafka first (``feature_gaps_refilled`` counts such gaps);
* the broker is killed and restarted on its object store: the producer's sends wait and are
  retried, the worker reconnects and rejoins its group at the committed offsets;
* the worker is killed and restarted (last: it takes longest to start, ~20-40 s on a busy 2-core
  machine): it resumes from its group's committed offsets, re-primes its joiner and, per
  partition as it first consumes it, replays into any shard whose offsets lag behind.

``--kill`` picks which of them (default: all five, in that order, spread over the replay).

The no-fault reference is a second stack (broker and Redis in memory, never killed) that the
producer sends every message to as well, in the same order. On it two reference workers (own
consumer groups, own Redis databases, own single-shard parameter servers) consume the same stream
at the same time.

What is measured:

* ``events_lost`` / ``duplicates_applied``: per simulated user and action, the 24 h counts in
  Redis against the events sent (a missing effect counts as lost, a doubled one as duplicate).
* ``features_equal_reference``: the fault run's feature store against reference A's, key by key:
  every key of every user and item and the stream-wide ones (whatever features/keys.py lays out:
  the window counts of users, items, (user, category) pairs and the whole stream, users' last
  positive action, recent and session lists, co-visitation sets, the catalogue, the watermark,
  the trending and popular rankings) must exist in both with equal values. Compared exactly but
  for three things that follow how events fell into write calls in either run, not which were
  applied: the ranking scores (sums of decayed counts added in another
  order: equal to 1e-12 relative; a count lost or doubled moves one by far more), the catalogue's
  change log (compared as its set of items) and its sequence number (not compared). The event_id
  marks (``seen:*``) are left out: they expire after ``RTREC_DEDUPE_WINDOW_S`` of wall-clock time.
  The applied Kafka offsets are positions in two brokers' logs; each store's must equal the end of
  its own topic (``applied_offsets_at_topic_end``). ``reference_features_equal`` is the same
  comparison of reference B against A: it shows that two no-fault runs do agree exactly.
* ``dlq_expected`` / ``dlq_seen``: the bad messages sent / the distinct ones found in
  ``actions.dlq`` (``dlq_messages`` counts the dead letters including re-deliveries).
* ``model_recovered``: shard 1 against the references. Row *values* are not comparable between
  runs: micro-batch boundaries follow timing, IDs are deduplicated per push, and Adagrad's first
  steps are ``lr * sign(g)`` per coordinate, so two no-fault runs already differ by ~100 %
  (relative error of the learned parts ``row - initial row``, 1.08, seen in a first version of
  this benchmark). Admission is set to the first push on every shard here, as it counts pushes,
  not examples, and experience replay is off (it retrains earlier batches drawn at random, as
  many as fit under 2,048 rows, so it moves last-update times by chance; with it on, two no-fault
  runs on a busy machine agreed on 0.63 of the rows). What a restored shard that lost updates
  gets wrong is *which* rows it holds and *when* each was last trained. So for every row of
  reference A that routes to shard 1, the fault run's shard 1 must hold it, last updated no
  earlier than in A (within ``TOLERANCE_S``: an update's time is its batch's latest event). A
  later update agrees: lost updates leave a row missing or older, never newer, and a worker that
  catches up a backlog after its restart stamps rows later (its batches span unevenly fetched
  partitions): ``rows_later_than_reference`` counts those. ``rows_at_stake_agreeing`` is the
  share of agreeing rows among those whose last update in the reference falls between the
  restored snapshot (plus ``STAKE_MARGIN_S``) and the kill -- those a restore without replay
  leaves stale or missing, so for them the fault run's update must also be later than the
  snapshot -- and ``rows_missing`` counts the reference's rows shard 1 lacks. Recovered: shard
  1 lacks no more rows than reference B does, and its share at stake is within 0.01 of B's (the
  noise floor of this run). With the worker's replay switched off (tried once by hand, in an
  earlier version that killed only a worker, the shard and serving) the run gave 588 rows
  missing, 0.043 agreeing of the 561 at stake (reference B: none missing, 1.0): not recovered;
  a worker that replayed only the partitions of its first batch after its own restart left 405
  rows missing (69 users, 336 items).
  ``rows_agreeing`` (the share over all rows) is reported beside reference B's but not judged:
  outside the stake window a restore changes nothing, and there the share measures how rows were
  stamped, which moves with load -- B against A ranged from 0.928 to 1.0 in runs on a busy
  2-core machine, and a run whose worker restarted into a backlog was once 0.004 under B's 0.01
  floor with every row at stake retrained and none missing.
* ``serving_errors_during_faults``: failed /recommend requests (errors, 5xx, refused
  connections) while the faults happened; serving is down while it restarts, so this is not 0.
  ``serving_errors_outside_its_restart`` leaves out serving's own restart (plus 1 s),
  ``serving_errors_outside_restarts`` every component's.
* ``kills``: the components killed, in order; ``downtime_s``: seconds from each kill until the
  component was back (ready line, or port open and data loaded).

Impression logging of serving is off here so that the events in Kafka are exactly those sent.

    python -m benchmarks.faults [--events 30000] [--rate 400] [--bad 60] [--snapshot-every 600]
                                [--kill shard1,serving,redis,broker,worker]

``FAULTS_WORKDIR=DIR`` keeps the stacks' data, logs and snapshots in DIR (it must not hold an
earlier run's).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import redis
from kafka import KafkaConsumer, TopicPartition

from benchmarks.common import report
from benchmarks.ingest import T0, simulated_events
from features.config import FeatureConfig
from features.reader import FeatureReader
from features.store_state import same_item_vector, store_state as features_store_state
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
#: What can be killed, in the order it is (``--kill``).
KILLABLE = ("shard1", "serving", "redis", "broker", "worker")
#: Share of the events sent over which the kills are spread (one at each of evenly spaced points). The
#: worker comes last: it takes longest to start (~40 s on a busy 2-core machine), and the kills
#: after a restart wait for it.
FIRST_KILL, LAST_KILL = 0.15, 0.8


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
    """A restartable ``rtrec <command>`` child that prints a ready line: one of a stack's own
    children (same command, environment, ports and log on restart) or one started here."""

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        self.ready: dict = {}

    @classmethod
    def command(cls, stack: LocalStack, name: str, command: str, extra: dict[str, str]) -> "Component":
        env = stack.child_env(RTREC_METRICS_PORT=str(free_port()), **extra)
        return cls(ManagedProcess(name, [sys.executable, "-m", "rtrec.cli", command], stack.workdir / f"{name}.log",
                                  env=env, stdout=subprocess.PIPE))

    @classmethod
    def of(cls, stack: LocalStack, name: str) -> "Component":
        return cls(next(c for c in stack.children if c.name == name))

    def start(self) -> dict:
        self.process.start()
        self.ready = read_ready_line(self.process, 120)
        return self.ready

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hook, no final snapshot, no commit."""
        self.process.kill()

    def stop(self) -> None:
        self.process.stop(grace_s=10)


@dataclass
class Fault:
    """One planned kill: what to kill and how to start it again (returns once it is ready)."""

    name: str
    kill: Callable[[], None]
    restart: Callable[[], object]


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


def produce(targets: list[tuple[str, str]], events: list[Event], bad: list[bytes], rate: float,
            progress: list[int], errors: list[str]) -> None:
    """Send the events (with the bad messages spread among them) at ``rate`` per second, each message
    to every (bootstrap, topic) of ``targets`` in the same order; a delivery that failed in the end
    is recorded in ``errors``."""
    rng = random.Random(7)
    slots = sorted(rng.sample(range(len(events)), len(bad)))
    bad_at = dict(zip(slots, bad))
    start = time.monotonic()
    producers = [EventProducer(bootstrap, topic, linger_ms=5) for bootstrap, topic in targets]
    try:
        for n, event in enumerate(events):
            for producer in producers:
                if n in bad_at:
                    producer.send_raw(f"bad{n}", bad_at[n])
                producer.send(event)
            progress[0] = n + 1
            ahead = start + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    finally:
        for producer, (bootstrap, _) in zip(producers, targets):
            try:
                producer.close()
            except Exception as exc:  # noqa: BLE001 -- reported; the lost events then show as lost
                errors.append(f"{bootstrap}: {exc!r}")


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


def store_state(url: str, prefix: str) -> dict[str, object]:
    """Every key of the feature store under ``prefix`` but the event_id marks, with its value by type."""
    return {prefix + k: v for k, v in features_store_state(redis.Redis.from_url(url), prefix).items()}


def key_kind(key: str, prefix: str) -> str:
    """What a feature-store key holds, for the report: its name up to the user or item it is of.

    >>> [key_kind(k, "rtrec:") for k in ("rtrec:w:u:u7\x1fclick", "rtrec:w:g:\x1fclick", "rtrec:cov:i:3", "rtrec:wm")]
    ['w:u', 'w:g', 'cov', 'wm']
    """
    rest = key[len(prefix):].split("\x1f")[0]
    parts = rest.split(":")
    if parts[0] in ("recent", "sess", "cov", "seen") and len(parts) > 1:
        return parts[0]
    return ":".join(parts[:2]) if len(parts) > 2 else rest


def compare_stores(got: dict[str, object], want: dict[str, object], prefix: str) -> tuple[Counter, list[str]]:
    """Compare two feature stores (:func:`store_state`) key by key; (keys compared by kind, keys that
    differ or exist in one store only). Rules in the module docstring."""
    by_members = {f"{prefix}items:log"}
    summed = {f"{prefix}trending", f"{prefix}popular"}
    skipped = {f"{prefix}items:seq", f"{prefix}offsets"}
    compared: Counter = Counter()
    differing = sorted((set(got) ^ set(want)) - skipped)
    for key in sorted(set(got) & set(want) - skipped):
        compared[key_kind(key, prefix)] += 1
        a, b = got[key], want[key]
        if key in by_members:
            same = sorted(m for m, _ in a) == sorted(m for m, _ in b)  # type: ignore[union-attr]
        elif key in summed:
            scores = dict(b)  # type: ignore[arg-type]
            same = len(a) == len(scores) and all(  # type: ignore[arg-type]
                m in scores and np.isclose(s, scores[m], rtol=1e-12, atol=0) for m, s in a)  # type: ignore[union-attr]
        elif key.startswith(f"{prefix}v:i:"):
            same = same_item_vector(a, b)  # type: ignore[arg-type]
        else:
            same = a == b
        if not same:
            differing.append(key)
    return compared, differing


def applied_offsets(url: str, prefix: str, topic: str) -> dict[int, int]:
    raw = redis.Redis.from_url(url).hgetall(f"{prefix}offsets")
    return {int(f.decode().rpartition(":")[2]): int(o) for f, o in raw.items() if f.decode().rpartition(":")[0] == topic}


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


def snapshot_now(addr: str) -> str:
    """Have the shard write a snapshot now, as its periodic ones do; its path."""
    host, port = addr.rsplit(":", 1)
    with ParamServerClient(host, int(port)) as client:
        return client.snapshot()


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
              tolerance_s: float) -> tuple[float, float, int, int, int]:
    """How many of the reference's rows (of ``shard``) ``rows`` holds, last updated no earlier.

    Returns (share over all rows, share over the rows whose reference update time falls in
    ``window``, number of those, number of rows updated later than in the reference, number of the
    reference's rows missing). Agreeing =
    present, and last updated no more than ``tolerance_s`` of event time before the reference's
    update (an update's time is its micro-batch's latest event, so batch boundaries move it); for
    the rows in ``window`` also updated after ``window[0]`` (the restored snapshot's clock), so a
    row that kept its snapshot state does not pass for a retrained one. A row updated *later*
    than in the reference agrees: lost updates leave a row missing or older, never newer, while
    a worker catching up a backlog stamps rows later (its micro-batches span partitions that were
    fetched unevenly: one batch's latest event can be far ahead of the partition a row's example
    came from) -- seen for 499 of 3,695 item rows after a worker restart, 0 in the reference.
    """
    hit = total = stake_hit = stake = later_rows = missing = 0
    detail = {}
    for table, (ref_ids, ref_ts) in reference.items():
        keep = shard_of(ref_ids, num_shards) == shard if num_shards > 1 else np.ones(ref_ids.size, dtype=bool)
        ref_ids, ref_ts = ref_ids[keep], ref_ts[keep]
        ids, ts = rows[table]
        order = np.argsort(ids)
        where = np.clip(np.searchsorted(ids[order], ref_ids), 0, max(ids.size - 1, 0))
        found = (ids[order][where] == ref_ids) if ids.size else np.zeros(ref_ids.size, dtype=bool)
        same = found & (ts[order][where] >= ref_ts - tolerance_s) if ids.size else found
        at_stake = (ref_ts > window[0] + STAKE_MARGIN_S) & (ref_ts <= window[1])
        retrained = same & (ts[order][where] > window[0]) if ids.size else same
        hit, total = hit + int(same.sum()), total + ref_ids.size
        stake_hit, stake = stake_hit + int(retrained[at_stake].sum()), stake + int(at_stake.sum())
        later = found & (ts[order][where] > ref_ts + tolerance_s) if ids.size else found
        later_rows += int(later.sum())
        missing += int((~found).sum())
        detail[table] = (ref_ids.size, int((~found).sum()), int((found & ~same).sum()), int(later.sum()),
                         int(at_stake.sum()), int((at_stake & ~found).sum()), int((at_stake & found & ~retrained).sum()))
    print(f"  rows (in the reference, missing, older, later; at stake, missing, not retrained) per table: {detail}",
          flush=True)
    return hit / max(total, 1), stake_hit / max(stake, 1), stake, later_rows, missing


def wait(condition, timeout_s: float, what: str) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            print(f"gave up waiting for {what} after {timeout_s:.0f} s", flush=True)
            return False
        time.sleep(0.25)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=400.0, help="events per second")
    parser.add_argument("--bad", type=int, default=60)
    parser.add_argument("--snapshot-every", type=float, default=600.0,
                        help="seconds between the shards' periodic snapshots")
    parser.add_argument("--kill", default=",".join(KILLABLE), help=f"comma-separated, of {', '.join(KILLABLE)}")
    args = parser.parse_args()
    kills = [k for k in KILLABLE if k in args.kill.split(",")]
    if unknown := set(args.kill.split(",")) - set(KILLABLE) - {""}:
        parser.error(f"cannot kill {sorted(unknown)}")
    # Experience replay is off: it retrains earlier batches drawn at random, and how many it draws
    # depends on batch sizes (it stays under 2,048 rows), so it moves rows' last update times by
    # chance: with it on, two no-fault runs on a busy machine agreed on 0.63 of shard 1's rows.
    # Every shard admits IDs at their first push: admission counts pushes (the trainer sends each ID
    # once per batch), so with admit_after > 1 whether an ID gets a row depends on how its events fell
    # into micro-batches, which differs between any two runs.
    tables = tables_to_json(tuple(replace(t, admit_after=1) for t in DEFAULT_TABLES))
    os.environ.update({"RTREC_LOG_IMPRESSIONS": "false", "RTREC_SNAPSHOT_INTERVAL_S": str(args.snapshot_every),
                       "RTREC_JOIN_WINDOW_S": "30", "RTREC_LOG_LEVEL": "WARNING", "RTREC_PS_TABLES": tables,
                       "RTREC_REPLAY_BATCHES": "0"})
    settings = load_settings(log_level="WARNING")
    prefix = FeatureConfig().prefix
    events = simulated_events(args.events, seed=3)
    bad = bad_messages(args.bad)
    n_users = 20_000
    print(f"{len(events):,} simulated events and {len(bad)} bad ones at {args.rate:.0f}/s; killing {kills}", flush=True)
    kept = os.environ.get("FAULTS_WORKDIR")
    root = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="rtrec-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with LocalStack(settings, StackOptions(components=False, simulate=False,
                                               workdir=root / "reference" if kept else None)) as ref_stack, \
                LocalStack(settings, StackOptions(simulate=False, workers=0, param_servers=2,
                                                  data_dir=root / "data")) as stack:
            figures = run(args, kills, settings, prefix, events, bad, n_users, stack, ref_stack)
    finally:
        if not kept:
            shutil.rmtree(root, ignore_errors=True)
    report("faults", figures)


def run(args: argparse.Namespace, kills: list[str], settings, prefix: str, events: list[Event],  # type: ignore[no-untyped-def]
        bad: list[bytes], n_users: int, stack: LocalStack, ref_stack: LocalStack) -> dict:
    topic = settings.actions_topic
    shards = list(stack.info.param_server)
    shard1, serving = Component.of(stack, "param-server-1"), Component.of(stack, "serving")
    worker = Component.command(stack, "worker", "worker", {"RTREC_DATA_DIR": str(stack.state_dir / "worker"),
                                                           "RTREC_WORKER_GROUP": "faults"})
    ref_db = ref_stack.info.redis.rsplit("/", 1)[0]
    refs = []
    for n, name in enumerate(("ref-a", "ref-b")):
        shard = Component.command(ref_stack, f"{name}-shard", "param-server", {
            "RTREC_PS_SHARD": "0", "RTREC_PS_NUM_SHARDS": "1", "RTREC_PS_PORT": "0",
            "RTREC_SNAPSHOT_DIR": str(ref_stack.workdir / f"snapshots-{name}")})
        addr = shard.start()["param_server"]
        ensure_topics(ref_stack.info.kafka, [f"{name}.dlq"], settings.topic_partitions)
        refs.append((addr, Component.command(ref_stack, f"{name}-worker", "worker", {
            "RTREC_DATA_DIR": str(ref_stack.workdir / name), "RTREC_WORKER_GROUP": name,
            "RTREC_DLQ_TOPIC": f"{name}.dlq", "RTREC_PARAM_SERVERS": addr, "RTREC_REDIS_URL": f"{ref_db}/{n}"}),
            shard))
    components = [worker] + [w for _, w, _ in refs]
    try:
        for component in components:
            component.start()
        print("durable stack, worker, reference stack and two reference workers ready", flush=True)
        return faults_run(args, kills, topic, prefix, events, bad, n_users, stack, ref_stack, shards, shard1,
                          serving, worker, refs)
    finally:  # all at once: a busy worker may take its 10 s of grace
        stopping = [threading.Thread(target=c.stop) for c in components + [shard for _, _, shard in refs]]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()


def faults_run(args, kills, topic, prefix, events, bad, n_users, stack, ref_stack, shards, shard1,  # type: ignore[no-untyped-def]
               serving, worker, refs) -> dict:
    faults = {
        "worker": Fault("worker", worker.kill, worker.start),
        "shard1": Fault("parameter-server shard 1", shard1.kill, shard1.start),
        "serving": Fault("serving", serving.kill, serving.start),
        "redis": Fault("redis", stack.redis.process.kill, stack.redis.start),
        "broker": Fault("broker", stack.broker.process.kill, stack.broker.start),
    }
    fault_redis = stack.info.redis
    ref_db = ref_stack.info.redis.rsplit("/", 1)[0]
    ref_redis = [f"{ref_db}/0", f"{ref_db}/1"]
    progress, send_errors = [0], []
    producer = threading.Thread(target=produce, args=([(stack.info.kafka, topic), (ref_stack.info.kafka, topic)],
                                                      events, bad, args.rate, progress, send_errors), daemon=True)
    probe = ServingProbe(stack.info.serving, n_users)
    prober = threading.Thread(target=probe.run, daemon=True)
    started = time.monotonic()
    producer.start()
    prober.start()
    fault_start = None
    downtime: dict[str, tuple[float, float]] = {}
    clock_at_kill = clock_at_snapshot = None
    for n, key in enumerate(kills):
        at = FIRST_KILL + (LAST_KILL - FIRST_KILL) * n / max(len(kills) - 1, 1)
        while progress[0] < at * len(events) and producer.is_alive():
            time.sleep(0.1)
        if key == "shard1":  # a snapshot now, then kill it while it trains, a while after the snapshot
            snapshot_now(shards[1])
            wait(lambda: trained_since_snapshot(shards[1], 3 * STAKE_MARGIN_S), 300, "shard 1 training since its snapshot")
            clock_at_kill = shard_stats(shards[1])["event_clock"]
        fault = faults[key]
        t, sent = time.monotonic(), progress[0]
        fault_start = fault_start or t
        fault.kill()
        fault.restart()
        downtime[key] = (t, time.monotonic())
        if key == "shard1":
            restored_from = shard_stats(shards[1])["snapshot"]["path"]
            clock_at_snapshot = read_snapshot(restored_from)[1]["event_clock"]
        print(f"t={t - started:5.1f} s: killed {fault.name} (SIGKILL) at event {sent:,}; "
              f"back after {time.monotonic() - t:.1f} s", flush=True)
    producer.join()
    print(f"produced in {time.monotonic() - started:.1f} s" + (f"; NOT DELIVERED: {send_errors}" if send_errors else ""),
          flush=True)
    wait(lambda: applied_everywhere([fault_redis] + ref_redis, len(events)), 300, "features")
    ends = topic_ends(stack.info.kafka, topic)
    ref_ends = topic_ends(ref_stack.info.kafka, topic)
    wait(lambda: all(shard_offsets(a, topic) == ends for a in shards)
         and all(shard_offsets(a, topic) == ref_ends for a, _, _ in refs), 120, "training up to the end of the topic")
    time.sleep(2.0)
    probe.stop.set()
    prober.join()
    fault_end = time.monotonic()

    lost, doubled = feature_errors(fault_redis, events)
    ref_lost, ref_doubled = feature_errors(ref_redis[0], events)
    state, ref_a, ref_b = (store_state(url, prefix) for url in [fault_redis] + ref_redis)
    compared, differing = compare_stores(state, ref_a, prefix)
    _, ref_differing = compare_stores(ref_b, ref_a, prefix)
    at_end = applied_offsets(fault_redis, prefix, topic) == ends
    ref_at_end = all(applied_offsets(url, prefix, topic) == ref_ends for url in ref_redis)
    features_equal = not differing and sum(compared.values()) > 0
    print(f"feature store against reference A: {sum(compared.values()):,} keys compared "
          f"({', '.join(f'{k} {v:,}' for k, v in sorted(compared.items()))}); {len(differing)} differ"
          + (f", e.g. {differing[:5]}" if differing else "") + f"; reference B: {len(ref_differing)} differ",
          flush=True)
    print(f"applied offsets at the end of the topic: {at_end} ({sum(ends.values()):,} messages; "
          f"references: {ref_at_end}, {sum(ref_ends.values()):,} messages)", flush=True)
    raws = dead_letters(stack.info.kafka, stack.settings.dlq_topic)
    expected_raw = {b.decode("utf-8", errors="replace") for b in bad}
    dlq_seen = len(expected_raw & set(raws))
    rows_a, rows_b = snapshot_rows(refs[0][0]), snapshot_rows(refs[1][0])
    if clock_at_snapshot is not None and clock_at_kill is not None:
        window = (clock_at_snapshot, clock_at_kill)
    else:  # shard 1 was not killed: no rows at stake
        window = (float("inf"), float("inf"))
    fault_all, fault_stake, stake, fault_later, fault_missing = agreement(snapshot_rows(shards[1]), rows_a, 1, 2, window, TOLERANCE_S)
    ref_all, ref_stake, _, ref_later, ref_missing = agreement(rows_b, rows_a, 1, 2, window, TOLERANCE_S)
    metrics = scrape(worker.ready["metrics"])
    replays = metrics.get("rtrec_worker_recovery_replays_total", 0.0)
    replayed = metrics.get("rtrec_worker_recovery_replayed_events_total", 0.0)
    gaps = metrics.get("rtrec_worker_recovery_feature_gaps_total", 0.0)
    gap_events = metrics.get("rtrec_worker_recovery_feature_events_total", 0.0)
    print(f"  the worker replayed {replayed:,.0f} events in {replays:.0f} replay(s) into restored shards and "
          f"re-applied {gap_events:,.0f} events of {gaps:.0f} feature-store gap(s) since its last start", flush=True)
    if "shard1" in kills:
        print(f"  restored snapshot at event time {window[0] - T0:.1f} s, killed at {window[1] - T0:.1f} s", flush=True)
    # Recovered: no row of the reference missing (more than in reference B), and the rows at stake
    # retrained as in reference B. rows_agreeing is reported, not judged: see the module docstring.
    if "shard1" in kills:
        recovered = stake > 0 and fault_missing <= ref_missing and fault_stake >= ref_stake - 0.01
    else:
        recovered = fault_missing <= ref_missing
    in_faults = [(t, ok) for t, ok in probe.results if fault_start is not None and fault_start <= t <= fault_end]
    failures = sum(1 for _, ok in in_faults if not ok)

    def outside(windows: list[tuple[float, float]]) -> int:
        return sum(1 for t, ok in in_faults if not ok and not any(a <= t <= b + 1.0 for a, b in windows))

    own = outside([downtime["serving"]] if "serving" in downtime else [])
    outside_all = outside(list(downtime.values()))
    print(f"features: lost {lost}, doubled {doubled} (reference run: {ref_lost}, {ref_doubled}); "
          f"dead letters {dlq_seen} of {len(bad)} ({len(raws)} messages)", flush=True)
    print(f"restored shard vs no-fault reference A: {fault_all:.4f} of its rows agree "
          f"(reference B: {ref_all:.4f}); of the {stake:,} rows last updated between the restored "
          f"snapshot and the kill: {fault_stake:.4f} (reference B: {ref_stake:.4f})", flush=True)
    print(f"serving: {failures} failed of {len(in_faults)} requests during the faults, {own} of them outside "
          f"serving's own restart, {outside_all} outside every restart", flush=True)
    return {
        "events_sent": len(events), "events_lost": lost, "duplicates_applied": doubled, "kills": kills,
        "downtime_s": {k: round(b - a, 1) for k, (a, b) in downtime.items()},
        "features_equal_reference": bool(features_equal), "feature_keys_compared": sum(compared.values()),
        "feature_keys_differing": len(differing), "reference_features_equal": not ref_differing,
        "applied_offsets_at_topic_end": bool(at_end), "feature_gaps_refilled": int(gaps),
        "undelivered_sends": len(send_errors),
        "dlq_expected": len(bad), "dlq_seen": dlq_seen, "dlq_messages": len(raws),
        "model_recovered": bool(recovered), "rows_agreeing": round(fault_all, 4),
        "reference_rows_agreeing": round(ref_all, 4), "rows_at_stake": stake,
        "rows_at_stake_agreeing": round(fault_stake, 4), "reference_rows_at_stake_agreeing": round(ref_stake, 4),
        "rows_missing": fault_missing, "reference_rows_missing": ref_missing,
        "rows_later_than_reference": fault_later, "reference_rows_later": ref_later,
        "serving_errors_during_faults": failures, "serving_errors_outside_its_restart": own,
        "serving_errors_outside_restarts": outside_all, "serving_requests_during_faults": len(in_faults),
    }


if __name__ == "__main__":
    main()
