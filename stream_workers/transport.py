"""The worker's Kafka transport: faust-streaming's aiokafka driver with a short fetch wait.

faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. With a broker that
holds a fetch for that long even when data arrives meanwhile (the local stack's Tansu does), an
event waited ~380 ms (p50) and ~740 ms (p99) before the worker saw it (measured by
``benchmarks.freshness`` with a bare aiokafka consumer at the same setting; 9 / 28 ms at 20 ms).
Registered for the URL scheme ``rtrec://`` through the ``faust.transports`` entry point (see
pyproject.toml), the extension point faust provides for drivers.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as driver

__all__ = ["Transport", "FETCH_MAX_WAIT_MS"]

#: Longest time the broker may hold a fetch that has no data yet.
FETCH_MAX_WAIT_MS = 50


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it starts its fetcher; faust offers no setting for it
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """The aiokafka transport whose consumer fetches with :data:`FETCH_MAX_WAIT_MS`."""

    Consumer = Consumer
