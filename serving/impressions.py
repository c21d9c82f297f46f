"""Logging served lists back to Kafka as impression events, off the request path.

Every ``/recommend`` response becomes one ``impression`` event per returned item, all with the
response's ``request_id``, so the joiner can label them with the clicks that follow (closing the
loop). The request only appends the list to a bounded list; every 20 ms a daemon thread takes
whatever is there and hands it to a sink:

- :class:`SenderProcess` (what ``rtrec serve`` uses): one JSON line per list to a child process
  (``python -m serving.impression_sender``) that runs the Kafka producer. kafka-python costs about
  0.66 ms of CPU per 10-item list here, all of it under the GIL; in the child it no longer
  competes with requests (measured: the serving process collapsed at 300 requests/s with the
  producer inside it).
- :class:`InProcessSink`: calls ``send_dict`` per event (tests, or a custom producer).

A full list, an invalid event or a producer error is counted (``rtrec_serving_impression_errors``)
and logged, never raised into the request.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import orjson
from kafka.errors import KafkaError

from rtrec.errors import RtrecError
from serving.metrics import ServingMetrics

__all__ = ["ImpressionLog", "impression_events", "InProcessSink", "SenderProcess", "Served"]

log = logging.getLogger(__name__)

#: Served lists taken off the queue per hand-over to the sink.
BATCH = 512

#: One served list: request_id, user_id, [(item_id, category)], context, ts.
Served = tuple[str, str, list, dict, float]


def impression_events(request_id: str, user_id: str, items: Sequence[Sequence[str | None]],
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


class Sink(Protocol):
    def send(self, served: list[Served]) -> None: ...
    def close(self, timeout_s: float) -> None: ...


class InProcessSink:
    """Sends each impression with ``send_dict`` in the draining thread."""

    def __init__(self, send_dict: Callable[[dict], None], metrics: ServingMetrics) -> None:
        self._send, self.metrics = send_dict, metrics

    def send(self, served: list[Served]) -> None:
        for entry in served:
            for event in impression_events(*entry):  # per impression: one producer call
                try:
                    self._send(event)
                    self.metrics.impressions_logged.inc()
                except (KafkaError, RtrecError, ValueError, OSError) as exc:
                    self.metrics.impression_errors.inc()
                    log.warning("impression of request %s not logged: %r", event["request_id"], exc)

    def close(self, timeout_s: float) -> None:
        pass


class SenderProcess:
    """Hands served lists to ``python -m serving.impression_sender`` as JSON lines on its stdin.

    The child reports ``{"acked": n, "failed": m}`` (running totals) on stdout; a reader thread
    turns them into the impression metrics. A child that died is restarted and the batch that
    found it dead is sent again to the new one (what the dead child had not delivered is lost,
    and counted as failed only if the child said so before dying).
    """

    #: Least seconds between two starts of the child (one that cannot reach Kafka exits at once).
    RESTART_BACKOFF_S = 5.0

    def __init__(self, metrics: ServingMetrics, env: Mapping[str, str] | None = None) -> None:
        self.metrics = metrics
        self.env = dict(env if env is not None else os.environ)
        self._proc: subprocess.Popen | None = None
        self._started_at = 0.0
        self._start()

    def send(self, served: list[Served]) -> None:
        data = b"".join(orjson.dumps(entry) + b"\n" for entry in served)
        for attempt in (1, 2):
            if self._proc is None or self._proc.poll() is not None:
                if time.monotonic() - self._started_at < self.RESTART_BACKOFF_S:
                    break  # it died right after its start: drop (counted) until the back-off ends
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
                return
            except (BrokenPipeError, OSError) as exc:
                log.error("impression sender died (%r); restarting it (attempt %d)", exc, attempt)
                self._proc = None
        self.metrics.impression_errors.inc(sum(len(entry[2]) for entry in served))

    def close(self, timeout_s: float) -> None:
        """Close the child's stdin: it flushes its producer (within ``timeout_s``) and exits."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            log.warning("impression sender did not stop within %.0f s; killing it", timeout_s)
            proc.kill()
            proc.wait()

    def _start(self) -> None:
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen([sys.executable, "-m", "serving.impression_sender"], env=self.env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        threading.Thread(target=self._read_reports, args=(self._proc,), name="impression-reports",
                         daemon=True).start()

    def _read_reports(self, proc: subprocess.Popen) -> None:
        acked = failed = 0
        assert proc.stdout is not None
        for line in proc.stdout:  # one short line per second from the child
            try:
                report = orjson.loads(line)
                self.metrics.impressions_logged.inc(max(0, report["acked"] - acked))
                self.metrics.impression_errors.inc(max(0, report["failed"] - failed))
                acked, failed = report["acked"], report["failed"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("unreadable report from the impression sender: %r", line[:200])


class ImpressionLog:
    """Served lists collected by requests and handed to a sink (:class:`SenderProcess` or
    :class:`InProcessSink`) by one thread every ``interval_s``.

    A request only appends to a list (no lock, no condition variable to notify: waking a thread
    per request cost ~7 % of serving's CPU at 300 requests/s, measured with py-spy).
    """

    def __init__(self, sink: Sink | Callable[[dict], None], metrics: ServingMetrics,
                 max_pending: int = 10_000, interval_s: float = 0.02) -> None:
        self.sink: Sink = sink if hasattr(sink, "send") else InProcessSink(sink, metrics)  # type: ignore[arg-type]
        self.metrics = metrics
        self.max_pending, self.interval_s = max_pending, interval_s
        self._pending: list[Served] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="impression-log", daemon=True)
        self._thread.start()

    def log(self, request_id: str, user_id: str, items: Sequence[tuple[str, str | None]],
            context: Mapping[str, Any] | None) -> None:
        """Queue one served list; returns at once (over ``max_pending`` lists it is dropped, counted)."""
        if len(self._pending) >= self.max_pending:
            self.metrics.impression_errors.inc(len(items))
            log.warning("impression log full; dropped %d impressions of request %s", len(items), request_id)
            return
        self._pending.append((request_id, user_id, list(items), dict(context or {}), time.time()))

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within ``timeout_s``), then stop the thread and the sink."""
        self._stop.set()
        self._thread.join(timeout_s)
        self._send_pending()
        self.sink.close(timeout_s)

    def _drain(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._send_pending()

    def _send_pending(self) -> None:
        served, self._pending = self._pending, []  # one reference swap: appends go to the new list
        for lo in range(0, len(served), BATCH):
            chunk = served[lo:lo + BATCH]
            try:
                self.sink.send(chunk)
            except Exception:  # the thread must survive anything a sink does
                self.metrics.impression_errors.inc(sum(len(entry[2]) for entry in chunk))
                log.exception("impressions of %d requests not logged", len(chunk))
