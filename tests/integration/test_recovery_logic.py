"""Recovery logic without servers: in-process shards, a Kafka stand-in, the real pipeline and trainer.

A shard restored from an older state (new epoch, ``restored_offsets``) gets every event after its
snapshot trained again, and only it: the other shard is not trained twice.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Mapping

import numpy as np
import pytest

from features.ids import slot_of
from features.writer import WriteResult
from param_server.config import EmbeddingConfig
from param_server.store import ParamStore
from param_server.sharding import ShardedClient
from rtrec.events import Event, encode_event
from rtrec.recipe.joiner import Joiner
from stream_workers.pipeline import BatchPipeline
from stream_workers.recovery import Recovery, ShardSubset
from rtrec.recipe.trainer import OnlineTrainer
from rtrec.recipe.training import TrainingStep

TOPIC = "actions"
PARTITIONS = 4
# Users admitted at once, so a row's update count is exactly the examples of that user trained.
TABLES = (EmbeddingConfig("user_id", slot=1), EmbeddingConfig("item_id", slot=2),
          EmbeddingConfig("category", slot=3), EmbeddingConfig("context", slot=4))
USER_SLOT = 1


class Log:
    """The topic as a list of message values per partition; reads ranges like KafkaRangeReader."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}

    def append(self, event: Event) -> None:
        self.partitions[zlib.crc32(event.user_id.encode()) % PARTITIONS].append(encode_event(event))

    def read(self, ranges: Mapping[tuple[str, int], tuple[int, int]]) -> dict:
        return {tp: list(self.partitions[tp[1]][lo:hi]) for tp, (lo, hi) in ranges.items()}

    def batches(self, size: int) -> list[tuple[list[bytes], dict, dict, list[int]]]:
        """(values, next offsets, first offsets, each value's partition): ``size`` messages
        round-robin over the partitions, as the worker's app hands them to the pipeline."""
        pos = {p: 0 for p in self.partitions}
        out = []
        while any(pos[p] < len(v) for p, v in self.partitions.items()):
            values, ends, starts, partitions = [], {}, {}, []
            for p, msgs in self.partitions.items():
                take = msgs[pos[p]:pos[p] + size // PARTITIONS]
                if take:
                    starts[p], ends[p] = pos[p], pos[p] + len(take)
                    values += take
                    partitions += [p] * len(take)
                    pos[p] += len(take)
            out.append((values, {TOPIC: ends}, {TOPIC: starts}, partitions))
        return out


class NoRedis:
    def write_many(self, events: list) -> WriteResult:
        return WriteResult(len(events), 0)


def traffic(n_users: int = 40, per_user: int = 30) -> Log:
    log = Log()
    for k in range(per_user):
        for u in range(n_users):
            req = f"r{u}-{k}"
            ts = 1_700_000_000.0 + k * 10 + u * 0.01
            log.append(Event(f"i{u}-{k}", f"u{u}", f"item{(u + k) % 25}", "impression", ts, request_id=req,
                             item={"category": f"c{k % 3}"}))
            if (u + k) % 3 == 0:
                log.append(Event(f"c{u}-{k}", f"u{u}", f"item{(u + k) % 25}", "click", ts + 1, request_id=req))
    return log


def build(log: Log, stores: list[ParamStore]) -> tuple[BatchPipeline, Recovery]:
    params = ShardedClient(stores)
    joiner = Joiner(window_s=30.0)
    step = TrainingStep(OnlineTrainer(params, tables=TABLES))
    recovery = Recovery(step, joiner, log, prime_events=200)
    return BatchPipeline(NoRedis(), joiner, step, recovery), recovery  # type: ignore[arg-type]


def record_examples(trainer: OnlineTrainer) -> list[Counter]:
    """Per shard, the (user, item, label) examples whose gradients were pushed to it.

    Row values and update counts depend on how examples fall into batches (IDs are deduplicated
    per push), which a replay cannot reproduce; the examples each shard was trained on do not.
    """
    trained = [Counter(), Counter()]
    train_many = trainer.train_many

    def recording(batch, offsets=None):  # type: ignore[no-untyped-def]
        keep = trainer.params.keep if isinstance(trainer.params, ShardSubset) else {0, 1}
        # the batch's own examples: not sampled rows, nor earlier batches trained again (replay)
        extra = batch.sampled if batch.sampled is not None else np.zeros(len(batch), dtype=bool)
        if batch.replayed is not None:
            extra = extra | batch.replayed
        rows = [(str(u), str(i), None if np.isnan(y) else float(y))  # None: a final example (no click label)
                for u, i, y, s in zip(batch.users, batch.items, batch.labels[:, 0], extra) if not s]
        for k in keep:
            trained[k].update(rows)
        return train_many(batch, offsets)

    trainer.train_many = recording  # type: ignore[method-assign]
    return trained


def run(log: Log, restore_shard_after: int | None = None) -> tuple[list[ParamStore], Recovery, list]:
    stores = [ParamStore(TABLES, shard=k, num_shards=2) for k in range(2)]
    pipeline, recovery = build(log, stores)
    trained = record_examples(pipeline.train.trainer)
    snapshot_at = None
    snapshot = None
    offsets_at_kill = None
    for n, (values, ends, starts, partitions) in enumerate(log.batches(80)):
        pipeline.process(values, ends, starts, partitions)
        if restore_shard_after is not None and n == restore_shard_after // 2:
            snapshot = stores[1].export_state()  # the shard's last snapshot
            snapshot_at = Counter(trained[1])
        if restore_shard_after is not None and n == restore_shard_after:
            offsets_at_kill = dict(stores[1].offsets[TOPIC])
            restored = ParamStore.from_state(*snapshot, tables=TABLES)  # the shard restarts from it
            stores[1] = restored
            pipeline.train.trainer.params.shards[1] = restored  # the same address, a new process
            trained[1] = Counter(snapshot_at)  # what the restored shard holds
    return stores, recovery, [snapshot, offsets_at_kill, trained]


def test_a_restored_shard_gets_every_event_after_its_snapshot_trained_again() -> None:
    log = traffic()
    reference, _, (_, _, reference_trained) = run(log)
    stores, recovery, (snapshot, offsets_at_kill, trained) = run(log, restore_shard_after=6)
    assert recovery.replays == 1
    assert snapshot[1]["offsets"][TOPIC] != {str(p): o for p, o in offsets_at_kill.items()}  # it did lose work
    ends = {p: len(v) for p, v in log.partitions.items()}
    assert stores[1].offsets[TOPIC] == ends == reference[1].offsets[TOPIC]
    # Every example reached the restored shard exactly once, as with no fault ...
    assert trained[1] == reference_trained[1]
    # ... and the shard that did not restart was not trained twice.
    assert trained[0] == reference_trained[0]


def test_without_a_restart_nothing_is_replayed() -> None:
    _, recovery, _ = run(traffic())
    assert recovery.replays == 0


def test_shard_subset_pushes_only_to_kept_shards() -> None:
    stores = [ParamStore(TABLES, shard=k, num_shards=2) for k in range(2)]
    subset = ShardSubset(ShardedClient(stores), frozenset({1}))
    ids = np.arange(1, 200, dtype=np.uint64) | np.uint64(USER_SLOT << 56)
    assert (slot_of(ids) == USER_SLOT).all()
    subset.push_many(ids, np.ones((ids.size, 32), dtype=np.float32), ts=1.0)
    assert len(stores[0].tables["user_id"]) == 0
    assert len(stores[1].tables["user_id"]) > 0


@pytest.mark.parametrize("prime", [0, 200])
def test_a_restarted_worker_primes_its_joiner_from_before_its_first_batch(prime: int) -> None:
    """Impressions pending when the old worker died are joined by the new one (with priming)."""
    log = traffic(n_users=8, per_user=4)
    stores = [ParamStore(TABLES, shard=k, num_shards=2) for k in range(2)]
    params = ShardedClient(stores)
    joiner = Joiner(window_s=1e6)  # nothing closes by time: pending impressions wait for their click
    step = TrainingStep(OnlineTrainer(params, tables=TABLES))
    recovery = Recovery(step, joiner, log, prime_events=prime)
    recovery.before_batch({TOPIC: {p: len(v) for p, v in log.partitions.items()}},
                          {TOPIC: {p: len(v) for p, v in log.partitions.items()}})
    # every impression stays pending until its window closes (clicked ones wait for their final labels)
    assert joiner.pending == (0 if prime == 0 else 8 * 4)


def worker_died_after_shard_restored():  # type: ignore[no-untyped-def]
    """A worker trained 6 batches and stopped; shard 1 then restored its snapshot of batch 3 (no
    final snapshot). Returns the log, its batches, the stores, what each shard trained so far, and
    what each trained in a run without faults."""
    log = traffic()
    _, _, (_, _, reference_trained) = run(log)
    batches = log.batches(80)
    stores = [ParamStore(TABLES, shard=k, num_shards=2) for k in range(2)]
    old, _ = build(log, stores)
    trained = record_examples(old.train.trainer)
    for n in range(6):
        old.process(*batches[n])
        if n == 3:
            snapshot, at_snapshot = stores[1].export_state(), Counter(trained[1])
    stores[1] = ParamStore.from_state(*snapshot, tables=TABLES)
    trained[1] = at_snapshot
    return log, batches, stores, trained, reference_trained


def test_a_worker_started_after_a_shard_restored_an_older_snapshot_replays_the_gap() -> None:
    """Whole-stack restart: the new worker's committed offsets are past the shard's snapshot."""
    log, batches, stores, trained, reference_trained = worker_died_after_shard_restored()
    new, recovery = build(log, stores)  # a new worker process: new joiner, new trainer
    new_trained = record_examples(new.train.trainer)
    for n in range(6, len(batches)):
        new.process(*batches[n])
    assert recovery.replays == 1
    assert [a + b for a, b in zip(trained, new_trained)] == reference_trained


def test_a_restarted_worker_replays_the_gap_of_partitions_its_first_batch_did_not_hold() -> None:
    """A new worker whose first batches hold one partition each (a backlog is fetched unevenly) still
    replays every partition's gap into the shard that restored an older snapshot: the check is made
    when each partition is first consumed, not only at the first batch (seen in benchmarks.faults:
    the worker died during a replay, and the next one replayed one partition of four)."""
    log, batches, stores, trained, reference_trained = worker_died_after_shard_restored()
    new, recovery = build(log, stores)
    new_trained = record_examples(new.train.trainer)
    for values, ends, starts, partitions in batches[6:]:
        for p in sorted(starts[TOPIC]):  # one partition per batch
            keep = [n for n, q in enumerate(partitions) if q == p]
            new.process([values[n] for n in keep], {TOPIC: {p: ends[TOPIC][p]}}, {TOPIC: {p: starts[TOPIC][p]}},
                        [p] * len(keep))
    assert recovery.replays == PARTITIONS
    assert [a + b for a, b in zip(trained, new_trained)] == reference_trained
