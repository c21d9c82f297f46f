"""Fuzzing the server past the decoder: well-formed frames with arbitrary arguments and arrays for
every request op. Each must be answered -- OK, or an error the caller caused -- never an
"internal" error (a bug), and the connection and the store must stay usable.

The frame-level fuzzing of the decoder itself (arbitrary and mutated bytes) is in
test_protocol_and_server.py.
"""

from __future__ import annotations

import socket
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from features.ids import feature_ids
from param_server.client import ParamServerClient
from param_server.protocol import ALLOWED_DTYPES, Limits, Op, encode_frame
from param_server.server import ServerThread
from param_server.store import ParamStore
from tests.param_server.test_protocol_and_server import read_reply

REQUESTS = [Op.PULL, Op.PUSH, Op.DELTA, Op.SNAPSHOT, Op.STATS, Op.PULL_DENSE, Op.PUSH_DENSE, Op.PING]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
arg_names = st.sampled_from(["since", "ts", "offsets", "names", "version", "x"])
array_names = st.sampled_from(["ids", "grads", "ts", "rows", "mlp.w0", "x" * 201])
real_ids = feature_ids(2, ["a", "b", "c", "d"])


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(sorted(ALLOWED_DTYPES))))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    size = int(np.prod(shape, dtype=np.int64))
    if dtype == np.uint64 and draw(st.booleans()):  # real feature IDs now and then, so pushes get through
        return np.resize(real_ids, size).reshape(shape)
    raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@st.composite
def requests(draw: st.DrawFn) -> tuple[Op, dict, dict]:
    op = draw(st.sampled_from(REQUESTS))
    args = draw(st.dictionaries(arg_names, json_values, max_size=3))
    named = draw(st.dictionaries(array_names, arrays(), max_size=3))
    return op, args, named


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    store = ParamStore(snapshot_dir=tmp_path_factory.mktemp("fuzz-snapshots"))
    with ServerThread(store, limits=Limits(max_body_bytes=1 << 20)) as running:
        yield running


def exchange(sock: socket.socket, frame: bytes) -> tuple[int, dict]:
    sock.sendall(frame)
    return read_reply(sock)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(request=requests())
def test_any_well_formed_request_gets_an_answer_and_never_an_internal_error(server: ServerThread,
                                                                            request: tuple[Op, dict, dict]) -> None:
    op, args, named = request
    frame = b"".join(bytes(b) for b in encode_frame(op, args, named))
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        reply, reply_args = exchange(sock, frame)
        assert reply == Op.OK or reply_args.get("kind") != "internal", reply_args
        assert exchange(sock, b"".join(bytes(b) for b in encode_frame(Op.PING)))[0] == Op.OK


def test_the_store_still_serves_after_the_fuzzing(server: ServerThread) -> None:
    with ParamServerClient(server.host, server.port) as client:
        client.push_many(real_ids, np.ones((real_ids.size, 32), dtype=np.float32), ts=1.0)
        assert client.pull_many(real_ids).shape == (real_ids.size, 32)
        assert isinstance(client.stats()["version"], int)
