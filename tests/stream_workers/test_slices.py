"""How the worker cuts its stream: features per slice as events arrive, training per batch, acks after training."""

from __future__ import annotations

import asyncio
import time

import pytest

from stream_workers.batching import run_slices


async def arriving(schedule: list[tuple[float, int]], arrivals: dict[int, float]):
    """Yields each event at its time (seconds from the start) and notes when it arrived."""
    start = time.monotonic()
    for at, event in schedule:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        arrivals[event] = time.monotonic()
        yield event


class Worker:
    """Records what it is handed; a training call takes ``train_s``, a slice ``slice_cost_s``."""

    def __init__(self, train_s: float = 0.0, slice_cost_s: float = 0.0, fail_first: int = 0) -> None:
        self.train_s, self.slice_cost_s, self.failures = train_s, slice_cost_s, fail_first
        self.handed: dict[int, float] = {}
        self.calls: list[tuple[list[int], bool]] = []
        self.acked: list[int] = []
        self.trained_at: list[float] = []

    async def handle(self, events: list[int], close: bool) -> bool:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis away")
        now = time.monotonic()
        self.handed.update({e: now for e in events})
        self.calls.append((events, close))
        await asyncio.sleep(self.slice_cost_s + (self.train_s if close else 0.0))
        if close:
            self.trained_at.append(time.monotonic())
        return close

    async def ack(self, event: int) -> None:
        self.acked.append(event)


def test_features_go_out_per_slice_while_training_keeps_its_window() -> None:
    # an event every 10 ms for 1.2 s; a training step takes 150 ms; slices of 20 ms, batches of 200 ms
    schedule = [(0.01 * n, n) for n in range(120)]
    arrivals: dict[int, float] = {}
    worker = Worker(train_s=0.15)
    asyncio.run(run_slices(arriving(schedule, arrivals), worker.ack, worker.handle, 1000, 0.2, 0.02))
    waits = sorted(worker.handed[e] - arrivals[e] for e in arrivals if e in worker.handed)
    # an event waits for the training step under way and one slice at most, never a training window
    assert waits[-1] < 0.15 + 0.02 + 0.08, f"an event waited {waits[-1] * 1000:.0f} ms to be handed over"
    trainings = [c for c in worker.calls if c[1]]
    assert len(worker.calls) > 2 * len(trainings)  # several slices per training batch
    # training no more often than its window: a batch closes 0.2 s after its first event arrived,
    # so two trainings end about 0.2 s apart or more (less only by how late the first one started)
    gaps = [b - a for a, b in zip(worker.trained_at, worker.trained_at[1:])]
    assert min(gaps) > 0.2 - 0.05 and len(trainings) <= 1.2 / 0.2 + 1
    assert worker.acked == sorted(worker.acked) and set(worker.acked) <= set(worker.handed)


def test_only_trained_events_are_acknowledged_and_a_due_batch_trains_without_new_events() -> None:
    # three events, then nothing for 0.5 s: their batch must close on its own after 0.1 s; the
    # last event's batch is still open when the stream ends (shutdown), so it is never acknowledged
    schedule = [(0.0, 1), (0.005, 2), (0.01, 3), (0.5, 4)]
    worker = Worker()
    asyncio.run(run_slices(arriving(schedule, {}), worker.ack, worker.handle, 1000, 0.1, 0.02))
    assert ([], True) in worker.calls  # the due batch closed by a call without new events
    assert worker.acked == [1, 2, 3]


def test_a_training_batch_never_holds_more_than_max_events() -> None:
    schedule = [(0.0, n) for n in range(25)]
    worker = Worker()
    sizes: list[int] = []
    pending: list[int] = []

    async def handle(events: list[int], close: bool) -> bool:
        pending.extend(events)
        if close:
            sizes.append(len(pending))
            pending.clear()
        return await worker.handle(events, close)

    asyncio.run(run_slices(arriving(schedule, {}), worker.ack, handle, 10, 5.0, 0.01))
    assert sizes[:2] == [10, 10] and max(sizes) <= 10


def test_events_of_a_failed_call_are_not_acknowledged() -> None:
    schedule = [(0.0, n) for n in range(5)]
    worker = Worker(fail_first=1)
    with pytest.raises(ConnectionError):
        asyncio.run(run_slices(arriving(schedule, {}), worker.ack, worker.handle, 3, 0.01, 0.0))
    assert worker.acked == []


def test_an_error_of_the_stream_comes_after_what_was_read_was_handed_over() -> None:
    async def failing():
        yield 1
        yield 2
        raise OSError("broker gone")

    worker = Worker()
    with pytest.raises(OSError, match="broker gone"):
        asyncio.run(run_slices(failing(), worker.ack, worker.handle, 10, 0.05, 0.01))
    assert [e for events, _ in worker.calls for e in events] == [1, 2]
