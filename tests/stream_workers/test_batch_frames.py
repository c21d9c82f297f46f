"""Frames between a worker and its pipeline process: round trips, errors, and a closed pipe."""

from __future__ import annotations

import io

import pytest

from features.writer import WriteResult
from stream_workers.batch_frames import (MAX_FRAME_BYTES, decode_request, decode_result, encode_error,
                                         encode_request, encode_result, read_frame, write_frame)
from stream_workers.pipeline import BatchResult
from stream_workers.validation import DeadLetter


def test_request_round_trips_bytes_missing_values_and_offsets() -> None:
    values = [b"\x00\xffbinary", None, b"", b'{"a":1}']
    offsets = {"actions": {0: 10, 3: 7}, "other": {1: 2}}
    assert decode_request(encode_request(values, offsets)) == (values, offsets)


def test_result_round_trips_dead_letters_with_any_bytes() -> None:
    result = BatchResult(5, [DeadLetter("not UTF-8: byte 0", b"\xff\xfe")], WriteResult(4, 1), 3)
    assert decode_result(encode_result(result)) == result


def test_error_frame_decodes_to_its_message() -> None:
    assert decode_result(encode_error("RedisError: down")) == "RedisError: down"


def test_frames_on_a_stream_and_a_closed_pipe_is_eof() -> None:
    buffer = io.BytesIO()
    write_frame(buffer, b"one")
    write_frame(buffer, b"")
    buffer.seek(0)
    assert read_frame(buffer) == b"one" and read_frame(buffer) == b""
    with pytest.raises(EOFError):
        read_frame(buffer)
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(b"\x00\x00\x00\x09abc"))  # cut mid-frame


def test_oversized_frame_is_refused_before_reading_it() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        read_frame(io.BytesIO((MAX_FRAME_BYTES + 1).to_bytes(4, "big")))
