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

__all__ = ["lower_thread_priority"]

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
