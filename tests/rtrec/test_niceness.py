"""Background threads lower their own CPU priority, not their process's."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from rtrec.niceness import lower_thread_priority


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
