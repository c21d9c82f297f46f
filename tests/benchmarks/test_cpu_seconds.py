"""The benchmarks' CPU reading of a process tree (benchmarks.common; no server needed)."""

import os
import time

from benchmarks.common import cpu_seconds


def test_cpu_seconds_counts_the_work_a_process_did():
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn ~0.3 s of CPU in this process
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.2
