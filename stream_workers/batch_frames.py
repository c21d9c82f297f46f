"""The frames a worker sends to its pipeline process and gets back (no pickle: JSON + raw bytes).

A request is a header (JSON: offsets, per-message lengths, -1 for a missing value, each
message's partition and offset, the attempt number and the consumer's assignment) followed by the messages'
bytes back to back; a request without messages only updates the assignment (a Faust batch is
never empty). A result is one JSON object. On the pipe, every frame is a 4-byte big-endian
length and the payload.

>>> values, offsets = decode_request(encode_request([b"ab", None, b"c"], {"actions": {0: 7}}))
>>> values, offsets
([b'ab', None, b'c'], {'actions': {0: 7}})
>>> request = decode_batch_request(encode_request([b"ab"], None, attempt=2, assignment=[("actions", 3)]))
>>> request.attempt, request.assignment
(2, [('actions', 3)])
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Collection, Mapping, Sequence

from features.writer import WriteResult
from stream_workers.pipeline import BatchResult
from stream_workers.validation import DeadLetter, UndecodableBatch

_LEN = struct.Struct(">I")
#: Largest frame accepted from the other side (a batch of 1,000 16 KiB events is 16 MiB).
MAX_FRAME_BYTES = 256 << 20


@dataclass(frozen=True)
class BatchRequest:
    """One decoded request: the arguments of :meth:`stream_workers.pipeline.BatchPipeline.process`."""

    values: list[bytes | None]
    offsets: dict[str, dict[int, int]]
    starts: dict[str, dict[int, int]]
    partitions: list[int] | None
    attempt: int = 0
    assignment: list[tuple[str, int]] | None = None
    undecodable: list[UndecodableBatch] = field(default_factory=list)  # batches the consumer skipped
    message_offsets: list[int] | None = None  # each message's Kafka offset
    train: bool = True  # False: only stage the messages (see BatchPipeline.process)


def encode_request(values: Sequence[bytes | None], offsets: Mapping[str, Mapping[int, int]] | None,
                   starts: Mapping[str, Mapping[int, int]] | None = None,
                   partitions: Sequence[int] | None = None, *, attempt: int = 0,
                   assignment: Collection[tuple[str, int]] | None = None,
                   undecodable: Sequence[UndecodableBatch] = (),
                   message_offsets: Sequence[int] | None = None, train: bool = True) -> bytes:
    """``starts``: topic -> partition -> offset of the batch's first message (for recovery);
    ``partitions``: each message's partition (None: not known); ``attempt``: 0 for a batch's
    first try; ``assignment``: the (topic, partition) pairs the consumer owns (None: not known);
    ``message_offsets``: each message's offset (None: not known); ``train``: train the staged
    examples too (a request without messages that trains is a batch; one that does not is a
    control frame: the assignment or skipped record batches)."""
    lengths = [-1 if v is None else len(v) for v in values]
    header = json.dumps({"offsets": offsets or {}, "lengths": lengths, "starts": starts or {},
                         "partitions": None if partitions is None else [int(p) for p in partitions],
                         "attempt": int(attempt),
                         "assignment": None if assignment is None else sorted([str(t), int(p)] for t, p in assignment),
                         "undecodable": [b.as_dict() for b in undecodable],
                         "message_offsets": None if message_offsets is None else [int(o) for o in message_offsets],
                         "train": bool(train),
                         }).encode()
    return _LEN.pack(len(header)) + header + b"".join(v for v in values if v is not None)


def decode_request(frame: bytes) -> tuple[list[bytes | None], dict[str, dict[int, int]]]:
    request = decode_batch_request(frame)
    return request.values, request.offsets


def decode_batch_request(frame: bytes) -> BatchRequest:
    """Every field of a request frame; ValueError for a frame that does not add up."""
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
    assignment = header.get("assignment")
    message_offsets = header.get("message_offsets")
    if message_offsets is not None and len(message_offsets) != len(values):
        raise ValueError(f"{len(message_offsets)} offsets for {len(values)} messages")
    return BatchRequest(values, offsets, starts, None if partitions is None else [int(p) for p in partitions],
                        int(header.get("attempt", 0)),
                        None if assignment is None else [(str(t), int(p)) for t, p in assignment],
                        [UndecodableBatch.from_dict(d) for d in header.get("undecodable", [])],
                        None if message_offsets is None else [int(o) for o in message_offsets],
                        bool(header.get("train", True)))


def encode_result(result: BatchResult) -> bytes:
    return json.dumps({
        "events": result.events, "examples": result.examples,
        "applied": result.features.applied, "duplicates": result.features.duplicates,
        "dead": [[d.reason, base64.b64encode(d.raw).decode()] for d in result.dead_letters],
        "trained": result.trained,
    }).encode()


def encode_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def decode_result(payload: bytes) -> BatchResult | str:
    """The batch's result, or the error message the pipeline process reported."""
    obj = json.loads(payload)
    if "error" in obj:
        return str(obj["error"])
    dead = [DeadLetter(reason, base64.b64decode(raw)) for reason, raw in obj["dead"]]
    return BatchResult(obj["events"], dead, WriteResult(obj["applied"], obj["duplicates"]), obj["examples"],
                       bool(obj.get("trained", True)))


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
