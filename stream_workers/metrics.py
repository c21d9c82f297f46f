"""Prometheus metrics of a stream worker, in one place (names ``rtrec_worker_*``).

The per-batch metrics are fed by :class:`stream_workers.pipeline.BatchPipeline`; the consumer
group's lag is read from Kafka by :class:`ConsumerLagMonitor` in a thread of its own, so a scrape
never waits on Kafka. Each worker exports the lag of the partitions assigned to it only.

>>> lag = group_lag({("actions", 0): 120, ("actions", 1): 50}, {("actions", 0): 100}, {("actions", 1): 10})
>>> lag
{('actions', 0): 20, ('actions', 1): 40}
>>> owned_lag(lag, {("actions", 1)}), owned_lag(lag, None)
({('actions', 1): 40}, {})
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Collection, Iterable, Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rtrec.events import action_label

__all__ = ["ConsumerLagMonitor", "JoinerCollector", "group_lag", "owned_lag", "dead_letter_action"]

log = logging.getLogger(__name__)

EVENTS_CONSUMED = Counter("rtrec_worker_events_consumed_total",
                          "Valid events taken into a micro-batch, by action (a retried batch counts again).",
                          ["action"])
EVENTS_PROCESSED = Counter("rtrec_worker_events_processed_total",
                           "Valid events whose batch completed (features written, examples trained), by action.",
                           ["action"])
EVENTS_DEAD_LETTERED = Counter("rtrec_worker_events_dead_lettered_total",
                               "Invalid messages sent to the DLQ, by the action they claim (`unknown` if none).",
                               ["action"])
BATCH_SIZE = Histogram("rtrec_worker_batch_size",
                       "Messages per pipeline call (a slice of the stream; the call closing a training batch "
                       "also trains).",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
BATCH_SECONDS = Histogram("rtrec_worker_batch_seconds",
                          "Time of one pipeline call end to end (with the training step when it closes a "
                          "training batch).",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
BATCH_FAILURES = Counter("rtrec_worker_batch_failures_total",
                         "Micro-batches that raised (Redis, parameter server); the app retries them.")
EXAMPLES = Counter("rtrec_worker_examples_total", "Labelled examples produced by the joiner.", ["kind"])
JOINER_PENDING = Gauge("rtrec_worker_joiner_pending", "Impressions waiting for an action in the joiner.")
EVENT_LAG = Gauge("rtrec_worker_event_lag_seconds", "Wall clock minus the newest event time processed.")
# Counted where the batch runs (BatchPipeline.process with attempt > 0), i.e. in the pipeline
# process that serves the worker's metrics; the Faust process only numbers the attempts.
UNDECODABLE_BATCHES = Counter("rtrec_worker_undecodable_batches_total",
                              "Kafka record batches the consumer could not decode (codec, corrupt payload): "
                              "skipped and recorded in the dead-letter topic by topic/partition/offsets.",
                              ["topic"])
BATCH_RETRIES = Counter("rtrec_worker_batch_retries_total",
                        "Attempts at a micro-batch after a failed one (Redis, parameter server or pipeline process away).")


def dead_letter_action(raw: bytes) -> str:
    """The action label of an invalid message: its ``action`` field if it has a string one, else ``unknown``.

    >>> dead_letter_action(b'{"action": "click", "ts": "yesterday"}'), dead_letter_action(b"x")
    ('click', 'unknown')
    """
    try:
        action = json.loads(raw).get("action")
    except (ValueError, AttributeError):
        return "unknown"
    return action_label(action) if isinstance(action, str) else "unknown"


def group_lag(end: Mapping[tuple[str, int], int], committed: Mapping[tuple[str, int], int | None],
              beginning: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Messages behind per partition: end offset minus the committed offset (the beginning if none)."""
    out = {}
    for tp, end_offset in end.items():
        position = committed.get(tp)
        if position is None:
            position = beginning.get(tp, 0)  # no commit yet: the group starts at the earliest offset
        out[tp] = max(0, end_offset - position)
    return out


def owned_lag(lag: Mapping[tuple[str, int], int],
              assigned: Collection[tuple[str, int]] | None) -> dict[tuple[str, int], int]:
    """The lag of the partitions assigned to this worker; none while its assignment is unknown.

    Kafka gives each partition to one member of the group, so summing every worker's owned lag
    counts each partition once.
    """
    if assigned is None:
        return {}
    return {tp: value for tp, value in lag.items() if tp in assigned}


class JoinerCollector(Collector):
    """``rtrec_worker_joiner_outcomes_total{outcome}``: the joiner's own counts, read at scrape time.

    Outcomes: ``positive`` (impression joined with an action), ``negative`` (window passed without
    one), ``positive_only`` (an action with no impression to join), ``evicted`` (closed early
    because the state was full), ``unmatched_late`` (an action whose impression was gone).

    >>> from rtrec.recipe.joiner import Joiner
    >>> [m.samples[0].value for m in JoinerCollector(Joiner()).collect()]
    [0]
    """

    OUTCOMES = {"positive": "positives", "negative": "negatives", "positive_only": "positive_only",
                "evicted": "evicted", "unmatched_late": "unmatched_late"}  # label -> JoinStats field

    def __init__(self, joiner: object) -> None:
        self.joiner = joiner

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.joiner.stats  # type: ignore[attr-defined]
        family = CounterMetricFamily("rtrec_worker_joiner_outcomes", "Joiner outcomes since the worker started.",
                                     labels=["outcome"])
        for outcome, attribute in self.OUTCOMES.items():
            family.add_metric([outcome], getattr(stats, attribute))
        yield family


class ConsumerLagMonitor(Collector):
    """``rtrec_worker_consumer_lag_messages{topic,partition}``: the group's lag on this worker's partitions.

    A daemon thread reads the topic's end offsets and the group's committed offsets every
    ``interval_s``; a scrape returns the last reading of the partitions last given to
    :meth:`assign` (the Faust process sends its assignment with every batch and every few
    seconds between batches), so each partition is exported by the worker that owns it and
    ``sum`` over workers is the group's lag. Nothing is exported until the first assignment
    arrives; for a few seconds after a rebalance two workers may export the same partition, which
    ``max by (topic, partition)`` absorbs.
    """

    def __init__(self, bootstrap: str, group: str, topic: str, interval_s: float = 5.0,
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.bootstrap, self.group, self.topic, self.interval_s = bootstrap, group, topic, interval_s
        self.lag: dict[tuple[str, int], int] = {}
        self.assigned: frozenset[tuple[str, int]] | None = None  # (topic, partition) this worker owns
        self.read_at = 0.0
        self.errors = Counter("rtrec_worker_consumer_lag_errors_total", "Failed readings of the consumer lag.",
                              registry=registry)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consumer-lag", daemon=True)
        registry.register(self)

    def start(self) -> "ConsumerLagMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """The worker's current assignment as ``(topic, partition)`` pairs; kept until the next call."""
        self.assigned = frozenset((str(topic), int(partition)) for topic, partition in partitions)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("rtrec_worker_consumer_lag_messages",
                                "Messages of the topic the worker group has not committed yet, per partition; "
                                "each partition is reported by the worker it is assigned to, so sum() is the "
                                "group's lag.",
                                labels=["topic", "partition"])
        for (topic, partition), value in sorted(owned_lag(self.lag, self.assigned).items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag

    def read_once(self, consumer: object) -> dict[tuple[str, int], int]:
        """One reading with a kafka-python consumer of the group (never subscribed, so it never joins)."""
        from kafka import TopicPartition

        partitions = consumer.partitions_for_topic(self.topic) or set()  # type: ignore[attr-defined]
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        end = consumer.end_offsets(tps)  # type: ignore[attr-defined]
        beginning = consumer.beginning_offsets(tps)  # type: ignore[attr-defined]
        committed = {tp: consumer.committed(tp) for tp in tps}  # type: ignore[attr-defined]
        return group_lag({(tp.topic, tp.partition): v for tp, v in end.items()},
                         {(tp.topic, tp.partition): v for tp, v in committed.items()},
                         {(tp.topic, tp.partition): v for tp, v in beginning.items()})

    def _run(self) -> None:
        from kafka import KafkaConsumer

        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = KafkaConsumer(bootstrap_servers=self.bootstrap.split(","), group_id=self.group,
                                             enable_auto_commit=False, client_id="rtrec-lag-monitor")
                self.lag = self.read_once(consumer)
                self.read_at = time.time()
            except Exception as exc:  # noqa: BLE001 -- any Kafka failure: count, log, try again later
                self.errors.inc()
                log.warning("could not read the consumer lag of group %s: %r", self.group, exc)
                if consumer is not None:
                    consumer.close()
                    consumer = None
            self._stop.wait(self.interval_s)
        if consumer is not None:
            consumer.close()
