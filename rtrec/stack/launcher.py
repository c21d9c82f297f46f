"""``rtrec up``: the whole stack on this machine, every server on a free loopback port.

Starts the broker and Redis, creates the topics, then each rtrec component that exists in this
installation (parameter-server shards, stream worker, serving, simulator) as a child process
configured through ``RTREC_*`` variables, and collects their endpoints into the ready line of
CONTRACT.md. Everything it started is stopped with it.

Supervision (:meth:`LocalStack.supervise`, called in a loop by ``rtrec up``): a process that dies
is started again after a backoff, on the ports it had, so the ready line stays valid and nobody
needs re-pointing; one that dies more than ``RTREC_STACK_MAX_RESTARTS`` times within
``RTREC_STACK_RESTART_WINDOW_S`` stops the stack (rtrec.stack.supervision). The restarts are
counted in ``rtrec_stack_restarts_total{component}``, served by the launcher's own metrics
endpoint, the last one of the ready line's ``metrics``.

Ephemeral (``data_dir=None``): the broker and Redis keep everything in memory and the rest lives in
a temporary folder deleted at stop. Durable (``data_dir=DIR``): the state stays in DIR, and a stack
started again on DIR resumes where the last one stopped::

    DIR/broker/          the broker's log, topics and committed offsets (rtrec.stack.object_store)
    DIR/redis/           Redis's append-only file (features, catalogue, dedupe marks)
    DIR/snapshots-<k>/   parameter-server shard k's snapshots (restored by the shard at start)
    DIR/worker-<n>/      worker n's Faust data folder
    DIR/logs/            every process's log (appended to across restarts)
    DIR/stack.json       the loopback ports (reused while free, so URLs stay valid) and the shard count
    DIR/.lock            held while a stack runs on DIR: a second one is refused
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from features.config import FeatureConfig
from rtrec.errors import StackError
from rtrec.settings import Settings
from rtrec.stack.broker import Broker, ensure_topics, s3_environment
from rtrec.stack.object_store import ObjectStoreServer
from rtrec.stack.redis_cluster import LocalRedisCluster
from rtrec.stack.process import ManagedProcess, free_port, wait_for_port
from rtrec.stack.redis_server import RedisServer
from rtrec.stack.supervision import ShouldStop, StackMetrics, Supervisor

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
    workdir: Path | None = None  # logs and scratch; None = a temporary folder (DIR/logs when durable)
    data_dir: Path | None = None  # durable: keep all state here and resume it; None = ephemeral
    redis_cluster: int = 0  # > 0: a Redis Cluster of this many masters instead of one Redis (ephemeral only)


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
        self.data_dir = self.options.data_dir.resolve() if self.options.data_dir is not None else None
        self._lock: DataDirLock | None = None
        if self.data_dir is not None:
            self._lock = DataDirLock(self.data_dir)  # before anything reads or writes the folder
            try:
                self.state = StackState(self.data_dir / "stack.json")
                self.state.check_shards(self.options.param_servers)
            except BaseException:
                self._lock.release()
                raise
        else:
            self.state = StackState(None)
        self._own_workdir = self.options.workdir is None and self.data_dir is None
        self.workdir = (self.options.workdir or (self.data_dir / "logs" if self.data_dir is not None
                                                 else Path(tempfile.mkdtemp(prefix="rtrec-stack-"))))
        self.workdir.mkdir(parents=True, exist_ok=True)
        #: Where the components' state goes: the data folder, or the temporary workdir.
        self.state_dir = self.data_dir or self.workdir
        self.object_store: ObjectStoreServer | None = None
        if self.data_dir is not None:
            self.object_store = ObjectStoreServer(self.data_dir / "broker", self.workdir / "object-store.log",
                                                  port=self.state.port("object-store"))
            self.broker = Broker(self.workdir, port=self.state.port("kafka"), storage="s3://tansu/",
                                 storage_env=s3_environment(self.object_store.endpoint))
        else:
            self.broker = Broker(self.workdir)
        self.redis: RedisServer | LocalRedisCluster
        if self.options.redis_cluster:
            if self.data_dir is not None:
                raise StackError("a local Redis Cluster is in memory only: use it with an ephemeral stack")
            self.redis = LocalRedisCluster(self.workdir, self.options.redis_cluster, binary=settings.redis_server_bin)
        else:
            self.redis = RedisServer(self.workdir, port=self.state.port("redis"), binary=settings.redis_server_bin,
                                     data_dir=self.data_dir / "redis" if self.data_dir is not None else None)
        self.children: list[ManagedProcess] = []
        self.info = ReadyInfo(kafka=self.broker.bootstrap, redis=self.redis.url)
        self.registry = CollectorRegistry()  # this process's metrics (the supervisor's)
        self.supervisor = Supervisor(StackMetrics(self.registry), settings.stack_max_restarts,
                                     settings.stack_restart_window_s)
        self._metrics_server: WSGIServer | None = None
        self._stopping = False

    @property
    def durable(self) -> bool:
        return self.data_dir is not None

    def start(self) -> ReadyInfo:
        """Start everything and return its endpoints; on any failure stop what started and raise."""
        log.info("local stack in %s (%s)", self.state_dir, "durable" if self.durable else "ephemeral")
        try:
            if (store := self.object_store) is not None:
                store.start()
                self.supervisor.watch(store.process, lambda _stop: store.start())
            self.broker.start()
            self._ensure_topics()
            self.supervisor.watch(self.broker.process, self._restart_broker)
            self._start_redis()
            self.state.record_shards(self.options.param_servers)
            if self.options.components:
                self._start_components()
            self.info.metrics.append(self._serve_metrics())
        except BaseException:
            self.stop()
            raise
        return self.info

    def _start_redis(self) -> None:
        """Start Redis (or the cluster's nodes) and have each process restarted if it dies."""
        redis = self.redis
        redis.start()
        if isinstance(redis, LocalRedisCluster):
            for k, process in enumerate(redis.processes):
                self.supervisor.watch(process, lambda _stop, k=k: redis.restart_node(k))
        else:
            self.supervisor.watch(redis.process, lambda _stop: redis.start())

    def features_config(self) -> FeatureConfig:
        """The feature-store configuration the stack's components use (shards, hash tags)."""
        return FeatureConfig.from_settings(self.settings.model_copy(update=self._feature_env_settings()),
                                           redis_url=self.info.redis)

    def _feature_env_settings(self) -> dict:
        """Settings the stack gives its components about the feature store: one shard per cluster
        master unless ``RTREC_FEATURE_SHARDS`` asks for more."""
        shards = self.settings.feature_shards
        if self.options.redis_cluster and shards == 1:
            shards = self.options.redis_cluster
        return {"feature_shards": shards}

    def supervise(self, should_stop: ShouldStop = lambda: False) -> None:
        """Restart what died and is due (see rtrec.stack.supervision); call it every fraction of a
        second from the thread that will stop the stack. Raises ComponentKeepsDying (a StackError)
        when a process died more often than the settings allow."""
        if not self._stopping:
            self.supervisor.check(lambda: self._stopping or should_stop())

    def _ensure_topics(self) -> None:
        ensure_topics(self.broker.bootstrap, [self.settings.actions_topic, self.settings.dlq_topic],
                      self.settings.topic_partitions)

    def _restart_broker(self, _should_stop: ShouldStop) -> None:
        self.broker.start()
        self._ensure_topics()  # an in-memory broker comes back empty

    def _serve_metrics(self) -> str:
        """Serve this process's metrics on its recorded port (a free one the first time); its URL."""
        port = self.state.port("stack.metrics")
        host = self.settings.metrics_host
        self._metrics_server, _thread = start_http_server(port, addr=host, registry=self.registry)
        url = f"http://{host}:{port}/metrics"
        log.info("stack metrics at %s", url)
        return url

    def child_env(self, **extra: str) -> dict[str, str]:
        """Environment of a child: this one, pointed at the stack's servers, plus ``extra``."""
        env = dict(os.environ)
        env.update({
            "RTREC_KAFKA": self.info.kafka,
            "RTREC_REDIS_URL": self.info.redis,
            "RTREC_ACTIONS_TOPIC": self.settings.actions_topic,
            "RTREC_DLQ_TOPIC": self.settings.dlq_topic,
            "RTREC_LOG_LEVEL": self.settings.log_level,
            "RTREC_FEATURE_SHARDS": str(self._feature_env_settings()["feature_shards"]),
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
                    "RTREC_PS_PORT": self._server_port(f"param-server-{shard}"),
                    "RTREC_SNAPSHOT_DIR": str(self.state_dir / f"snapshots-{shard}"),
                }, pin=("RTREC_PS_PORT", "param_server"))
                self.info.param_server.append(ready["param_server"])
        if component_available("stream_workers.main"):
            for n in range(opts.workers):
                self._spawn(f"worker-{n}", ["worker"], ready_line=True,
                            extra={"RTREC_DATA_DIR": str(self.state_dir / f"worker-{n}")})
        if component_available("serving.main"):
            ready = self._spawn("serving", ["serve"], ready_line=True,
                                extra={"RTREC_HTTP_PORT": self._server_port("serving")},
                                pin=("RTREC_HTTP_PORT", "serving"))
            self.info.serving = ready["serving"]
        if opts.simulate:
            self._spawn("simulate", ["simulate", "--rate", str(opts.simulate_rate), "--duration", "1e9"],
                        ready_line=False)

    def _server_port(self, name: str) -> str:
        """A component's listening port: the one recorded in the data folder, or 0 (it picks one)."""
        return str(self.state.port(name)) if self.durable else "0"

    def _spawn(self, name: str, args: list[str], ready_line: bool, extra: dict[str, str] | None = None,
               pin: tuple[str, str] | None = None) -> dict:
        """Start ``rtrec <args>``, wait until it is ready (its JSON ready line, or its metrics port) and
        supervise it. ``pin``: (variable, ready-line key): the port the child reports under the key
        (it may have picked it, given 0) is recorded and set in the variable for its restarts."""
        metrics_port = self.state.port(f"{name}.metrics")
        env = self.child_env(RTREC_METRICS_PORT=str(metrics_port), **(extra or {}))
        child = ManagedProcess(name, [sys.executable, "-m", "rtrec.cli", *args], self.workdir / f"{name}.log",
                               env=env, stdout=subprocess.PIPE if ready_line else None)
        self.children.append(child)
        ready = self._start_child(child, ready_line)
        if pin is not None:
            variable, key = pin
            port = int(ready[key].rsplit(":", 1)[1])
            env[variable] = str(port)
            self.state.record(name, port)
        if ready.get("metrics"):
            self.info.metrics.append(ready["metrics"])
        log.info("%s ready: %s", name, ready)
        self.supervisor.watch(child, lambda should_stop: self._restart_child(child, ready_line, ready, should_stop))
        return ready

    def _start_child(self, child: ManagedProcess, ready_line: bool,
                     should_stop: ShouldStop = lambda: False) -> dict:
        proc = child.start()
        if ready_line:
            return read_ready_line(child, READY_TIMEOUT_S, should_stop)
        metrics_port = int((child.env or {})["RTREC_METRICS_PORT"])
        wait_for_port("127.0.0.1", metrics_port, READY_TIMEOUT_S, proc, should_stop)
        return {"metrics": f"http://127.0.0.1:{metrics_port}/metrics"}

    def _restart_child(self, child: ManagedProcess, ready_line: bool, first: dict, should_stop: ShouldStop) -> None:
        """Start a component again; it must be ready at the addresses of its first ready line."""
        ready = self._start_child(child, ready_line, should_stop)
        moved = {key: ready.get(key) for key, value in first.items() if ready.get(key) != value}
        if moved:
            raise StackError(f"{child.name} came back at {moved}, not at the ready line's {first}")

    def check_children(self) -> str | None:
        """The name and log tail of a child that died, or None while all run."""
        for child in self.children:
            if not child.alive():
                return f"{child.name} exited with code {child.proc.returncode if child.proc else '?'}:\n{child.tail()}"
        return None

    def stop(self) -> None:
        """Stop the components first (so they can flush and snapshot), then Redis, the broker and its
        storage; an ephemeral stack's folder is deleted, a durable one's kept. Nothing is restarted
        from here on."""
        self._stopping = True
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        for child in reversed(self.children):
            child.stop(grace_s=10.0)
        self.redis.stop()
        self.broker.stop()
        if self.object_store is not None:
            self.object_store.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class DataDirLock:
    """An exclusive ``flock`` on ``DIR/.lock`` for as long as a stack runs on DIR.

    Two stacks on one folder would interleave two brokers' and two Redises' writes; the second is
    refused instead. The kernel drops the lock when the process dies, so a crash leaves none behind.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / ".lock"
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise StackError(f"{data_dir} is in use by another rtrec stack (pid {holder}); stop it first "
                             "or give another --data-dir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


#: Version of a data folder's layout (what lives where, the fields of stack.json). A folder written
#: by an rtrec with another version is refused before anything in it is read or started.
DATA_DIR_FORMAT = 1


class StackState:
    """What a durable stack keeps about itself in ``DIR/stack.json``: ports by name, shard count.

    A recorded port is used again while nothing listens on it, so clients' URLs stay valid across
    restarts; otherwise a free one is taken and recorded. With ``path=None`` (ephemeral) nothing is
    kept and every port is fresh.

    >>> state = StackState(None)
    >>> state.port("kafka") != state.port("redis")
    True
    """

    def __init__(self, path: Path | None, host: str = "127.0.0.1") -> None:
        self.path, self.host = path, host
        self.data: dict = {"ports": {}}
        if path is not None and path.exists():
            try:
                self.data = {"ports": {}, **json.loads(path.read_text())}
            except ValueError as exc:
                raise StackError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
            found = self.data.get("format", DATA_DIR_FORMAT)  # the first durable stacks wrote none
            if found != DATA_DIR_FORMAT:
                raise StackError(
                    f"{path.parent} was written by an rtrec whose data-folder format is {found!r}; this one "
                    f"reads format {DATA_DIR_FORMAT}. Start it with the rtrec that wrote it, or use another "
                    "--data-dir (or --ephemeral); nothing in it was read or changed")
        self.data["format"] = DATA_DIR_FORMAT
        self._taken: set[int] = set()

    def port(self, name: str) -> int:
        """The port recorded for ``name`` if it is free now, else a new free one (then recorded)."""
        recorded = self.data["ports"].get(name)
        if isinstance(recorded, int) and recorded not in self._taken and port_is_free(self.host, recorded):
            port = recorded
        else:
            reserved = set(self.data["ports"].values()) | self._taken
            port = free_port(self.host)
            while port in reserved:  # another name's recorded port, free only while it is not started
                port = free_port(self.host)
            if recorded is not None:
                log.warning("port %s of %s is taken; using %d (clients must use the new URL)", recorded, name, port)
            self.data["ports"][name] = port
            self._save()
        self._taken.add(port)
        return port

    def check_shards(self, param_servers: int) -> None:
        """Refuse another shard count than the folder's snapshots were written with (IDs route by it)."""
        recorded = self.data.get("param_servers")
        if recorded is not None and recorded != param_servers:
            raise StackError(f"{self.path.parent if self.path else '?'} holds the state of {recorded} "
                             f"parameter-server shard(s); start it with --param-servers {recorded}")

    def record(self, name: str, port: int) -> None:
        """Record the port ``name`` listens on (one it picked itself), so it is used again."""
        self._taken.add(port)
        if self.data["ports"].get(name) != port:
            self.data["ports"][name] = port
            self._save()

    def record_shards(self, param_servers: int) -> None:
        if self.data.get("param_servers") != param_servers:
            self.data["param_servers"] = param_servers
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (a socket in TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def read_ready_line(child: ManagedProcess, timeout_s: float, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Read the child's first JSON ``{"ready": true, ...}`` line; later stdout goes to its log.
    Raises StackError when it exits first, takes longer than ``timeout_s``, or ``should_stop()``."""
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
        if should_stop():
            raise StackError(f"stopped while waiting for {child.name} to be ready")
        time.sleep(0.05)
    return result
