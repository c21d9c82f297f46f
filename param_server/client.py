"""A blocking client of one parameter-server shard, with the same methods as :class:`ParamStore`.

One TCP connection, requests one at a time (a lock makes the client safe to share between
threads). It is synchronous on purpose: the work per call is a few milliseconds of numpy on the
server, and asyncio callers wrap it in ``asyncio.to_thread``. After a connection error the next
call reconnects; a failed push is not retried (it may have been applied).

>>> from param_server.server import ServerThread
>>> from param_server.store import ParamStore
>>> from features.ids import feature_ids
>>> with ServerThread(ParamStore()) as running, ParamServerClient(running.host, running.port) as client:
...     ids = feature_ids(2, ["a", "b"])
...     client.push_many(ids, np.ones((2, 32), dtype=np.float32), ts=1.0)
...     client.pull_many(ids).shape
1
(2, 32)
"""

from __future__ import annotations

import socket
import threading
from typing import Mapping, Sequence

import numpy as np

from param_server.codec import delta_from_wire
from param_server.protocol import HEADER, Limits, Message, Op, decode_header, decode_payload, encode_frame
from param_server.store import Delta, DenseParams
from rtrec.errors import RtrecError

__all__ = ["ParamServerClient", "RemoteError", "RemoteValueError"]

REPLY_LIMITS = Limits(max_meta_bytes=64 << 20, max_body_bytes=16 << 30, max_arrays=1 << 15)


class RemoteError(RtrecError):
    """The server could not carry out a request; ``kind`` is its error class."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class RemoteValueError(RemoteError, ValueError):
    """The server rejected the request as invalid (the caller's mistake, as ValueError in process)."""


class ParamServerClient:
    """Talks to one shard at ``host:port``; methods mirror :class:`ParamStore`."""

    def __init__(self, host: str, port: int, token: str = "", timeout_s: float = 30.0) -> None:
        self.host, self.port, self.token, self.timeout_s = host, int(port), token, timeout_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "ParamServerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    # -- the store API -------------------------------------------------------------------------

    def pull_many(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (``float32 (n, dim)``), zeros for IDs without a row."""
        return self._call(Op.PULL, {}, {"ids": _ids(ids)}).arrays["rows"]

    def push_many(self, ids: np.ndarray, grads: np.ndarray, ts: float | np.ndarray | None = None,
                  offsets: Mapping[str, Mapping[int, int]] | None = None) -> int:
        """Send gradients for ``ids``; returns the shard's new version."""
        arrays = {"ids": _ids(ids), "grads": np.asarray(grads, dtype=np.float32)}
        args: dict = {"offsets": _offsets(offsets)}
        if ts is not None and np.ndim(ts):
            arrays["ts"] = np.asarray(ts, dtype=np.float64)
        else:
            args["ts"] = None if ts is None else float(ts)
        return int(self._call(Op.PUSH, args, arrays).args["version"])

    def delta(self, since: int = 0, wait_s: float = 0.0) -> Delta:
        """Rows changed and IDs evicted after version ``since``; with ``wait_s``, when nothing has
        changed yet the shard answers as soon as something does, or after ``wait_s`` (long-poll)."""
        reply = self._call(Op.DELTA, {"since": int(since), "wait_ms": round(wait_s * 1000)}, {})
        return delta_from_wire(reply.args, reply.arrays)

    def snapshot(self, offsets: Mapping[str, Mapping[int, int]] | None = None) -> str:
        """Ask the server for a snapshot now; returns its path on the server's disk."""
        return str(self._call(Op.SNAPSHOT, {"offsets": _offsets(offsets)}, {}).args["path"])

    def stats(self) -> dict:
        return self._call(Op.STATS, {}, {}).args

    def pull_dense(self, names: Sequence[str] | None = None) -> DenseParams:
        reply = self._call(Op.PULL_DENSE, {"names": None if names is None else list(names)}, {})
        return DenseParams(dict(reply.arrays), int(reply.args["version"]))

    def push_dense(self, tensors: Mapping[str, np.ndarray]) -> int:
        arrays = {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}
        return int(self._call(Op.PUSH_DENSE, {}, arrays).args["version"])

    def ping(self) -> int:
        """Round trip; returns the shard's version."""
        return int(self._call(Op.PING, {}, {}).args["version"])

    def epoch(self) -> str:
        """The shard's incarnation id (new at every start); a change means it restarted from its snapshot."""
        return str(self._call(Op.PING, {}, {}).args.get("epoch", ""))

    # -- transport -----------------------------------------------------------------------------

    def _call(self, op: Op, args: dict, arrays: dict[str, np.ndarray]) -> Message:
        frame = encode_frame(op, args, arrays, self.token)
        with self._lock:
            try:
                sock = self._connect()
                sock.sendall(b"".join(frame[:2]))
                for buffer in frame[2:]:
                    sock.sendall(buffer)
                reply = self._receive(sock)
            except (OSError, ValueError):
                self._disconnect()
                raise
            if reply.op == Op.ERROR and reply.args.get("closed"):
                self._disconnect()  # the server ends this connection after such an error
        if reply.op == Op.ERROR:
            kind = str(reply.args.get("kind", "invalid"))
            error = RemoteValueError if kind in ("invalid", "malformed") else RemoteError
            raise error(f"{self.host}:{self.port}: {reply.args.get('error')}", kind)
        return reply

    def _receive(self, sock: socket.socket) -> Message:
        op, n_arrays, meta_len, body_len = decode_header(bytes(_recv_exact(sock, HEADER.size)), REPLY_LIMITS)
        meta = _recv_exact(sock, meta_len)
        body = _recv_exact(sock, body_len)
        return decode_payload(op, n_arrays, bytes(meta), body)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    """Exactly ``n`` bytes into a fresh (writable) buffer, or ConnectionError."""
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:])
        if count == 0:
            raise ConnectionError(f"server closed the connection after {got} of {n} bytes")
        got += count
    return buffer


def _ids(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"ids must be a 1-d array of uint64 feature IDs, got {ids.dtype} {ids.shape}")
    return ids.astype(np.uint64, copy=False)


def _offsets(offsets: Mapping[str, Mapping[int, int]] | None) -> dict | None:
    if offsets is None:
        return None
    return {str(t): {str(int(p)): int(o) for p, o in parts.items()} for t, parts in offsets.items()}
