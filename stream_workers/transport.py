"""The worker's Kafka transport: faust-streaming's aiokafka driver with a short fetch wait.

faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. With a broker that
holds a fetch for that long even when data arrives meanwhile (the local stack's Tansu does), an
event waited ~380 ms (p50) and ~740 ms (p99) before the worker saw it (measured by
``benchmarks.freshness`` with a bare aiokafka consumer at the same setting; 9 / 28 ms at 20 ms).
Registered for the URL scheme ``rtrec://`` through the ``faust.transports`` entry point (see
pyproject.toml), the extension point faust provides for drivers.

It also keeps one bad record batch from stopping the worker: aiokafka raises while it iterates a
fetched batch it cannot decode (a codec it lacks, a corrupt compressed payload), and that error
would end the Faust worker and, under ``rtrec up``, the whole stack. Here such a batch is skipped
(the partition's fetch position moves past it) and recorded in :data:`UNDECODABLE`; the app sends
each to the dead-letter topic by topic, partition and offsets and the pipeline counts it.

And it hands each fetched message to the streams without the four tasks Faust's fetch loop spends
on it (:class:`DeliverWithoutTasks`), most of a Faust agent's per-message CPU.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Coroutine

from aiokafka.consumer import fetcher
from faust.transport.drivers import aiokafka as driver
from mode.services import WaitResults

from stream_workers.validation import UndecodableBatch

__all__ = ["Transport", "FETCH_MAX_WAIT_MS", "UNDECODABLE", "SkippingPartitionRecords"]

log = logging.getLogger(__name__)

#: Longest time the broker may hold a fetch that has no data yet.
FETCH_MAX_WAIT_MS = 50


class UndecodableLog:
    """Batches skipped by the consumer thread, until the app's event loop takes them (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: list[UndecodableBatch] = []

    def add(self, batch: UndecodableBatch) -> None:
        with self._lock:
            self._batches.append(batch)

    def take(self) -> list[UndecodableBatch]:
        with self._lock:
            out, self._batches = self._batches, []
        return out

    def put_back(self, batches: list[UndecodableBatch]) -> None:
        """Return batches whose report failed, ahead of newer ones."""
        with self._lock:
            self._batches[:0] = batches


UNDECODABLE = UndecodableLog()


class _DecodableBatches:
    """A fetched ``MemoryRecords`` that hands out only batches that decode; the others go to
    ``on_skip``: a CRC that does not match (aiokafka would raise and refetch the same batch
    forever) or a payload that does not decompress. Decoding is what aiokafka does when iteration
    starts (``iter(batch)``), so a batch is decompressed once, here, and its records are then read
    as usual."""

    def __init__(self, records: Any, on_skip: Any, check_crcs: bool) -> None:
        self._records, self._on_skip, self._check_crcs = records, on_skip, check_crcs
        self._next: Any = None

    def has_next(self) -> bool:
        while self._next is None and self._records.has_next():
            batch = self._records.next_batch()
            try:
                if self._check_crcs and not batch.validate_crc():
                    raise ValueError("CRC mismatch")
                iter(batch)
            except Exception as exc:  # noqa: BLE001 -- any codec's error: the batch cannot be read
                self._on_skip(batch, exc)
            else:
                self._next = batch
        return self._next is not None

    def next_batch(self) -> Any:
        if not self.has_next():
            return None
        batch, self._next = self._next, None
        return batch


class SkippingPartitionRecords(fetcher.PartitionRecords):
    """aiokafka's records of one fetched partition, minus the batches that do not decode."""

    def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, key_deserializer: Any,
                 value_deserializer: Any, check_crcs: bool, isolation_level: Any) -> None:
        # The CRC is checked by _DecodableBatches: aiokafka can check it only before decoding starts.
        super().__init__(tp, _DecodableBatches(records, self._skip, check_crcs), aborted_transactions, fetch_offset,
                         key_deserializer, value_deserializer, False, isolation_level)

    def _skip(self, batch: Any, exc: Exception) -> None:
        skipped = UndecodableBatch(self._tp.topic, self._tp.partition, batch.base_offset, batch.next_offset,
                                   f"{type(exc).__name__}: {exc}")
        log.error("skipping %s", skipped.dead_letter().reason)
        self.next_fetch_offset = max(self.next_fetch_offset, batch.next_offset)
        UNDECODABLE.add(skipped)


async def continue_coroutine(coro: Coroutine, yielded: Any) -> Any:
    """Run ``coro`` on from where it suspended on ``yielded`` (what its last step yielded), as
    the task that started it would have: wait for that future, then step the coroutine again;
    an exception (cancellation included) is thrown into it where it waits."""
    while True:
        try:
            if yielded is None:  # a bare yield (asyncio.sleep(0)): give the loop one turn
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # as a task does before it waits on one
                await yielded
        except BaseException as exc:  # noqa: BLE001 -- handed to the coroutine, which decides
            step = coro.throw, exc
        else:
            step = coro.send, None
        try:
            yielded = step[0](step[1])
        except StopIteration as stop:
            return stop.value


def install_batch_skipping() -> None:
    """Make aiokafka's fetcher (in this process) build :class:`SkippingPartitionRecords`; aiokafka
    offers no setting for it, and the fetcher looks the class up in its module."""
    fetcher.PartitionRecords = SkippingPartitionRecords


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it starts its fetcher; faust offers no setting for it
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class DeliverWithoutTasks:
    """A :class:`mode.Service` whose ``wait_first`` skips its tasks when the first awaitable is a
    coroutine that finishes without suspending.

    Faust's fetch loop hands every message to the streams through
    ``wait_first(deliver(message), suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per
    message, measured as most of a Faust agent's per-message CPU (a no-op agent read 4,300-4,800
    events/s with it, 5,600-6,700 without, same stack and hour). A delivery suspends only when a
    stream's buffer is full; otherwise it is run to its end right here and wins the race, which is
    what ``wait_first`` would have returned. One that suspends is continued as a task and raced
    as before, so back pressure and a rebalance's suspension work as Faust meant."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        first = coros[0] if coros else None
        if (timeout is not None or not asyncio.iscoroutine(first) or self._stopped.is_set()  # type: ignore[attr-defined]
                or self._crashed.is_set()):  # type: ignore[attr-defined]
            return await super().wait_first(*coros, timeout=timeout)  # type: ignore[misc]
        try:
            yielded = first.send(None)
        except BaseException as exc:  # noqa: BLE001 -- finished (StopIteration) or failed: no race
            for other in coros[1:]:
                if asyncio.iscoroutine(other):
                    other.close()  # never started: closed, not left to warn that it was never awaited
            if isinstance(exc, StopIteration):
                return WaitResults([first], [exc.value], False)
            raise
        return await super().wait_first(continue_coroutine(first, yielded), *coros[1:])  # type: ignore[misc]


class Consumer(DeliverWithoutTasks, driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        install_batch_skipping()
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """The aiokafka transport whose consumer fetches with :data:`FETCH_MAX_WAIT_MS`."""

    Consumer = Consumer
