"""The network face of one shard: an asyncio TCP server speaking :mod:`param_server.protocol`.

Requests are handled one at a time on the event loop (the store is not thread-safe and the work
is numpy, so there is nothing to gain from threads); a snapshot copies the state on the loop and
writes the file in a worker thread. A DELTA may long-poll (``wait_ms``): when nothing changed
since its version it waits, without holding the loop, until a request changes the store or the
wait ends, so serving learns of a training step as it lands instead of on its next timer tick.
Every request is validated; a bad one gets an error reply and the server keeps serving. A frame
whose header cannot be trusted (bad magic, oversized, truncated) also closes that connection,
since the byte stream can no longer be followed.

>>> import asyncio
>>> from param_server.client import ParamServerClient
>>> async def demo():
...     server = ParamServer(ParamStore(), port=0)
...     host, port = await server.start()
...     client = ParamServerClient(host, port)
...     stats = await asyncio.to_thread(client.stats)
...     client.close(); await server.close()
...     return stats["version"]
>>> asyncio.run(demo())
0
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from typing import Callable

import numpy as np

from param_server.codec import delta_to_wire, offsets_from_wire, require_array
from param_server.protocol import HEADER, Limits, Message, Op, ProtocolError, decode_header, decode_payload, encode_frame
from param_server.snapshot import write_snapshot
from param_server.store import ParamStore

__all__ = ["ParamServer", "ServerThread"]

log = logging.getLogger(__name__)

#: The longest wait a DELTA may ask for (``wait_ms``), well under the clients' socket timeout.
MAX_WAIT_MS = 10_000


class ParamServer:
    """Serves a :class:`ParamStore` over TCP (loopback by default), optionally behind a shared token."""

    def __init__(self, store: ParamStore, host: str = "127.0.0.1", port: int = 0, token: str = "",
                 limits: Limits = Limits(), metrics: object | None = None, snapshot_keep: int = 3) -> None:
        self.store = store
        self.host, self.port = host, port
        self.token = token
        self.limits = limits
        self.metrics = metrics
        self.snapshot_keep = snapshot_keep
        self._server: asyncio.base_events.Server | None = None
        self._snapshot_lock: asyncio.Lock | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._changed: asyncio.Future | None = None  # resolved (and replaced) when the version moves

    async def start(self) -> tuple[str, int]:
        """Start listening; returns the bound (host, port)."""
        self._snapshot_lock = asyncio.Lock()
        self._server = await asyncio.start_server(self._serve_connection, self.host, self.port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        log.info("parameter server shard %d/%d listening on %s:%d (auth %s)", self.store.shard,
                 self.store.num_shards, self.host, self.port, "on" if self.token else "off")
        return self.host, self.port

    async def close(self) -> None:
        """Stop accepting, drop open connections."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()

    async def snapshot(self, offsets: dict | None = None) -> str:
        """Copy the state on the loop, write it in a thread; one snapshot at a time."""
        if self.store.snapshot_dir is None:
            raise ValueError("the server has no snapshot directory configured")
        assert self._snapshot_lock is not None, "start() first"
        async with self._snapshot_lock:
            started = time.perf_counter()
            self.store.offsets = _merge(self.store, offsets)
            state = self.store.export_state()
            version = self.store.version
            path = await asyncio.to_thread(write_snapshot, self.store.snapshot_dir, state, self.snapshot_keep)
            self.store.mark_snapshot(path, version)
            seconds = time.perf_counter() - started
            log.info("snapshot v%d written to %s in %.2fs", version, path, seconds)
            if self.metrics is not None:
                self.metrics.observe_snapshot(seconds)
            return str(path)

    # -- connection handling -------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            while await self._serve_one(reader, writer, peer):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object) -> bool:
        """Read, handle and answer one request; False when the connection must end."""
        try:
            header = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                await self._reply_error(writer, ProtocolError("truncated header", "truncated"), peer, closing=True)
            return False
        try:
            op, n_arrays, meta_len, body_len = decode_header(header, self.limits)
        except ProtocolError as exc:
            await self._reply_error(writer, exc, peer, closing=True)
            return False
        try:
            meta = await reader.readexactly(meta_len)
            body = await reader.readexactly(body_len)
        except asyncio.IncompleteReadError:
            await self._reply_error(writer, ProtocolError("truncated frame", "truncated"), peer, closing=True)
            return False
        started = time.perf_counter()
        try:
            message = decode_payload(op, n_arrays, meta, body)
            self._authorise(message)
            version = self.store.version
            args, arrays, keys = await self._dispatch(message)
            if self.store.version != version:
                self._notify_change()
            reply = encode_frame(Op.OK, args, arrays)
        except ValueError as exc:  # ProtocolError included: the caller's mistake, keep the connection
            await self._reply_error(writer, exc, peer)
            return True
        except Exception as exc:  # a bug: log it with its traceback, count it, answer, keep serving
            log.exception("internal error handling %s from %s", op.name, peer)
            await self._reply_error(writer, exc, peer, kind="internal")
            return True
        if self.metrics is not None:
            self.metrics.observe_request(op.name.lower(), keys, time.perf_counter() - started)
        writer.writelines(reply)
        await writer.drain()
        return True

    async def _reply_error(self, writer: asyncio.StreamWriter, exc: Exception, peer: object,
                           kind: str | None = None, closing: bool = False) -> None:
        """Answer with an error; ``closing`` tells the client this connection ends after it."""
        kind = kind or getattr(exc, "kind", "invalid")
        log.warning("rejected request from %s (%s): %s", peer, kind, exc)
        if self.metrics is not None:
            self.metrics.observe_error(kind)
        message = "internal server error; see the server log" if kind == "internal" else str(exc)
        try:
            writer.writelines(encode_frame(Op.ERROR, {"error": message[:1000], "kind": kind, "closed": closing}))
            await writer.drain()
        except ConnectionError:
            pass

    async def _wait_for_change(self, since: int, wait_s: float) -> None:
        """Return once the store's version is past ``since`` or ``wait_s`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.store.version <= since and (left := deadline - loop.time()) > 0:
            if self._changed is None or self._changed.done():
                self._changed = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._changed), left)
            except asyncio.TimeoutError:
                return

    def _notify_change(self) -> None:
        """Wake every long-polling DELTA (each checks the version again)."""
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def _authorise(self, message: Message) -> None:
        if self.token and not hmac.compare_digest(message.token.encode(), self.token.encode()):
            raise ProtocolError("missing or wrong token", "unauthorized")

    # -- dispatch ------------------------------------------------------------------------------

    async def _dispatch(self, message: Message) -> tuple[dict, dict[str, np.ndarray], int]:
        """Run one request against the store: (reply args, reply arrays, keys touched)."""
        args, arrays, store = message.args, message.arrays, self.store
        if message.op == Op.PULL:
            ids = require_array(arrays, "ids", "<u8", 1)
            return {}, {"rows": store.pull_many(ids)}, ids.size
        if message.op == Op.PUSH:
            ids = require_array(arrays, "ids", "<u8", 1)
            grads = require_array(arrays, "grads", "<f4", 2)
            ts = arrays["ts"] if "ts" in arrays else _number_or_none(args.get("ts"), "ts")
            version = store.push_many(ids, grads, ts, offsets_from_wire(args.get("offsets")))
            return {"version": version}, {}, ids.size
        if message.op == Op.DELTA:
            since, wait_ms = args.get("since", 0), args.get("wait_ms", 0)
            if type(since) is not int:
                raise ProtocolError("since must be an integer version")
            if type(wait_ms) is not int or not 0 <= wait_ms <= MAX_WAIT_MS:
                raise ProtocolError(f"wait_ms must be an integer in [0, {MAX_WAIT_MS}]")
            await self._wait_for_change(since, wait_ms / 1000)
            reply_args, reply_arrays = delta_to_wire(store.delta(since))
            return reply_args, reply_arrays, 0
        if message.op == Op.SNAPSHOT:
            return {"path": await self.snapshot(offsets_from_wire(args.get("offsets")))}, {}, 0
        if message.op == Op.STATS:
            return store.stats(), {}, 0
        if message.op == Op.PULL_DENSE:
            names = args.get("names")
            if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ProtocolError("names must be a list of strings or null")
            dense = store.pull_dense(names)
            return {"version": dense.version}, dense.tensors, 0
        if message.op == Op.PUSH_DENSE:
            return {"version": store.push_dense(arrays)}, {}, 0
        if message.op == Op.PING:
            return {"version": store.version, "epoch": store.epoch()}, {}, 0
        raise ProtocolError(f"{message.op.name} is not a request")


def _number_or_none(value: object, name: str) -> float | None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise ProtocolError(f"{name} must be a number or null")


def _merge(store: ParamStore, offsets: dict | None) -> dict:
    from param_server.store import merge_offsets

    return merge_offsets(store.offsets, offsets)


class ServerThread:
    """A :class:`ParamServer` on its own event loop in a daemon thread (tests, benchmarks, embedding).

    >>> with ServerThread(ParamStore()) as running:
    ...     running.port > 0
    True
    """

    def __init__(self, store: ParamStore, **kwargs: object) -> None:
        self.server = ParamServer(store, **kwargs)  # type: ignore[arg-type]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="param-server", daemon=True)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coroutine_fn: Callable[[], object]) -> object:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine_fn(), self._loop).result()

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        self.call(self.server.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
