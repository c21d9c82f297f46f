"""Logging served lists back to Kafka as impression events, off the request path.

Every ``/recommend`` response becomes one ``impression`` event per returned item, all with the
response's ``request_id``, so the joiner can label them with the clicks that follow (closing the
loop). The request only puts the list on a bounded queue (``put_nowait``); a daemon thread turns
it into events and hands them to the producer, whose sends are asynchronous. A full queue, an
invalid event or a producer error is counted (``rtrec_serving_impression_errors``) and logged,
never raised into the request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from kafka.errors import KafkaError

from rtrec.errors import RtrecError
from serving.metrics import ServingMetrics

__all__ = ["ImpressionLog", "impression_events"]

log = logging.getLogger(__name__)

_STOP = object()


def impression_events(request_id: str, user_id: str, items: Sequence[tuple[str, str | None]],
                      context: Mapping[str, Any] | None, ts: float) -> list[dict]:
    """The impression events (JSON objects, CONTRACT.md) of one served list of ``(item_id, category)``.

    >>> [e["event_id"] for e in impression_events("r1", "u", [("a", "x"), ("b", None)], None, 1.0)]
    ['r1:0', 'r1:1']
    """
    out = []
    for rank, (item_id, category) in enumerate(items):  # per served item: at most k = 100
        event = {"event_id": f"{request_id}:{rank}", "user_id": user_id, "item_id": item_id,
                 "action": "impression", "ts": ts, "request_id": request_id}
        if context:
            event["context"] = dict(context)
        if category:
            event["item"] = {"category": category}
        out.append(event)
    return out


class ImpressionLog:
    """A bounded queue drained by one thread into ``send_dict`` (e.g. ``EventProducer.send_dict``)."""

    def __init__(self, send_dict: Callable[[dict], None], metrics: ServingMetrics,
                 max_pending: int = 10_000) -> None:
        self._send = send_dict
        self.metrics = metrics
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._drain, name="impression-log", daemon=True)
        self._thread.start()

    def log(self, request_id: str, user_id: str, items: Sequence[tuple[str, str | None]],
            context: Mapping[str, Any] | None) -> None:
        """Queue one served list; returns at once (a full queue drops it, counted)."""
        try:
            self._queue.put_nowait((request_id, user_id, list(items), dict(context or {}), time.time()))
        except queue.Full:
            self.metrics.impression_errors.inc(len(items))
            log.warning("impression queue full; dropped %d impressions of request %s", len(items), request_id)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within ``timeout_s``), then stop the thread."""
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("impression queue still full at shutdown; pending impressions are lost")
            return
        self._thread.join(timeout_s)

    def _drain(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is _STOP:
                return
            for event in impression_events(*entry):
                try:
                    self._send(event)
                    self.metrics.impressions_logged.inc()
                except (KafkaError, RtrecError, ValueError, OSError) as exc:
                    self.metrics.impression_errors.inc()
                    log.warning("impression of request %s not logged: %r", event["request_id"], exc)
