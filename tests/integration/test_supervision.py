"""Supervision of the local stack: a component killed with SIGKILL comes back on the ports it had,
the restart is counted, and a component that keeps dying stops the stack.

Two stacks, both real:

* ``rtrec up --ephemeral --rate 100`` as a user runs it, with ``RTREC_STACK_MAX_RESTARTS=1`` (one
  restart per component within the window): the worker, serving and a parameter-server shard are
  each killed once and must come back at the ready line's addresses, the worker losing no event
  produced while it was down; then the simulator is killed twice, which must stop the stack with
  an error that names it. The tests share the stack (it takes ~20 s to start on two cores) and the
  last one ends it.
* A durable :class:`LocalStack` of the broker, its object store and Redis only, supervised from the
  test's own loop: each is killed and must come back on its port with its data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import redis

from features.reader import FeatureReader
from param_server.client import ParamServerClient
from producers.client import EventProducer
from rtrec.metrics_http import scrape
from rtrec.settings import load_settings
from rtrec.stack.launcher import LocalStack, StackOptions
from rtrec.stack.prometheus import targets_of
from rtrec.stack.supervision import ComponentKeepsDying
from tests.integration.test_worker import traffic
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.2)


def restarts(metrics_url: str, component: str) -> float:
    return scrape(metrics_url).get(f'rtrec_stack_restarts_total{{component={component}}}', -1.0)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------------------
# rtrec up


class RtrecUp:
    """``rtrec up --ephemeral --rate 100`` with one restart allowed per component; stderr to a file."""

    def __init__(self, tmp: Path) -> None:
        self.stderr_path = tmp / "rtrec-up.log"
        self._stderr = open(self.stderr_path, "wb")
        env = {**os.environ, "RTREC_STACK_MAX_RESTARTS": "1", "RTREC_STACK_RESTART_WINDOW_S": "600"}
        self.proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "up", "--ephemeral", "--rate", "100"],
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env, text=True, cwd=ROOT)
        try:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"rtrec up exited with {self.proc.wait()} before it was ready:\n{self.stderr()[-3000:]}"
            self.ready = json.loads(line)
            #: Production job name -> metrics URL, told apart by what each endpoint exports.
            self.metrics = {job: f"http://{hosts[0]}/metrics"
                            for job, hosts in targets_of(self.ready["metrics"], timeout_s=30).items()}
        except BaseException:
            self.stop()  # no fixture will
            raise

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def component_pid(self, command: str) -> int | None:
        """The pid of the child of ``rtrec up`` whose command line contains ``command``."""
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if command in cmdline:
                    return int(pid)
        return None

    def kill(self, command: str) -> int:
        """SIGKILL the component; its pid."""
        pid = self.component_pid(command)
        assert pid is not None, f"no child runs {command!r}"
        os.kill(pid, signal.SIGKILL)
        return pid

    def restarts(self, component: str) -> float:
        return restarts(self.metrics["rtrec-stack"], component)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtrecUp]:
    stack = RtrecUp(tmp_path_factory.mktemp("supervised"))
    try:
        yield stack
    finally:
        stack.stop()


def test_the_ready_line_lists_the_launchers_own_metrics_endpoint(up: RtrecUp):
    assert len(up.ready["metrics"]) == 5 and len(set(up.ready["metrics"])) == 5
    assert sorted(up.metrics) == ["rtrec-param-server", "rtrec-serving", "rtrec-simulator", "rtrec-stack",
                                  "rtrec-worker"]
    for component in ("broker", "redis", "param-server-0", "worker-0", "serving", "simulate"):
        assert up.restarts(component) == 0, component


def test_a_killed_worker_comes_back_at_its_metrics_url_and_loses_no_event_sent_meanwhile(up: RtrecUp):
    run = uuid.uuid4().hex[:6]
    users = [f"{run}-u{u}" for u in range(6)]
    reader = FeatureReader(redis.Redis.from_url(up.ready["redis"]))
    old = up.kill("rtrec.cli worker")
    with EventProducer(up.ready["kafka"], "actions") as producer:
        producer.send_many(traffic(run))
    # Nothing consumed them yet: the killed worker is gone and a new one needs ~10 s to start.
    assert all(u["counts"].get("impression_24h", 0) == 0 for u in reader.users(users))
    wait_until(lambda: up.restarts("worker-0") == 1, 30, "the worker's restart")
    wait_until(lambda: answers(up.metrics["rtrec-worker"]), 60, "the worker's metrics at the same URL")
    wait_until(lambda: all(u["counts"].get("impression_24h") == 10 and u["counts"].get("click_24h") == 5
                           for u in reader.users(users)), 90, "the events sent while the worker was down")
    new = up.component_pid("rtrec.cli worker")
    assert new is not None and new != old
    assert up.proc.poll() is None and up.restarts("worker-0") == 1
    assert "worker-0 exited with signal SIGKILL" in up.stderr()


def test_a_killed_serving_answers_again_at_the_same_url(up: RtrecUp):
    healthz = f"{up.ready['serving']}/healthz"
    assert answers(healthz)
    old = up.kill("rtrec.cli serve")
    wait_until(lambda: up.restarts("serving") == 1, 30, "serving's restart")
    wait_until(lambda: answers(healthz), 60, "serving at the same URL")
    assert up.component_pid("rtrec.cli serve") not in (None, old)
    assert httpx.post(f"{up.ready['serving']}/recommend", json={"user_id": "u1", "k": 5}).status_code == 200
    assert up.proc.poll() is None and up.restarts("serving") == 1


def test_a_killed_parameter_server_shard_answers_again_at_the_same_address(up: RtrecUp):
    host, port = up.ready["param_server"][0].rsplit(":", 1)
    up.kill("rtrec.cli param-server")
    wait_until(lambda: up.restarts("param-server-0") == 1, 30, "the shard's restart")
    wait_until(lambda: answers(up.metrics["rtrec-param-server"]), 60, "the shard's metrics at the same URL")
    with ParamServerClient(host, int(port)) as client:
        assert "restored_offsets" in client.stats()
    assert up.proc.poll() is None


def test_a_component_that_keeps_dying_stops_the_stack_naming_it(up: RtrecUp):
    """Last in the module: it ends the shared stack."""
    first = up.kill("rtrec.cli simulate")
    wait_until(lambda: up.restarts("simulate") == 1, 30, "the simulator's restart")
    wait_until(lambda: answers(up.metrics["rtrec-simulator"]), 60, "the simulator's metrics at the same URL")
    # the restart is over only when the supervisor says so (it polls for the metrics port, so it
    # may see it open after the test does): killed before, the death reads "did not come back"
    wait_until(lambda: "simulate is running again" in up.stderr(), 60, "the supervisor to finish the restart")
    assert up.component_pid("rtrec.cli simulate") not in (None, first)
    up.kill("rtrec.cli simulate")
    assert up.proc.wait(timeout=60) == 1
    err = up.stderr()
    assert "simulate exited with signal SIGKILL" in err and "a component keeps dying, stopping the stack" in err
    (line,) = [line for line in err.splitlines() if "a component keeps dying" in line]
    assert "stopping the stack: simulate exited with signal SIGKILL" in line
    assert "more than RTREC_STACK_MAX_RESTARTS=1" in err and "simulate.log" in err


# ---------------------------------------------------------------------------------------------
# the broker, its object store and Redis of a durable stack


def supervise_until(stack: LocalStack, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Run the stack's supervision, as ``rtrec up`` does, until ``condition()``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        stack.supervise()
        time.sleep(0.1)


def test_the_broker_its_object_store_and_redis_come_back_on_their_ports_with_their_data(tmp_path: Path):
    stack = LocalStack(load_settings(), StackOptions(components=False, simulate=False, data_dir=tmp_path / "data"))
    with stack:
        kafka, redis_url, metrics_url = stack.info.kafka, stack.info.redis, stack.info.metrics[-1]
        topic = f"supervised-{uuid.uuid4().hex[:6]}"
        with EventProducer(kafka, topic) as producer:
            producer.send_many(traffic("before", users=2))
        client = redis.Redis.from_url(redis_url)
        client.set("supervised", "kept")
        time.sleep(1.5)  # Redis fsyncs its append-only file once a second

        for process, name in ((stack.object_store.process, "object-store"), (stack.broker.process, "broker"),
                              (stack.redis.process, "redis")):
            os.kill(process.pid, signal.SIGKILL)
            supervise_until(stack, lambda: restarts(metrics_url, name) == 1, 60, f"{name}'s restart")
            assert process.alive()

        assert (stack.info.kafka, stack.info.redis) == (kafka, redis_url)
        assert client.get("supervised") == b"kept"
        with EventProducer(kafka, topic) as producer:
            producer.send_many(traffic("after", users=2))
        got = consume_all(kafka, topic, 2 * len(traffic("x", users=2)))
        assert {m["event_id"].split("-")[0] for m in got} == {"before", "after"}
        assert len(got) == 2 * len(traffic("x", users=2))


def test_a_component_killed_twice_with_one_restart_allowed_raises_naming_it_and_its_log(tmp_path: Path):
    settings = load_settings(stack_max_restarts=1)
    with LocalStack(settings, StackOptions(components=False, simulate=False, workdir=tmp_path)) as stack:
        metrics_url = stack.info.metrics[-1]
        os.kill(stack.redis.process.pid, signal.SIGKILL)
        supervise_until(stack, lambda: restarts(metrics_url, "redis") == 1, 30, "redis's restart")
        os.kill(stack.redis.process.pid, signal.SIGKILL)
        with pytest.raises(ComponentKeepsDying, match=r"(?s)^redis exited with signal SIGKILL.*"
                                                      r"more than RTREC_STACK_MAX_RESTARTS=1.*redis.log"):
            supervise_until(stack, lambda: False, 30, "redis to be given up")
        assert restarts(metrics_url, "redis") == 1


def test_nothing_is_restarted_once_the_stack_is_stopping(tmp_path: Path):
    stack = LocalStack(load_settings(), StackOptions(components=False, simulate=False, workdir=tmp_path))

    def restarted() -> float:
        return stack.registry.get_sample_value("rtrec_stack_restarts_total", {"component": "redis"}) or 0.0

    with stack:
        os.kill(stack.redis.process.pid, signal.SIGKILL)
        wait_until(lambda: not stack.redis.process.alive(), 10, "redis to die")
        stack.supervise()  # notes the death: a restart is due in 0.5 s
        time.sleep(0.6)
        stack.supervise(should_stop=lambda: True)  # the user's SIGTERM arrived meanwhile
        assert not stack.redis.process.alive() and restarted() == 0
        stack.supervise()  # without it, the restart was due
        assert stack.redis.process.alive() and restarted() == 1

        os.kill(stack.redis.process.pid, signal.SIGKILL)
        wait_until(lambda: not stack.redis.process.alive(), 10, "redis to die")
        stack.supervise()
        time.sleep(1.1)  # the second restart in a row waits 1 s
    stack.supervise()  # after stop(): nothing starts again
    assert not stack.redis.process.alive() and restarted() == 1
