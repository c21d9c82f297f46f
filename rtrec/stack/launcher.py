"""``rtrec up``: the whole stack on this machine, every server on a free loopback port.

Starts the broker and Redis, creates the topics, then each rtrec component that exists in this
installation (parameter-server shards, stream worker, serving, simulator) as a child process
configured through ``RTREC_*`` variables, and collects their endpoints into the ready line of
CONTRACT.md. Everything it started is stopped with it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rtrec.errors import StackError
from rtrec.settings import Settings
from rtrec.stack.broker import Broker, ensure_topics
from rtrec.stack.process import ManagedProcess, free_port, wait_for_port
from rtrec.stack.redis_server import RedisServer

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0


@dataclass
class StackOptions:
    """What ``rtrec up`` starts besides the broker and Redis."""

    simulate: bool = True
    simulate_rate: float = 200.0
    param_servers: int = 1
    workers: int = 1
    components: bool = True  # False: broker and Redis only (tests)
    workdir: Path | None = None


@dataclass
class ReadyInfo:
    """Endpoints of the running stack; ``as_line()`` is the ready line of CONTRACT.md."""

    kafka: str
    redis: str
    param_server: list[str] = field(default_factory=list)
    serving: str | None = None
    metrics: list[str] = field(default_factory=list)

    def as_line(self) -> str:
        out: dict = {"ready": True, "kafka": self.kafka, "redis": self.redis}
        if self.param_server:
            out["param_server"] = self.param_server
        if self.serving:
            out["serving"] = self.serving
        out["metrics"] = self.metrics
        return json.dumps(out)


def component_available(module: str) -> bool:
    """True when the module that implements a component is part of this installation."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LocalStack:
    """Broker, Redis and rtrec components as child processes; use as a context manager."""

    def __init__(self, settings: Settings, options: StackOptions | None = None) -> None:
        self.settings = settings
        self.options = options or StackOptions()
        self._own_workdir = self.options.workdir is None
        self.workdir = self.options.workdir or Path(tempfile.mkdtemp(prefix="rtrec-stack-"))
        self.broker = Broker(self.workdir)
        self.redis = RedisServer(self.workdir, binary=settings.redis_server_bin)
        self.children: list[ManagedProcess] = []
        self.info = ReadyInfo(kafka=self.broker.bootstrap, redis=self.redis.url)

    def start(self) -> ReadyInfo:
        """Start everything and return its endpoints; on any failure stop what started and raise."""
        log.info("local stack in %s", self.workdir)
        try:
            self.broker.start()
            self.redis.start()
            ensure_topics(self.broker.bootstrap, [self.settings.actions_topic, self.settings.dlq_topic],
                          self.settings.topic_partitions)
            if self.options.components:
                self._start_components()
        except BaseException:
            self.stop()
            raise
        return self.info

    def child_env(self, **extra: str) -> dict[str, str]:
        """Environment of a child: this one, pointed at the stack's servers, plus ``extra``."""
        env = dict(os.environ)
        env.update({
            "RTREC_KAFKA": self.info.kafka,
            "RTREC_REDIS_URL": self.info.redis,
            "RTREC_ACTIONS_TOPIC": self.settings.actions_topic,
            "RTREC_DLQ_TOPIC": self.settings.dlq_topic,
            "RTREC_LOG_LEVEL": self.settings.log_level,
        })
        if self.info.param_server:
            env["RTREC_PARAM_SERVERS"] = ",".join(self.info.param_server)
        env.update(extra)
        return env

    def _start_components(self) -> None:
        opts = self.options
        if component_available("param_server.main"):
            for shard in range(opts.param_servers):
                ready = self._spawn(f"param-server-{shard}", ["param-server"], ready_line=True, extra={
                    "RTREC_PS_SHARD": str(shard), "RTREC_PS_NUM_SHARDS": str(opts.param_servers),
                    "RTREC_PS_PORT": "0", "RTREC_SNAPSHOT_DIR": str(self.workdir / f"snapshots-{shard}"),
                })
                self.info.param_server.append(ready["param_server"])
        if component_available("stream_workers.main"):
            for n in range(opts.workers):
                self._spawn(f"worker-{n}", ["worker"], ready_line=True,
                            extra={"RTREC_DATA_DIR": str(self.workdir / f"worker-{n}")})
        if component_available("serving.main"):
            ready = self._spawn("serving", ["serve"], ready_line=True, extra={"RTREC_HTTP_PORT": "0"})
            self.info.serving = ready["serving"]
        if opts.simulate:
            self._spawn("simulate", ["simulate", "--rate", str(opts.simulate_rate), "--duration", "1e9"],
                        ready_line=False)

    def _spawn(self, name: str, args: list[str], ready_line: bool, extra: dict[str, str] | None = None) -> dict:
        """Start ``rtrec <args>`` and wait until it is ready: its JSON ready line, or its metrics port."""
        metrics_port = free_port()
        env = self.child_env(RTREC_METRICS_PORT=str(metrics_port), **(extra or {}))
        child = ManagedProcess(name, [sys.executable, "-m", "rtrec.cli", *args], self.workdir / f"{name}.log",
                               env=env, stdout=subprocess.PIPE if ready_line else None)
        self.children.append(child)
        proc = child.start()
        if ready_line:
            ready = read_ready_line(child, READY_TIMEOUT_S)
        else:
            wait_for_port("127.0.0.1", metrics_port, READY_TIMEOUT_S, proc)
            ready = {"metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
        if ready.get("metrics"):
            self.info.metrics.append(ready["metrics"])
        log.info("%s ready: %s", name, ready)
        return ready

    def check_children(self) -> str | None:
        """The name and log tail of a child that died, or None while all run."""
        for child in self.children:
            if not child.alive():
                return f"{child.name} exited with code {child.proc.returncode if child.proc else '?'}:\n{child.tail()}"
        return None

    def stop(self) -> None:
        """Stop the components first (so they can flush and snapshot), then Redis and the broker."""
        for child in reversed(self.children):
            child.stop(grace_s=10.0)
        self.redis.stop()
        self.broker.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_ready_line(child: ManagedProcess, timeout_s: float) -> dict:
    """Read the child's first JSON ``{"ready": true, ...}`` line; later stdout goes to its log."""
    assert child.proc is not None and child.proc.stdout is not None
    result: dict = {}

    def reader() -> None:
        stream = child.proc.stdout
        for raw in stream:
            text = raw.decode(errors="replace")
            line = text[text.find("{"):].strip() if "{" in text else ""  # Faust may prefix terminal codes
            if not result and line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    obj = {}
                if obj.get("ready"):
                    result.update(obj)
                    continue
            with child.log_path.open("ab") as f:
                f.write(raw)

    threading.Thread(target=reader, name=f"{child.name}-stdout", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not result:
        if not child.alive():
            raise StackError(f"{child.name} exited before it was ready:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"{child.name} not ready after {timeout_s:.0f} s:\n{child.tail()}")
        time.sleep(0.05)
    return result
