"""The open-loop load generator keeps its schedule and charges a slow server with the wait."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from benchmarks.loadgen import run_open_loop


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = FastAPI()
    state = {"stall_until": 0.0}

    @app.get("/fast")
    def fast() -> dict:
        return {"ok": True}

    @app.post("/echo")
    def echo(body: dict) -> dict:
        return body

    @app.get("/stall")
    def stall() -> dict:  # a server that stops answering for 0.5 s once
        now = time.monotonic()
        if state["stall_until"] == 0.0:
            state["stall_until"] = now + 0.5
        if now < state["stall_until"]:
            time.sleep(state["stall_until"] - now)
        return {"ok": True}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", workers=1)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


def test_fast_server_gets_the_offered_rate_with_no_errors(server: str) -> None:
    result = run_open_loop(f"{server}/fast", rate=100, duration_s=2.0)
    assert result.requests == 200 and result.errors == 0
    assert 80 <= result.achieved_qps <= 110
    assert result.p50_ms < 50


def test_post_bodies_are_sent(server: str) -> None:
    result = run_open_loop(f"{server}/echo", rate=50, duration_s=1.0, body=lambda i: {"i": i})
    assert result.errors == 0 and result.requests == 50


def test_a_stall_shows_as_latency_of_the_requests_that_were_due_during_it(server: str) -> None:
    result = run_open_loop(f"{server}/stall", rate=100, duration_s=2.0)
    assert result.errors == 0
    assert result.max_ms >= 300  # the first request waited ~500 ms and was charged for it
