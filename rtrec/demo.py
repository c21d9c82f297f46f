"""``make demo``: the whole local stack with simulated clicks, and what it learns, live.

Starts ``rtrec up`` in-process (broker, Redis, every component built so far, the simulator), prints
the URLs to look at, then every few seconds what is happening: events flowing through Kafka and,
once serving is part of the stack, live recommendations for a few users. ``DEMO_SECONDS=N`` stops
it after N seconds; otherwise Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.request
from collections import Counter, deque

from kafka import KafkaConsumer, TopicPartition

from features.client import redis_client
from features.config import FeatureConfig
from features.reader import FeatureReader
from rtrec.cli import StopFlag
from rtrec.logs import configure_logging
from rtrec.metrics_http import scrape
from rtrec.errors import StackError
from rtrec.settings import load_settings
from rtrec.stack.launcher import LocalStack, ReadyInfo, StackOptions

log = logging.getLogger("rtrec.demo")

REPORT_EVERY_S = 5.0
DEMO_USERS = ("u0", "u1", "u2")


def main() -> int:
    # Simulated clicks follow impressions within seconds: a short join window turns unclicked
    # impressions into negatives within the demo's first minute, so the model sees both labels.
    os.environ.setdefault("RTREC_JOIN_WINDOW_S", "15")
    settings = load_settings()
    configure_logging(os.environ.get("RTREC_LOG_LEVEL", "WARNING"))
    seconds = float(os.environ.get("DEMO_SECONDS", "0")) or float("inf")
    stop = StopFlag()
    stack = LocalStack(settings, StackOptions(simulate=True, simulate_rate=300.0))
    print("rtrec demo: starting the local stack (broker, Redis, components, simulator)...", flush=True)
    print("  (a stream worker joins its Kafka consumer group in ~5 s; the first reports may be empty)",
          flush=True)
    info = stack.start()
    watch = None
    try:
        _print_urls(info, stack)
        watch = StreamWatch(info.kafka, settings.actions_topic)
        reader = FeatureReader(redis_client(info.redis), FeatureConfig.from_settings(settings, redis_url=info.redis))
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop.wait(min(REPORT_EVERY_S, end - time.monotonic())):
            try:
                stack.supervise(should_stop=stop)  # restarts a component that died, as `rtrec up` does
            except StackError as exc:  # one kept dying
                print(f"rtrec demo: {exc}", file=sys.stderr)
                return 1
            print(watch.report(), flush=True)
            print(_learning(info, reader), flush=True)
            if info.serving:
                print(_recommendations(info.serving), flush=True)
        return 0
    finally:
        print("rtrec demo: stopping the stack", flush=True)
        if watch is not None:
            watch.consumer.close()  # before the broker goes, or it waits for this connection
        stack.stop()


def _print_urls(info: ReadyInfo, stack: LocalStack) -> None:
    print(info.as_line())
    print(f"  Kafka broker     {info.kafka}   (topic 'actions', dead letters in 'actions.dlq')")
    print(f"  Redis            {info.redis}")
    for addr in info.param_server:
        print(f"  param server     {addr}")
    if info.serving:
        print(f"  serving API      {info.serving}/docs  (try POST {info.serving}/recommend)")
    for url in info.metrics:
        print(f"  metrics          {url}")
    print(f"  process logs     {stack.workdir}")
    if not info.serving:
        print("  (serving is not built yet, so no model recommendations: shown below is the raw stream)")
    sys.stdout.flush()


class StreamWatch:
    """Reads the actions topic without a consumer group and summarises the last report interval."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        parts = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or [])]
        self.consumer.assign(parts)
        self.total = 0
        self.recent_clicks: deque[tuple[float, str]] = deque()
        self.last = time.monotonic()

    def report(self) -> str:
        actions: Counter[str] = Counter()
        for records in self.consumer.poll(timeout_ms=200, max_records=100_000).values():
            for record in records:
                event = json.loads(record.value)
                actions[event["action"]] += 1
                if event["action"] == "click":
                    self.recent_clicks.append((event["ts"], event["item_id"]))
        now = time.monotonic()
        rate = sum(actions.values()) / max(now - self.last, 1e-3)
        self.last, self.total = now, self.total + sum(actions.values())
        while self.recent_clicks and self.recent_clicks[0][0] < time.time() - 60:
            self.recent_clicks.popleft()
        top = Counter(item for _, item in self.recent_clicks).most_common(5)
        ctr = actions["click"] / max(actions["impression"], 1)
        return (f"[stream] {rate:7.0f} events/s  total {self.total:8d}  "
                f"{dict(actions.most_common())}  CTR {ctr:.3f}  most clicked (60 s): {top}")


def _learning(info: ReadyInfo, reader: FeatureReader) -> str:
    """What the workers made of the stream: trending items in Redis, training progress."""
    trending = ", ".join(f"{item} ({score:.1f})" for item, score in reader.top("trending", 5))
    trained, auc, loss = 0.0, [], []
    for url in info.metrics:
        try:
            metrics = scrape(url)
        except OSError:
            continue
        trained += metrics.get("rtrec_trainer_examples_total", 0.0)
        if "rtrec_trainer_auc" in metrics:
            auc.append(metrics["rtrec_trainer_auc"])
            loss.append(metrics["rtrec_trainer_loss"])
    training = (f"trained on {trained:,.0f} examples, rolling click AUC "
                f"{', '.join(f'{a:.3f}' for a in auc)}, loss {', '.join(f'{x:.3f}' for x in loss)}"
                if auc else "no worker metrics yet")
    return f"[learned] trending (Redis): {trending or '-'}\n[learned] {training}"


def _recommendations(serving: str) -> str:
    lines = []
    for user in DEMO_USERS:
        body = json.dumps({"user_id": user, "k": 5}).encode()
        request = urllib.request.Request(f"{serving}/recommend", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                out = json.load(response)
            items = ", ".join(f"{i['item_id']} ({i['score']:.2f})" for i in out["items"])
            lines.append(f"[recommend] {user} (model v{out['model_version']}): {items}")
        except OSError as exc:
            lines.append(f"[recommend] {user}: {exc}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
