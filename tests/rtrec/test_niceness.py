"""Background threads lower their own CPU priority, not their process's."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from rtrec.niceness import NicedWorker, lower_thread_priority


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux")
def test_a_thread_lowers_its_own_priority_and_leaves_the_process_alone() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: dict[str, int | None] = {}

    def background() -> None:
        seen["returned"] = lower_thread_priority(3)
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen["returned"] == seen["thread"] == min(19, before + 3)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_no_increment_changes_nothing() -> None:
    assert lower_thread_priority(0) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux")
def test_a_niced_worker_runs_steps_at_its_priority_and_raises_their_errors() -> None:
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = NicedWorker(2, "test-niced")
    try:
        assert worker.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())) == min(19, caller + 2)
        with pytest.raises(ZeroDivisionError):
            worker.run(lambda: 1 // 0)
    finally:
        worker.close()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller
