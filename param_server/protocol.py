"""The parameter server's wire format: a fixed binary header, JSON metadata, raw numpy buffers.

A frame, request or reply::

    header  20 bytes  "<4sBBHIQ": magic b"RTPS", protocol 1, op, array count, meta bytes, body bytes
    meta    JSON object: {"args": {...}, "arrays": [[name, dtype, shape], ...], "token": "..."}
    body    the arrays' raw bytes, C order, each padded to a multiple of 8 bytes

No pickle anywhere: arrays are rebuilt with ``np.frombuffer`` from an allow-list of dtypes after
checking that the declared shapes add up to exactly the body. Every check raises
:class:`ProtocolError`, which the server turns into an error reply; the decoder raises nothing
else, whatever the bytes (a hypothesis test fuzzes it).

>>> frame = b"".join(encode_frame(Op.PULL, {"k": 1}, {"ids": np.arange(3, dtype=np.uint64)}))
>>> message = decode_frame(frame)
>>> message.op == Op.PULL, message.args, message.arrays["ids"].tolist()
(True, {'k': 1}, [0, 1, 2])
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from rtrec.errors import RtrecError

__all__ = ["Op", "Limits", "Message", "ProtocolError", "HEADER", "encode_frame", "decode_header",
           "decode_payload", "decode_frame"]

MAGIC = b"RTPS"
PROTOCOL = 1
HEADER = struct.Struct("<4sBBHIQ")
ALLOWED_DTYPES = frozenset({"<u8", "<i8", "<f4", "<f8", "|u1"})
MAX_NDIM = 4
_ALIGN = 8


class Op(enum.IntEnum):
    """Request and reply codes."""

    PULL = 1
    PUSH = 2
    DELTA = 3
    SNAPSHOT = 4
    STATS = 5
    PULL_DENSE = 6
    PUSH_DENSE = 7
    PING = 8
    OK = 128
    ERROR = 129


class ProtocolError(RtrecError, ValueError):
    """A frame is malformed, truncated, oversized or unauthorised; ``kind`` names which."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Limits:
    """Upper bounds a server enforces before reading or allocating anything."""

    max_meta_bytes: int = 1 << 20
    max_body_bytes: int = 256 << 20
    max_arrays: int = 1024


@dataclass(frozen=True)
class Message:
    """A decoded frame: its op, its JSON arguments, its arrays by name, and the token it carried."""

    op: Op
    args: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    token: str = ""


def encode_frame(op: Op, args: Mapping | None = None, arrays: Mapping[str, np.ndarray] | None = None,
                 token: str = "") -> list[bytes | memoryview]:
    """The buffers of one frame, ready for ``sendmsg``/``writelines`` (arrays are not copied)."""
    descriptors, buffers, body_len = [], [], 0
    for name, array in (arrays or {}).items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        descriptors.append([name, dtype.str, list(array.shape)])
        data = memoryview(array.astype(dtype, copy=False).reshape(-1).view(np.uint8))
        buffers.append(data)
        pad = -data.nbytes % _ALIGN
        if pad:
            buffers.append(b"\0" * pad)
        body_len += data.nbytes + pad
    meta = {"args": dict(args or {}), "arrays": descriptors}
    if token:
        meta["token"] = token
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    header = HEADER.pack(MAGIC, PROTOCOL, int(op), len(descriptors), len(meta_bytes), body_len)
    return [header, meta_bytes, *buffers]


def decode_header(data: bytes, limits: Limits = Limits()) -> tuple[Op, int, int, int]:
    """Check a frame header: (op, array count, meta length, body length)."""
    if len(data) != HEADER.size:
        raise ProtocolError(f"truncated header: {len(data)} of {HEADER.size} bytes", "truncated")
    magic, protocol, op, n_arrays, meta_len, body_len = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError("bad magic: not an rtrec parameter-server frame")
    if protocol != PROTOCOL:
        raise ProtocolError(f"unsupported protocol version {protocol}; this server speaks {PROTOCOL}")
    try:
        op = Op(op)
    except ValueError:
        raise ProtocolError(f"unknown op {op}") from None
    if n_arrays > limits.max_arrays:
        raise ProtocolError(f"{n_arrays} arrays exceed the limit of {limits.max_arrays}", "oversized")
    if meta_len > limits.max_meta_bytes or body_len > limits.max_body_bytes:
        raise ProtocolError(f"frame of {meta_len} + {body_len} bytes exceeds the limits "
                            f"({limits.max_meta_bytes} + {limits.max_body_bytes})", "oversized")
    return op, n_arrays, meta_len, body_len


def decode_payload(op: Op, n_arrays: int, meta_bytes: bytes, body: bytes) -> Message:
    """Parse the JSON metadata and rebuild the arrays it declares from ``body``."""
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"metadata is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("args", {}), dict):
        raise ProtocolError("metadata must be a JSON object with an object 'args'")
    token = meta.get("token", "")
    descriptors = meta.get("arrays", [])
    if not isinstance(token, str) or not isinstance(descriptors, list) or len(descriptors) != n_arrays:
        raise ProtocolError("metadata 'arrays' must list exactly the header's array count")
    arrays, offset = {}, 0
    for descriptor in descriptors:
        name, dtype, shape = _check_descriptor(descriptor)
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on hostile shapes
        if offset + nbytes > len(body):
            raise ProtocolError(f"array {name!r} runs past the end of the body", "truncated")
        if name in arrays:
            raise ProtocolError(f"array {name!r} appears twice")
        arrays[name] = np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize,
                                     offset=offset).reshape(shape)
        offset += nbytes + (-nbytes % _ALIGN)
    if offset != len(body):
        raise ProtocolError(f"body has {len(body)} bytes, arrays declare {offset}")
    return Message(op, meta.get("args", {}), arrays, token)


def decode_frame(data: bytes, limits: Limits = Limits()) -> Message:
    """Decode one whole frame held in memory (tests, fuzzing); raises only ProtocolError."""
    op, n_arrays, meta_len, body_len = decode_header(bytes(data[: HEADER.size]), limits)
    end = HEADER.size + meta_len + body_len
    if len(data) != end:
        raise ProtocolError(f"frame has {len(data)} bytes, header declares {end}",
                            "truncated" if len(data) < end else "malformed")
    return decode_payload(op, n_arrays, bytes(data[HEADER.size: HEADER.size + meta_len]),
                          bytes(data[HEADER.size + meta_len:]))


def _check_descriptor(descriptor: object) -> tuple[str, np.dtype, tuple[int, ...]]:
    """Validate ``[name, dtype, shape]`` against the allow-list and sane bounds."""
    if not (isinstance(descriptor, list) and len(descriptor) == 3):
        raise ProtocolError("each array descriptor must be [name, dtype, shape]")
    name, dtype, shape = descriptor
    if not isinstance(name, str) or not 0 < len(name) <= 256:
        raise ProtocolError("array names must be strings of 1-256 characters")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"dtype {dtype!r} not allowed; use one of {sorted(ALLOWED_DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d < 2**40 for d in shape)):
        raise ProtocolError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} sizes")
    return name, np.dtype(dtype), tuple(shape)
