"""The worker's pipeline in a process of its own, so it does not share a GIL with Faust.

Measured on this 2-core machine: in one process the Faust loop and the pipeline thread take
turns on the GIL (the pipeline was busy 14.6 s and Faust 13 s of a 28 s run: serial). Split,
Faust fills the next batch while the pipeline process works on the current one.

Parent side: :class:`PipelineProcess` has the ``process(values, offsets)`` and ``assign(partitions)``
methods of :class:`~stream_workers.pipeline.BatchPipeline`. Child side: ``python -m
stream_workers.pipeline_process`` builds the pipeline from ``RTREC_*`` settings, serves the
worker's Prometheus metrics, and answers one result frame per request frame on stdin/stdout
(``stream_workers/batch_frames.py``). Its first frame is ``{"ready": true, "metrics": url}``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Collection, Mapping, Sequence

from rtrec.errors import RtrecError
from rtrec.stack.process import free_port
from stream_workers.batch_frames import (BatchRequest, decode_batch_request, decode_result, encode_error,
                                         encode_request, encode_result, read_frame, write_frame)
from features.writer import WriteResult
from stream_workers.pipeline import BatchPipeline, BatchResult
from stream_workers.validation import DeadLetter, UndecodableBatch

log = logging.getLogger(__name__)


class PipelineError(RtrecError):
    """The pipeline process failed a batch or died; the batch is retried (it was not acknowledged)."""


class PipelineProcess:
    """Runs batches through a child pipeline process; restarts the child if it dies."""

    def __init__(self, metrics_port: int = 0) -> None:
        # One port for the life of the worker, so its metrics URL survives a child restart.
        port = metrics_port or free_port()
        self.env = {**os.environ, "RTREC_METRICS_PORT": str(port)}
        self.metrics_url = ""
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        #: request frames staged in the child since its last training call: sent again to a new
        #: child (their features are idempotent), so a child that died loses no staged examples
        self._staged: list[bytes] = []
        self._held = 0  # how many of them the current child holds
        self._start()

    def process(self, values: Sequence[bytes | None],
                offsets: Mapping[str, Mapping[int, int]] | None = None,
                starts: Mapping[str, Mapping[int, int]] | None = None,
                partitions: Sequence[int] | None = None, *, attempt: int = 0,
                assignment: Collection[tuple[str, int]] | None = None,
                message_offsets: Sequence[int] | None = None, train: bool = True) -> BatchResult:
        """Send one batch and wait for its result (the GIL is free while waiting); ``attempt``,
        ``assignment``, ``message_offsets`` and ``train`` travel with it (see
        :meth:`stream_workers.pipeline.BatchPipeline.process`)."""
        frame = encode_request(values, offsets, starts, partitions, attempt=attempt,
                               assignment=assignment, message_offsets=message_offsets, train=train)
        with self._lock:
            result = self._exchange(frame)
            if values or train:  # a batch, not a control frame
                if result.trained:
                    self._staged.clear()
                else:
                    self._staged.append(frame)
                self._held = len(self._staged)
        return result

    def _exchange(self, frame: bytes) -> BatchResult:
        """One request frame to the child and its result; restarts a dead child first (and hands
        it the frames the dead one had staged). Call with the lock held."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()
            self._held = 0
            if self._staged:
                log.warning("staging %d slices again in the new pipeline process", len(self._staged))
        while self._held < len(self._staged):  # one by one: a failure resumes where it stopped
            self._send(self._staged[self._held])
            self._held += 1
        return self._send(frame)

    def _send(self, frame: bytes) -> BatchResult:
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        try:
            write_frame(self._proc.stdin, frame)
            result = decode_result(read_frame(self._proc.stdout))
        except (EOFError, BrokenPipeError, ValueError) as exc:
            log.error("pipeline process failed (%r); restarting it", exc)
            self._stop()
            raise PipelineError(f"pipeline process died: {exc!r}") from exc
        if isinstance(result, str):
            raise PipelineError(result)
        return result

    def assign(self, assignment: Collection[tuple[str, int]]) -> None:
        """Tell the pipeline process which partitions the consumer owns now (a frame without messages)."""
        self.process([], assignment=assignment, train=False)

    def report_undecodable(self, batches: Sequence[UndecodableBatch]) -> list[DeadLetter]:
        """Have the pipeline process count skipped record batches (its metrics are the worker's);
        returns their dead letters."""
        with self._lock:
            return self._exchange(encode_request([], None, undecodable=batches, train=False)).dead_letters

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "stream_workers.pipeline_process"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env)
        assert self._proc.stdout is not None
        try:
            ready = json.loads(read_frame(self._proc.stdout))
        except (EOFError, ValueError) as exc:
            code = self._proc.wait()
            raise PipelineError(f"pipeline process exited with code {code} before it was ready") from exc
        self.metrics_url = ready["metrics"]
        log.info("pipeline process %d ready; metrics at %s", self._proc.pid, self.metrics_url)

    def _stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()  # the child's read ends: it exits after its batch
            except BrokenPipeError:
                pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def child_main() -> int:
    """The child: serve batches from stdin until it closes. Only frames go to the real stdout."""
    # Stop only when the parent closes our stdin (after its last batch), never mid-batch on a
    # signal meant for the whole process group; if the parent is killed, stdin closes too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    frames_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print() cannot corrupt a frame
    from prometheus_client import REGISTRY

    from features.redis_metrics import RedisMemoryCollector, scrape_client
    from rtrec.logs import configure_logging
    from rtrec.metrics_http import serve_metrics
    from rtrec.settings import load_settings
    from stream_workers.build import build_pipeline
    from stream_workers.metrics import ConsumerLagMonitor, JoinerCollector

    settings = load_settings()
    configure_logging(settings.log_level)
    pipeline = build_pipeline(settings)
    lag = ConsumerLagMonitor(settings.kafka, settings.worker_group, settings.actions_topic).start()
    pipeline.on_assignment = lag.assign  # each batch brings the partitions this worker owns
    REGISTRY.register(JoinerCollector(pipeline.joiner))
    REGISTRY.register(RedisMemoryCollector(scrape_client(pipeline.writer.client)))
    metrics_url = serve_metrics(settings.metrics_port, settings.metrics_host)
    write_frame(frames_out, json.dumps({"ready": True, "metrics": metrics_url}).encode())
    frames_in = sys.stdin.buffer
    while True:
        try:
            request = decode_batch_request(read_frame(frames_in))
        except EOFError:
            return 0
        write_frame(frames_out, answer(pipeline, request))


def answer(pipeline: BatchPipeline, request: BatchRequest) -> bytes:
    """The result frame of one request: a batch run through ``pipeline``, or an assignment update."""
    if not request.values and not request.train:  # the assignment or skipped record batches
        # (a failed batch's kept examples stay)
        if request.assignment is not None:
            pipeline.assign(request.assignment)
            try:  # a Redis that restarted behind an idle partition gets what it lost back now
                pipeline.reapply_lost(request.assignment)
            except Exception:  # noqa: BLE001 -- Redis or Kafka away: the next report or batch tries again
                log.warning("could not check the feature store's applied offsets", exc_info=True)
        letters = pipeline.report_undecodable(request.undecodable)
        return encode_result(BatchResult(0, letters, WriteResult(0, 0), 0))
    try:
        return encode_result(pipeline.process(request.values, request.offsets, request.starts, request.partitions,
                                              attempt=request.attempt, assignment=request.assignment,
                                              message_offsets=request.message_offsets, train=request.train))
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, which retries the batch
        log.exception("batch of %d failed (attempt %d)", len(request.values), request.attempt)
        return encode_error(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(child_main())
