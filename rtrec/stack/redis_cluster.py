"""A local Redis Cluster: N masters from the same ``redis-server`` binary as the single Redis.

Each node runs with ``cluster-enabled yes`` on its own loopback port; the slots are split into N
equal ranges, one per node (``CLUSTER ADDSLOTS`` through redis-py), and the nodes are introduced
to each other (``CLUSTER MEET``); the cluster is ready when every node reports ``cluster_state:ok``.
No replicas: this is for tests and ``rtrec up --redis-cluster N``, where what matters is that
every key and script is routed by slot as on a production cluster. In memory only.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from pathlib import Path

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from rtrec.errors import StackError
from rtrec.stack.process import ManagedProcess, wait_for_port
from rtrec.stack.redis_server import persistence_args, redis_binary

log = logging.getLogger(__name__)


#: A node's cluster bus listens on its port + 10000 (redis-server 6.2 has no ``cluster-port``).
BUS_OFFSET = 10_000


def free_node_port(host: str = "127.0.0.1", tries: int = 200) -> int:
    """A port ``p`` free on ``host`` with ``p + 10000`` (its cluster bus) free too, below 55536."""
    for _ in range(tries):
        port = random.randrange(20_000, 65_536 - BUS_OFFSET)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, port))
                b.bind((host, port + BUS_OFFSET))
            return port
        except OSError:
            continue
    raise StackError(f"no free port pair (p, p + {BUS_OFFSET}) on {host} after {tries} tries")


def slot_ranges(nodes: int) -> list[tuple[int, int]]:
    """The ``[first, last)`` slots of each of ``nodes`` masters: equal ranges, in order.

    >>> slot_ranges(3)
    [(0, 5461), (5461, 10922), (10922, 16384)]
    """
    return [(k * REDIS_CLUSTER_HASH_SLOTS // nodes, (k + 1) * REDIS_CLUSTER_HASH_SLOTS // nodes)
            for k in range(nodes)]


class LocalRedisCluster:
    """``nodes`` redis-server masters on loopback ports forming one cluster (see the module docstring)."""

    def __init__(self, workdir: Path, nodes: int = 3, host: str = "127.0.0.1", binary: str = "",
                 ports: list[int] | None = None) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got {nodes}")
        self.host = host
        self.ports = ports or [free_node_port(host) for _ in range(nodes)]
        self.processes = []
        for k, port in enumerate(self.ports):
            node_dir = workdir / f"redis-cluster-{k}"
            node_dir.mkdir(parents=True, exist_ok=True)
            (node_dir / "nodes.conf").unlink(missing_ok=True)  # a fresh cluster each start
            self.processes.append(ManagedProcess(
                f"redis-cluster-{k}",
                [redis_binary(binary), "--bind", host, "--port", str(port), *persistence_args(None),
                 "--dir", str(node_dir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000", "--protected-mode", "yes"],
                node_dir / "redis.log",
            ))

    @property
    def url(self) -> str:
        """The cluster's URL (any node; clients discover the others): ``redis+cluster://host:port``."""
        return f"redis+cluster://{self.host}:{self.ports[0]}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the nodes, assign the slots, join them and wait until every node says ``ok``."""
        try:
            for process, port in zip(self.processes, self.ports):
                wait_for_port(self.host, port, timeout_s, process.start())
            clients = [redis.Redis(host=self.host, port=port) for port in self.ports]
            for client, (lo, hi) in zip(clients, slot_ranges(len(clients))):
                client.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", self.host, self.ports[0])
            self._wait_ok(clients, timeout_s)
        except (StackError, redis.RedisError) as exc:
            raise StackError(f"redis cluster did not start: {exc}\n"
                             + "\n".join(p.tail() for p in self.processes)) from exc
        log.info("redis cluster of %d masters ready at %s", len(self.ports), self.url)

    def _wait_ok(self, clients: list[redis.Redis], timeout_s: float) -> None:
        """Poll CLUSTER INFO until every node knows every other and has all slots served."""
        deadline = time.monotonic() + timeout_s
        while True:
            infos = [c.cluster("info") for c in clients]
            known = [int(i.get("cluster_known_nodes", 0)) for i in infos]
            if all(i.get("cluster_state") == "ok" for i in infos) and min(known) == len(clients):
                return
            if time.monotonic() > deadline:
                raise StackError(f"cluster not ok after {timeout_s:.0f} s: {infos}")
            time.sleep(0.05)

    def restart_node(self, k: int, timeout_s: float = 30.0) -> None:
        """Start node ``k`` again after it died: it rejoins with its ``nodes.conf`` (same ID and
        slots), empty, as a restarted in-memory Redis comes back empty."""
        wait_for_port(self.host, self.ports[k], timeout_s, self.processes[k].start())
        self._wait_ok([redis.Redis(host=self.host, port=port) for port in self.ports], timeout_s)

    def stop(self) -> None:
        for process in self.processes:
            process.stop(grace_s=5.0)
