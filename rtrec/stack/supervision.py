"""Supervision of the local stack: a component that dies is started again, after a backoff, on the
ports it had; one that keeps dying stops the stack.

:class:`RestartPolicy` is the rule, pure (the caller passes the time in); :class:`Supervisor`
applies it to the stack's processes, each with the function that starts it again and waits until
it is ready; :class:`StackMetrics` counts the restarts (``rtrec_stack_restarts_total``).
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter

from rtrec.errors import StackError
from rtrec.stack.process import ManagedProcess

__all__ = ["BACKOFF_S", "STABLE_AFTER_S", "ComponentKeepsDying", "RestartPolicy", "StackMetrics", "Supervisor"]

log = logging.getLogger(__name__)

#: Seconds before the n-th restart in a row of one component; the last value repeats.
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: A component that ran this long before it died is restarted after the first delay again.
STABLE_AFTER_S = 60.0

#: Callable that says whether the user asked the stack to stop (SIGINT/SIGTERM).
ShouldStop = Callable[[], bool]


class ComponentKeepsDying(StackError):
    """A component died more often than the restart policy allows: the stack stops."""


class RestartPolicy:
    """When to start a component that died again, and when to give up on it.

    The n-th restart in a row waits ``backoff_s[n]`` (the last value repeats); a death after
    ``stable_after_s`` or more of running starts the row again. A death that makes more than
    ``max_restarts`` deaths within the last ``window_s`` seconds gives up (``None``).

    >>> policy = RestartPolicy(max_restarts=3, window_s=300.0)
    >>> [policy.on_death(now=t, up_s=1.0) for t in (10.0, 12.0, 15.0)]
    [0.5, 1.0, 2.0]
    >>> policy.on_death(now=20.0, up_s=1.0) is None
    True
    """

    def __init__(self, max_restarts: int, window_s: float, backoff_s: Sequence[float] = BACKOFF_S,
                 stable_after_s: float = STABLE_AFTER_S) -> None:
        if max_restarts < 0 or window_s <= 0 or not backoff_s or min(backoff_s) < 0:
            raise ValueError("need max_restarts >= 0, window_s > 0 and a non-empty backoff of delays >= 0")
        self.max_restarts, self.window_s = max_restarts, window_s
        self.backoff_s, self.stable_after_s = tuple(backoff_s), stable_after_s
        self.deaths: deque[float] = deque()  # times of the deaths within the window
        self.in_a_row = 0  # restarts since the component last ran stable_after_s

    def on_death(self, now: float, up_s: float) -> float | None:
        """Record a death at ``now`` after ``up_s`` seconds of running; the seconds to wait before
        starting it again, or None: it died too often, give up."""
        if up_s >= self.stable_after_s:
            self.in_a_row = 0
        self.deaths.append(now)
        while self.deaths and self.deaths[0] <= now - self.window_s:
            self.deaths.popleft()
        if len(self.deaths) > self.max_restarts:
            return None
        delay = self.backoff_s[min(self.in_a_row, len(self.backoff_s) - 1)]
        self.in_a_row += 1
        return delay


class StackMetrics:
    """Metrics of the ``rtrec up`` process itself, on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.restarts = Counter("rtrec_stack_restarts", "Times a component of the local stack was started "
                                "again after it died", ["component"], registry=registry)


@dataclass
class _Watched:
    process: ManagedProcess
    restart: Callable[[ShouldStop], None]
    policy: RestartPolicy
    started_at: float
    due_at: float | None = None  # dead, to be started again at this time


class Supervisor:
    """Watches processes; restarts one that died when its policy's backoff has passed.

    ``restart(should_stop)`` starts the process again and returns once it is ready (the same
    ports, so nobody needs re-pointing), or raises StackError; a failed restart counts as a death.
    Everything runs in the thread that calls :meth:`check`, so nothing restarts while the owner
    stops the stack.
    """

    def __init__(self, metrics: StackMetrics, max_restarts: int, window_s: float,
                 backoff_s: Sequence[float] = BACKOFF_S, stable_after_s: float = STABLE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics, self.clock = metrics, clock
        self._policy = lambda: RestartPolicy(max_restarts, window_s, backoff_s, stable_after_s)
        self._watched: dict[str, _Watched] = {}

    def watch(self, process: ManagedProcess, restart: Callable[[ShouldStop], None]) -> None:
        """Supervise ``process`` (running now) from here on, under its name."""
        self._watched[process.name] = _Watched(process, restart, self._policy(), self.clock())
        self.metrics.restarts.labels(process.name).inc(0)  # exported as 0 before any restart

    def check(self, should_stop: ShouldStop = lambda: False) -> None:
        """One round: note the processes that died, start again those whose backoff has passed.
        Raises ComponentKeepsDying when one died more often than the policy allows."""
        for name, watched in self._watched.items():
            if should_stop():
                return
            if watched.due_at is None:
                if watched.process.alive():
                    continue
                self._died(name, watched, f"exited with {exit_status(watched.process.returncode)}")
            if watched.due_at is not None and self.clock() >= watched.due_at:
                self._restart(name, watched, should_stop)

    def _died(self, name: str, watched: _Watched, how: str) -> None:
        now = self.clock()
        up_s = now - watched.started_at
        delay = watched.policy.on_death(now, up_s)
        tail = watched.process.tail(10)
        if delay is None:
            policy = watched.policy
            raise ComponentKeepsDying(
                f"{name} {how} after {up_s:.1f} s; it died {len(policy.deaths)} times within "
                f"{policy.window_s:.0f} s (more than RTREC_STACK_MAX_RESTARTS={policy.max_restarts}), "
                f"giving up. Last lines of {watched.process.log_path}:\n{tail}")
        log.warning("%s %s after %.1f s; starting it again in %.1f s. Last lines of %s:\n%s",
                    name, how, up_s, delay, watched.process.log_path, tail)
        watched.due_at = now + delay

    def _restart(self, name: str, watched: _Watched, should_stop: ShouldStop) -> None:
        self.metrics.restarts.labels(name).inc()
        watched.due_at, watched.started_at = None, self.clock()
        try:
            watched.restart(should_stop)
        except StackError as exc:
            watched.process.kill()  # nothing half-started stays behind
            if should_stop():
                return
            self._died(name, watched, f"did not come back ({exc})")
            return
        log.info("%s is running again (pid %s)", name, watched.process.pid)


def exit_status(code: int | None) -> str:
    """A process's exit as words.

    >>> exit_status(1), exit_status(-9), exit_status(None)
    ('exit code 1', 'signal SIGKILL', 'no exit code')
    """
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
