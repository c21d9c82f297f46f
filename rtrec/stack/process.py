"""A child server process that dies with its owner and stops promptly.

Every server of the local stack (broker, Redis, rtrec components) runs through
:class:`ManagedProcess`: it is started in its own process group with a parent-death signal, so
neither Ctrl-C, SIGTERM nor a crashed owner leaves it behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Callable, Sequence

from rtrec.errors import StackError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None,
                  should_stop: Callable[[], bool] = lambda: False) -> None:
    """Block until something accepts TCP connections on ``host:port``, or raise StackError (also
    when ``should_stop()`` turns true: the owner is stopping)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"process exited with code {proc.returncode} before {host}:{port} opened")
        if should_stop():
            raise StackError(f"stopped while waiting for {host}:{port}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"nothing listening on {host}:{port} after {timeout_s:.0f} s")


def terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM a child (an ``rtrec`` command started with Popen) and wait for it; SIGKILL after
    ``grace_s`` seconds. A child that already exited is left as it is."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel for SIGKILL when the parent dies (Linux)."""
    os.setpgrp()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: process-group cleanup in stop() still applies
        pass


class ManagedProcess:
    """A named child process with a log file, started detached from the terminal's signals."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        stdout: int | IO | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self._stdout = stdout
        self.proc: subprocess.Popen | None = None
        self._log_file: IO | None = None

    def start(self) -> subprocess.Popen:
        """Start the process; its stderr (and stdout unless captured) go to ``log_path``.

        Called again after the process ended, it starts a new one with the same command, environment
        and log (appended to), once whatever the old one left in its process group is killed.
        """
        if self.proc is not None:
            if self.proc.poll() is None:
                raise StackError(f"{self.name} (pid {self.proc.pid}) is still running")
            self._release()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        log.info("starting %s: %s (log %s)", self.name, " ".join(self.argv), self.log_path)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout if self._stdout is not None else self._log_file,
            stderr=self._log_file,
            env=self.env,
            preexec_fn=_die_with_parent,
        )
        return self.proc

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process ended (negative: the signal that ended it), else None."""
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL the process group at once, and reap it."""
        if self.proc is not None:
            self._release()

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", self.name, self.proc.pid, grace_s)
        self._release()
        log.info("stopped %s (exit %s)", self.name, self.proc.returncode)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _release(self) -> None:
        """SIGKILL what is left of the process group (grandchildren too), reap it, close the log."""
        assert self.proc is not None
        self._signal_group(signal.SIGKILL)
        self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
