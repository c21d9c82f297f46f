"""The impression sender: serving's child process that turns served lists into Kafka events.

Reads one JSON line per served list on stdin (``[request_id, user_id, [[item_id, category], ...],
context, ts]``, written by :class:`serving.impressions.SenderProcess`), validates each impression
event and sends it with the project's producer (``RTREC_KAFKA``, ``RTREC_ACTIONS_TOPIC``), batched for
``RTREC_IMPRESSION_LINGER_MS`` (100 ms by default: 5 ms batches cost the broker ~1 ms of CPU per
served list at 100 lists/s here, 100 ms batches 0.08 ms).
About once a second it writes ``{"acked": n, "failed": m}`` (running totals) to stdout for the
parent's metrics. At end of input it flushes the producer and exits. Logs go to stderr.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import BinaryIO

from producers.client import EventProducer

import orjson
from kafka.errors import KafkaError

from rtrec.errors import RtrecError
from rtrec.events import Invalid, validate_fields
from rtrec.logs import configure_logging
from serving.impressions import impression_events

log = logging.getLogger("serving.impression_sender")

REPORT_EVERY_S = 1.0


class _Counts:
    def __init__(self) -> None:
        self.invalid = 0


def _checked(events: list[dict], counts: _Counts) -> list[dict]:
    """The events that are valid: the first is validated whole (the fields all share but the item),
    the others for their item ID; validating every event costs more than sending it."""
    if not events:
        return []
    if isinstance(validate_fields(events[0]), Invalid):
        counts.invalid += len(events)
        log.warning("invalid served list of request %r: %s", events[0].get("request_id"),
                    validate_fields(events[0]).reason)  # type: ignore[union-attr]
        return []
    good = [e for e in events if isinstance(e["item_id"], str) and 0 < len(e["item_id"]) <= 256]
    counts.invalid += len(events) - len(good)
    return good


def run(lines: BinaryIO, report: BinaryIO, producer: EventProducer) -> _Counts:
    """Send every served list read from ``lines``; report totals to ``report`` while doing it."""
    counts = _Counts()
    done = threading.Event()

    def write_report() -> None:
        report.write(orjson.dumps({"acked": producer.acked, "failed": producer.failed + counts.invalid}) + b"\n")
        report.flush()

    def reporter() -> None:
        while not done.wait(REPORT_EVERY_S):
            try:
                write_report()
            except (OSError, ValueError):
                return  # the parent is gone

    threading.Thread(target=reporter, name="reports", daemon=True).start()
    try:
        for line in lines:  # per served list: a few microseconds of parsing, then k producer calls
            try:
                entry = orjson.loads(line)
                events = impression_events(*entry)
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                counts.invalid += 1
                log.warning("unreadable served list (%r): %r", exc, line[:200])
                continue
            for event in _checked(events, counts):
                try:
                    producer.send_raw(event["user_id"], orjson.dumps(event), "impression")
                except (KafkaError, RtrecError, ValueError) as exc:
                    counts.invalid += 1
                    log.warning("impression %s not sent: %r", event.get("event_id"), exc)
    finally:
        try:
            producer.flush(timeout_s=10.0)
        except (KafkaError, RtrecError) as exc:
            log.error("impressions not all delivered at exit: %r", exc)
        done.set()
        try:
            write_report()
        except (OSError, ValueError):
            pass
    return counts


def main() -> None:
    from rtrec.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level)
    producer = EventProducer(settings.kafka, settings.actions_topic, settings.impression_linger_ms,
                             settings.producer_batch_bytes)
    try:
        run(sys.stdin.buffer, sys.stdout.buffer, producer)
    finally:
        try:
            producer.close()
        except (KafkaError, RtrecError) as exc:
            log.error("producer closed with undelivered impressions: %r", exc)


if __name__ == "__main__":
    main()
