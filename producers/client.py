"""The application client for emitting events into Kafka (kafka-python).

Sends are asynchronous and batched by the Kafka producer (``linger_ms``, ``batch_size``); a
failed delivery is never silent: it is counted, logged, and raised from the next :meth:`flush`.
Events are keyed by ``user_id`` so one user's events stay in order on one partition.

Example (needs a broker)::

    with EventProducer("127.0.0.1:9092") as producer:
        producer.send(Event("e1", "u1", "i1", "click", time.time()))
"""

from __future__ import annotations

import logging
import threading
from typing import Iterable

from kafka import KafkaProducer
from prometheus_client import Counter

from rtrec.errors import DeliveryError, InvalidEvent
from rtrec.events import Event, Invalid, action_label, encode_event, validate_fields

log = logging.getLogger(__name__)

EVENTS_SENT = Counter("rtrec_producer_events_sent_total", "Events acknowledged by Kafka.", ["action"])
DELIVERY_ERRORS = Counter("rtrec_producer_delivery_errors_total", "Events Kafka did not acknowledge.")


class EventProducer:
    """Sends validated events to the actions topic; use as a context manager or call close()."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = "actions",
        linger_ms: int = 5,
        batch_bytes: int = 256 * 1024,
        compression: str | None = None,
        delivery_timeout_ms: int = 120_000,
    ) -> None:
        self.topic = topic
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="rtrec-producer",
            acks=1,
            linger_ms=linger_ms,
            batch_size=batch_bytes,
            compression_type=compression,
            retries=5,
            request_timeout_ms=min(30_000, delivery_timeout_ms - linger_ms),
            delivery_timeout_ms=delivery_timeout_ms,  # bound on reporting success or failure
            max_in_flight_requests_per_connection=1,  # keeps order per partition across retries
        )
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self.sent = 0
        self.acked = 0
        self.failed = 0

    def send(self, event: Event) -> None:
        """Queue one event for sending; returns at once (see :meth:`flush`)."""
        self.send_raw(event.user_id, encode_event(event), event.action)

    def send_dict(self, obj: dict) -> None:
        """Validate a JSON-like dict as an event and queue it; raises InvalidEvent if it is not one."""
        result = validate_fields(obj)
        if isinstance(result, Invalid):
            raise InvalidEvent(result.reason)
        self.send(result)

    def send_many(self, events: Iterable[Event]) -> int:
        """Queue a batch of events; returns how many were queued."""
        n = 0
        for event in events:  # kafka-python batches internally; this loop only enqueues
            self.send(event)
            n += 1
        return n

    def send_raw(self, key: str, value: bytes, action: str = "raw") -> None:
        """Queue pre-encoded bytes (replay of already-validated data, or tests of bad input)."""
        future = self._producer.send(self.topic, key=key.encode(), value=value)
        future.add_callback(self._on_ack, action)
        future.add_errback(self._on_error)
        self.sent += 1

    def flush(self, timeout_s: float | None = 60.0) -> None:
        """Wait until every queued event is acknowledged; raise DeliveryError if any failed."""
        self._producer.flush(timeout=timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise DeliveryError(f"{len(errors)} events were not delivered; first error: {errors[0]!r}")

    def close(self) -> None:
        """Flush, then release the connection."""
        try:
            self.flush()
        finally:
            self._producer.close(timeout=10)

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _on_ack(self, action: str, _metadata: object) -> None:
        EVENTS_SENT.labels(action_label(action)).inc()
        with self._lock:
            self.acked += 1

    def _on_error(self, exc: BaseException) -> None:
        DELIVERY_ERRORS.inc()
        log.error("event not delivered to %s: %r", self.topic, exc)
        with self._lock:
            self._errors.append(exc)
            self.failed += 1
