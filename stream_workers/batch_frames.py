"""The frames a worker sends to its pipeline process and gets back (no pickle: JSON + raw bytes).

A request is a header (JSON: offsets, per-message lengths, -1 for a missing value, and each
message's partition) followed by
the messages' bytes back to back; a result is one JSON object. On the pipe, every frame is a
4-byte big-endian length and the payload.

>>> values, offsets = decode_request(encode_request([b"ab", None, b"c"], {"actions": {0: 7}}))
>>> values, offsets
([b'ab', None, b'c'], {'actions': {0: 7}})
"""

from __future__ import annotations

import base64
import json
import struct
from typing import BinaryIO, Mapping, Sequence

from features.writer import WriteResult
from stream_workers.pipeline import BatchResult
from stream_workers.validation import DeadLetter

_LEN = struct.Struct(">I")
#: Largest frame accepted from the other side (a batch of 1,000 16 KiB events is 16 MiB).
MAX_FRAME_BYTES = 256 << 20


def encode_request(values: Sequence[bytes | None], offsets: Mapping[str, Mapping[int, int]] | None,
                   starts: Mapping[str, Mapping[int, int]] | None = None,
                   partitions: Sequence[int] | None = None) -> bytes:
    """``starts``: topic -> partition -> offset of the batch's first message (for recovery);
    ``partitions``: each message's partition (None: not known)."""
    lengths = [-1 if v is None else len(v) for v in values]
    header = json.dumps({"offsets": offsets or {}, "lengths": lengths, "starts": starts or {},
                         "partitions": None if partitions is None else [int(p) for p in partitions]}).encode()
    return _LEN.pack(len(header)) + header + b"".join(v for v in values if v is not None)


def decode_request(frame: bytes) -> tuple[list[bytes | None], dict[str, dict[int, int]]]:
    values, offsets, _, _ = decode_request_with_starts(frame)
    return values, offsets


def decode_request_with_starts(frame: bytes) -> tuple[list[bytes | None], dict[str, dict[int, int]],
                                                        dict[str, dict[int, int]], list[int] | None]:
    """(values, next offsets, first offsets, partitions) of a request frame."""
    (size,) = _LEN.unpack_from(frame)
    header = json.loads(frame[4:4 + size])
    values: list[bytes | None] = []
    pos = 4 + size
    for length in header["lengths"]:
        if length < 0:
            values.append(None)
        else:
            values.append(frame[pos:pos + length])
            pos += length
    offsets = {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in header["offsets"].items()}
    starts = {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in header.get("starts", {}).items()}
    partitions = header.get("partitions")
    if partitions is not None and len(partitions) != len(values):
        raise ValueError(f"{len(partitions)} partitions for {len(values)} messages")
    return values, offsets, starts, None if partitions is None else [int(p) for p in partitions]


def encode_result(result: BatchResult) -> bytes:
    return json.dumps({
        "events": result.events, "examples": result.examples,
        "applied": result.features.applied, "duplicates": result.features.duplicates,
        "dead": [[d.reason, base64.b64encode(d.raw).decode()] for d in result.dead_letters],
    }).encode()


def encode_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def decode_result(payload: bytes) -> BatchResult | str:
    """The batch's result, or the error message the pipeline process reported."""
    obj = json.loads(payload)
    if "error" in obj:
        return str(obj["error"])
    dead = [DeadLetter(reason, base64.b64decode(raw)) for reason, raw in obj["dead"]]
    return BatchResult(obj["events"], dead, WriteResult(obj["applied"], obj["duplicates"]), obj["examples"])


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_LEN.pack(len(payload)) + payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> bytes:
    """One frame's payload; EOFError when the other side has gone."""
    head = stream.read(4)
    if len(head) < 4:
        raise EOFError("pipe closed")
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("pipe closed mid-frame")
    return payload
