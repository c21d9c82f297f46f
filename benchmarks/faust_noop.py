"""A Faust worker that reads micro-batches and does nothing with them: the ceiling any Faust agent
can reach on this broker and machine. Run by ``benchmarks.ingest``; prints ONE JSON line when it
has seen ``--events`` messages: ``{"ready": true, "events": N, "seconds": S}`` (from its first batch)."""

from __future__ import annotations

import argparse
import json
import time

from faust.worker import Worker

import faust
from rtrec.settings import load_settings
from stream_workers.app import broker_urls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()
    app = faust.App(f"{settings.worker_group}-noop", broker=broker_urls(settings.kafka), store="memory://",
                    datadir=str(settings.data_dir), web_enabled=False, topic_allow_declare=False,
                    consumer_auto_offset_reset="earliest", broker_rebalance_timeout=5.0,
                    broker_session_timeout=6.0, broker_heartbeat_interval=1.0)
    topic = app.topic(settings.actions_topic, key_serializer="raw", value_serializer="raw")
    state = {"n": 0, "start": 0.0}

    @app.agent(topic)
    async def count(stream: faust.Stream) -> None:
        async for batch in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_within_s):
            state["start"] = state["start"] or time.perf_counter()
            state["n"] += len(batch)
            if state["n"] >= args.events:
                seconds = time.perf_counter() - state["start"]
                print(json.dumps({"ready": True, "events": state["n"], "seconds": round(seconds, 3)}), flush=True)
                state["n"] = -10**12  # report once

    Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
