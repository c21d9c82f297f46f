"""The wire format rejects bad frames with an error reply, and the server keeps serving."""

from __future__ import annotations

import json
import socket
import struct
from typing import Iterator

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from features.ids import feature_ids
from param_server.client import ParamServerClient, RemoteError, RemoteValueError
from param_server.protocol import HEADER, Limits, Op, ProtocolError, decode_frame, encode_frame
from param_server.server import ServerThread
from param_server.store import ParamStore

LIMITS = Limits(max_body_bytes=1 << 20)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with ServerThread(ParamStore(), limits=LIMITS) as running:
        yield running


def raw_exchange(server: ServerThread, data: bytes, half_close: bool = False) -> tuple[int, dict]:
    """Send raw bytes, read one reply frame: (op, args)."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_reply(sock)


def read_reply(sock: socket.socket) -> tuple[int, dict]:
    """One reply frame from the server: (op, args); its arrays are read and dropped."""
    _, _, op, _, meta_len, body_len = HEADER.unpack(_read(sock, HEADER.size))
    meta = json.loads(_read(sock, meta_len))
    _read(sock, body_len)
    return op, meta["args"]


def _read(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "server closed without replying"
        out += chunk
    return out


def still_serving(server: ServerThread) -> None:
    with ParamServerClient(server.host, server.port) as client:
        assert client.ping() >= 0


def frame(op: Op = Op.PULL, args: dict | None = None, arrays: dict | None = None, token: str = "") -> bytes:
    return b"".join(bytes(b) for b in encode_frame(op, args, arrays, token))


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10,                       # not our protocol at all
    struct.pack("<4sBBHIQ", b"RTPS", 9, 1, 0, 2, 0) + b"{}",      # unknown protocol version
    struct.pack("<4sBBHIQ", b"RTPS", 1, 77, 0, 2, 0) + b"{}",     # unknown op
    struct.pack("<4sBBHIQ", b"RTPS", 1, 1, 0, 2, 1 << 40),        # oversized body
], ids=["garbage", "version", "op", "oversized"])
def test_untrustworthy_headers_get_an_error_reply_and_server_keeps_serving(server: ServerThread, data: bytes) -> None:
    op, args = raw_exchange(server, data)
    assert op == Op.ERROR and args["error"]
    still_serving(server)


def test_truncated_frame_gets_an_error_reply(server: ServerThread) -> None:
    whole = frame(Op.PULL, {}, {"ids": np.arange(100, dtype=np.uint64)})
    op, args = raw_exchange(server, whole[:-40], half_close=True)
    assert op == Op.ERROR and args["kind"] == "truncated"
    still_serving(server)


@pytest.mark.parametrize("bad", [
    frame(Op.PULL, {}, {"ids": np.arange(3, dtype=np.float32)}),                 # wrong dtype
    frame(Op.PULL, {}, {}),                                                       # missing array
    frame(Op.PUSH, {}, {"ids": np.arange(3, dtype=np.uint64),
                        "grads": np.ones((2, 16), np.float32)}),                  # shape mismatch
    frame(Op.PUSH, {"ts": "yesterday"}, {"ids": np.arange(1, dtype=np.uint64),
                                         "grads": np.ones((1, 16), np.float32)}),  # bad ts
    frame(Op.DELTA, {"since": "x"}),
    frame(Op.DELTA, {"since": 0, "wait_ms": 10**9}),                              # wait too long
    frame(Op.PULL_DENSE, {"names": ["nope"]}),                                    # unknown tensor
    frame(Op.OK),                                                                 # a reply code as request
], ids=["dtype", "missing", "shape", "ts", "since", "wait", "dense", "reply-op"])
def test_invalid_requests_get_an_error_reply_on_a_connection_that_stays_usable(server: ServerThread, bad: bytes) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        for _ in range(2):  # the same connection answers again after an error
            sock.sendall(bad)
            header = _read(sock, HEADER.size)
            _, _, op, _, meta_len, body_len = HEADER.unpack(header)
            _read(sock, meta_len + body_len)
            assert op == Op.ERROR
        sock.sendall(frame(Op.PING))
        assert HEADER.unpack(_read(sock, HEADER.size))[2] == Op.OK


def test_client_sees_invalid_requests_as_value_errors(server: ServerThread) -> None:
    with ParamServerClient(server.host, server.port) as client:
        with pytest.raises(RemoteValueError, match="no embedding table for slot"):
            client.pull_many(feature_ids(99, [1]))
        assert client.ping() == 0


def test_wrong_or_missing_token_is_refused_and_right_token_served() -> None:
    with ServerThread(ParamStore(), token="s3cret") as running:
        for token in ("", "wrong"):
            with ParamServerClient(running.host, running.port, token=token) as client:
                with pytest.raises(RemoteError) as info:
                    client.ping()
                assert info.value.kind == "unauthorized"
        with ParamServerClient(running.host, running.port, token="s3cret") as client:
            assert client.ping() == 0


def test_oversized_request_from_the_client_is_refused_and_client_reconnects(server: ServerThread) -> None:
    with ParamServerClient(server.host, server.port) as client:
        with pytest.raises((RemoteError, ConnectionError)):
            client.pull_many(np.arange(1 << 18, dtype=np.uint64))  # 2 MiB > the 1 MiB limit
        assert client.ping() == 0


def test_server_binds_to_loopback_by_default(server: ServerThread) -> None:
    assert server.host == "127.0.0.1"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_raises_only_protocol_errors_on_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_frame(data, LIMITS)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_decoder_raises_only_protocol_errors_on_mutated_valid_frames(data: st.DataObject) -> None:
    valid = bytearray(frame(Op.PUSH, {"ts": 1.0}, {"ids": np.arange(3, dtype=np.uint64),
                                                  "grads": np.ones((3, 2), np.float32)}, token="t"))
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(valid) - 1))
        valid[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(valid)))
    try:
        decode_frame(bytes(valid[:cut]), LIMITS)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=12))
def test_decoder_survives_arbitrary_json_metadata(meta: object) -> None:
    meta_bytes = json.dumps({"arrays": meta} if not isinstance(meta, dict) else meta).encode()
    data = HEADER.pack(b"RTPS", 1, Op.PUSH, 1, len(meta_bytes), 8) + meta_bytes + b"\0" * 8
    try:
        decode_frame(data, LIMITS)
    except ProtocolError:
        pass
