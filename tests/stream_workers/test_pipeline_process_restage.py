"""A pipeline child process that dies loses no staged slice: the next child is handed them again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream_workers.batch_frames import read_frame
from stream_workers.pipeline_process import PipelineError, PipelineProcess

FAKE_CHILD = '''
import json, sys
from features.writer import WriteResult
from stream_workers.batch_frames import decode_batch_request, encode_result, read_frame, write_frame
from stream_workers.pipeline import BatchResult
log = open(sys.argv[1], "a")
write_frame(sys.stdout.buffer, json.dumps({"ready": True, "metrics": ""}).encode())
while True:
    try:
        request = decode_batch_request(read_frame(sys.stdin.buffer))
    except EOFError:
        break
    if b"die" in request.values:
        sys.exit(1)
    log.write(json.dumps([v.decode() for v in request.values] + [request.train]) + "\\n")
    log.flush()
    write_frame(sys.stdout.buffer, encode_result(BatchResult(len(request.values), [], WriteResult(0, 0), 0,
                                                             request.train)))
'''


class FakeChildren(PipelineProcess):
    """PipelineProcess over a fake child that logs each request it answers (one log for all children)."""

    def __init__(self, tmp: Path) -> None:
        self.script, self.log = tmp / "child.py", tmp / "requests.jsonl"
        self.script.write_text(FAKE_CHILD)
        self.children = 0
        super().__init__(metrics_port=1)

    def _start(self) -> None:
        self.children += 1
        self._proc = subprocess.Popen([sys.executable, str(self.script), str(self.log)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path.cwd())
        assert self._proc.stdout is not None
        json.loads(read_frame(self._proc.stdout))  # the ready frame

    def requests(self) -> list[list]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def test_a_new_child_gets_the_slices_the_dead_one_had_staged_before_the_call_that_trains(tmp_path: Path) -> None:
    pipeline = FakeChildren(tmp_path)
    try:
        assert not pipeline.process([b"a"], train=False).trained
        assert not pipeline.process([b"b"], train=False).trained
        with pytest.raises(PipelineError):
            pipeline.process([b"die"], train=False)  # the child dies mid-call
        assert pipeline.process([b"c"], train=True, attempt=1).trained
        assert pipeline.children == 2
        # the second child: a and b staged again, then c with the training
        assert pipeline.requests() == [["a", False], ["b", False], ["a", False], ["b", False], ["c", True]]
        pipeline.assign([("actions", 0)])  # a control frame neither stages nor clears
        assert pipeline.process([b"d"], train=False).trained is False
        assert len(pipeline._staged) == 1  # the trained ones were let go, d waits for its training
    finally:
        pipeline.close()
