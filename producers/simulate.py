"""``rtrec simulate``: stream simulated clicks into Kafka at a steady rate of events per second."""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from typing import Callable

from producers.simulator import ClickSimulator
from rtrec.events import Event

log = logging.getLogger(__name__)

#: Seconds of event time generated per chunk; small enough for smooth pacing, big enough to vectorise.
CHUNK_S = 0.25
#: The world starts this long before the first send, so clicks and likes that follow earlier
#: impressions are already in flight and the rate is steady from the first second.
#: The warm-up is capped at this many generated events so high rates start quickly.
WARM_UP_S = 30.0
WARM_UP_EVENTS = 20_000


def run_simulation(
    sim: ClickSimulator,
    send: Callable[[Event], None],
    rate: float,
    duration_s: float,
    should_stop: Callable[[], bool] = lambda: False,
    tick_s: float = 0.02,
) -> dict:
    """Emit about ``rate`` events/s for ``duration_s`` wall seconds; event ``ts`` is the wall clock.

    Requests are generated ahead in chunks of ``CHUNK_S`` s of event time and each event is sent
    when the wall clock reaches its ``ts``. Returns ``{"sent", "seconds", "events_per_s"}``.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be > 0")
    requests_per_s = rate / sim.events_per_request()
    pending: list[tuple[float, int, Event]] = []
    seq = itertools.count()
    start = time.time()
    horizon = start - min(WARM_UP_S, WARM_UP_EVENTS / rate)
    sent = 0
    next_log = start + 10.0
    while (now := time.time()) < start + duration_s and not should_stop():
        while horizon < now + 2 * CHUNK_S:
            for event in sim.traffic(horizon, horizon + CHUNK_S, requests_per_s):
                if event.ts >= start:  # the warm-up's own events are history, never sent
                    heapq.heappush(pending, (event.ts, next(seq), event))
            horizon += CHUNK_S
        while pending and pending[0][0] <= now:
            send(heapq.heappop(pending)[2])
            sent += 1
        if now >= next_log:
            log.info("simulate: %d events sent, %.0f events/s", sent, sent / (now - start))
            next_log = now + 10.0
        time.sleep(tick_s)
    seconds = time.time() - start
    return {"sent": sent, "seconds": round(seconds, 3), "events_per_s": round(sent / seconds, 1)}
