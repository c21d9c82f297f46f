"""CPU priority of background threads: work that can wait yields the cores to requests.

On Linux a thread has its own niceness: ``setpriority(PRIO_PROCESS, tid, n)`` with the thread's
kernel ID changes that thread alone, not the process around it. Raising niceness needs no
privilege; lowering it back does, so a thread is niced once, for its whole life.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

__all__ = ["lower_thread_priority", "NicedWorker"]

T = TypeVar("T")

log = logging.getLogger(__name__)


def lower_thread_priority(increment: int) -> int | None:
    """Add ``increment`` to the calling thread's niceness (capped at 19); returns the new niceness,
    or None where threads cannot be niced on their own (not Linux) or the kernel refused."""
    if increment <= 0 or not sys.platform.startswith("linux"):  # elsewhere a thread ID is no process ID
        return None
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (AttributeError, OSError) as exc:
        log.warning("could not lower the priority of thread %s: %r", threading.current_thread().name, exc)
        return None


class NicedWorker:
    """One thread at a lower CPU priority that runs the heavy steps of a loop whose light,
    frequent steps keep the priority of requests: the caller waits for each step
    (:meth:`run`), so the steps keep their order; only the scheduler sees them apart."""

    def __init__(self, increment: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=lower_thread_priority,
                                        initargs=(increment,))

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the niced thread; its result, or its exception raised here."""
        return self._pool.submit(fn).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
