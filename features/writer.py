"""The one writer of real-time features: batches of events → Redis, idempotent by ``event_id``.

Each batch is applied by a Lua script (``apply_events.lua``) that checks and records every
``event_id`` and updates the windowed counters, recent/session lists and rankings in the same
atomic step, so a crash can never leave an event recorded but not counted, and a redelivered or
replayed event changes nothing. Chunks of a batch go out in one pipeline: one round trip per batch.

Events stamped more than ``config.max_event_ahead_s`` after the wall clock are refused (counted
and logged, never applied): validation dead-letters them first, and this second check keeps one
such event from moving the watermark, after which every window read would be empty.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import redis
from prometheus_client import Counter, Histogram

from features.config import FeatureConfig
from rtrec.events import Event

log = logging.getLogger(__name__)

SCRIPT = resources.files("features").joinpath("apply_events.lua").read_text()
#: Events per script call: bounds how long one call holds Redis (it is single-threaded).
EVENTS_PER_CALL = 200

EVENTS_APPLIED = Counter("rtrec_features_events_applied_total", "Events whose feature effects were applied.")
EVENTS_DUPLICATE = Counter("rtrec_features_events_duplicate_total", "Events skipped as already applied.")
EVENTS_REFUSED = Counter("rtrec_features_events_refused_total",
                         "Events not applied because their time is too far ahead of the wall clock.")
WRITE_SECONDS = Histogram("rtrec_features_redis_write_seconds", "Time to write one batch of events to Redis.",
                          buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))


@dataclass(frozen=True)
class WriteResult:
    """What a batch did: events newly applied and events already seen before."""

    applied: int
    duplicates: int


def _window_number(config: FeatureConfig) -> int:
    """1-based position of the (user, category) counters' window among the windows; 0 = none
    (``user_category_window`` empty or not a configured window: no such counters are kept)."""
    names = [w.name for w in config.windows]
    return names.index(config.user_category_window) + 1 if config.user_category_window in names else 0


class FeatureWriter:
    """Applies events to the Redis feature store (see features/keys.py for the layout)."""

    def __init__(self, client: redis.Redis, config: FeatureConfig | None = None) -> None:
        self.client = client
        self.config = config or FeatureConfig()
        self._script = client.register_script(SCRIPT)
        c = self.config
        self._head = [c.prefix, c.dedupe_ttl_s, c.key_ttl_s, c.recent_items, c.session_gap_s,
                      c.trending_tau_s, c.popular_tau_s, c.ranking_size, c.catalog_size, c.covisit_window,
                      c.covisit_keep, _window_number(c), len(c.windows)]
        for w in c.windows:
            self._head += [w.name, w.bucket_s, w.slots]

    def write_many(self, events: Sequence[Event], now: float | None = None) -> WriteResult:
        """Apply a batch of events; safe to call again with the same events (nothing changes).

        ``now`` (default: the wall clock) bounds event time: later events are refused.
        """
        events = self._within_bound(events, time.time() if now is None else now)
        if not events:
            return WriteResult(0, 0)
        start = time.perf_counter()
        pipe = self.client.pipeline(transaction=False)
        for lo in range(0, len(events), EVENTS_PER_CALL):
            self._script(args=[*self._head, self._encode(events[lo:lo + EVENTS_PER_CALL])], client=pipe)
        results = pipe.execute()
        applied = sum(int(r[0]) for r in results)
        duplicates = sum(int(r[1]) for r in results)
        WRITE_SECONDS.observe(time.perf_counter() - start)
        EVENTS_APPLIED.inc(applied)
        EVENTS_DUPLICATE.inc(duplicates)
        return WriteResult(applied, duplicates)

    def _within_bound(self, events: Sequence[Event], now: float) -> Sequence[Event]:
        """The events no later than ``now + max_event_ahead_s``; the others are counted and logged."""
        horizon = now + self.config.max_event_ahead_s
        if all(e.ts <= horizon for e in events):  # the usual case: nothing to copy
            return events
        kept = [e for e in events if e.ts <= horizon]
        refused = len(events) - len(kept)
        EVENTS_REFUSED.inc(refused)
        log.warning("refused %d events stamped more than %.0f s after the wall clock (latest ts %.0f)",
                    refused, self.config.max_event_ahead_s, max(e.ts for e in events))
        return kept

    def _encode(self, events: Sequence[Event]) -> str:
        """The events as one JSON array for the script (see apply_events.lua)."""
        positive = self.config.positive_actions
        rows = [  # building the rows is the only per-event Python work of a write
            (e.event_id, e.ts, e.user_id, e.item_id, e.action, int(e.action in positive),
             str((e.item or {}).get("category", "")))
            for e in events
        ]
        return json.dumps(rows, separators=(",", ":"))
