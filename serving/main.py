"""Run serving: ``main(settings)`` (wired to ``rtrec serve``).

Start-up refuses a non-loopback ``settings.http_host`` without ``RTREC_API_KEY`` (unless
``RTREC_ALLOW_UNAUTHENTICATED``; see :func:`check_exposure`). Then it connects to the
parameter-server shards and Redis, syncs once (so the first request already sees the model), starts
the sync thread, the impression log and the HTTP API on ``settings.http_host:http_port`` (0 = a
free port), and prints exactly one JSON line to stdout::

    {"ready": true, "serving": "http://127.0.0.1:P", "metrics": "http://127.0.0.1:M/metrics"}

The Prometheus registry is served both on ``settings.metrics_port`` and at ``GET /metrics`` of the
API. SIGTERM or SIGINT stops the server (uvicorn's handlers), then the sync thread and the
impression log (flushed for at most a few seconds). Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
import time
from typing import Any, Callable, Mapping, Sequence

import faiss
import redis
import torch
import uvicorn
import uvloop
from prometheus_client import CollectorRegistry

from features.client import async_redis_client, redis_client
from features.config import FeatureConfig
from features.reader import FeatureReader
from param_server.config import DEFAULT_TABLES, EmbeddingConfig, tables_from_json
from rtrec.errors import ImproperlyConfigured
from rtrec.logs import configure_logging
from rtrec.metrics_http import serve_metrics
from rtrec.recipe.model import ModelConfig
from rtrec.settings import refuse_unauthenticated_bind
from serving.api import Serving, create_app
from serving.catalog import ItemCatalog
from serving.impressions import ImpressionLog, SenderProcess
from serving.index import IndexPlan, ItemIndex
from serving.metrics import ServingMetrics
from serving.mirror import ParamMirror
from serving.processes import DENSE_PHASE_ENV, REUSE_PORT_ENV
from serving.model_state import ModelHolder
from serving.ranking import RankingConfig, RecentUsers, Recommender
from serving.sync import SyncLoop
from rtrec.recipe.examples import ModelSlots

__all__ = ["main", "build_serving", "check_exposure"]

log = logging.getLogger("serving")

#: Redis connections the request path may hold at once.
REDIS_CONNECTIONS = 32
#: How long start-up retries the first sync before giving up.
FIRST_SYNC_TIMEOUT_S = 60.0


def build_serving(params: Any, reader: FeatureReader | None, registry: CollectorRegistry,
                  tables: Sequence[EmbeddingConfig] = DEFAULT_TABLES, model_config: ModelConfig = ModelConfig(),
                  sync_interval_s: float = 2.0, dense_interval_s: float = 20.0, min_sync_interval_s: float = 0.25,
                  send_impression: Callable[[dict], None] | None = None, api_key: str = "",
                  open_endpoints: frozenset[str] = frozenset(), ranking: RankingConfig = RankingConfig(),
                  impression_sender_env: Mapping[str, str] | None = None,
                  index_plan: IndexPlan = IndexPlan(), dense_phase: float = 0.0) -> Serving:
    """Wire mirror, model, index, sync loop and recommender over ``params`` (not synced, not started).

    ``reader`` None (tests of the sync path only): no names are learned from the feature store and
    the request flows, which read real-time features, cannot be used. Impressions go to
    ``send_impression`` in a thread of this process, or, with ``impression_sender_env``, to an
    impression-sender child process started with that environment (what ``rtrec serve`` does).
    """
    slots = ModelSlots.from_tables(tables)
    metrics = ServingMetrics(registry)
    mirror = ParamMirror(tables)
    holder = ModelHolder(mirror, model_config, slots)
    catalog = ItemCatalog(slots.item, slots.category)
    index = ItemIndex(model_config.tower_dim, index_plan)
    sync = SyncLoop(params, mirror, holder, catalog, index, metrics, reader, sync_interval_s, dense_interval_s,
                    min_sync_interval_s, dense_phase=dense_phase)
    recommender = Recommender(mirror, holder, catalog, index, reader, slots, ranking)  # type: ignore[arg-type]
    impressions = None
    if impression_sender_env is not None:
        impressions = ImpressionLog(SenderProcess(metrics, impression_sender_env), metrics)
    elif send_impression is not None:
        impressions = ImpressionLog(send_impression, metrics)
    return Serving(recommender, sync, metrics, RecentUsers(model_config.tower_dim), impressions, api_key,
                   open_endpoints)


def check_exposure(settings: Any) -> None:
    """Refuse (ImproperlyConfigured) to serve a non-loopback address with no API key, unless
    ``RTREC_ALLOW_UNAUTHENTICATED`` is set: the API shows users' data and logs impressions for anyone."""
    refuse_unauthenticated_bind(settings.http_host, settings.api_key, "RTREC_HTTP_HOST", "RTREC_API_KEY",
                                settings.allow_unauthenticated)


def main(settings: Any) -> None:
    """Run serving until SIGTERM/SIGINT (see the module docstring)."""
    from param_server.sharding import ShardedClient

    configure_logging(settings.log_level)
    check_exposure(settings)
    if settings.serving_processes > 1:
        from serving.processes import run_processes

        raise SystemExit(run_processes(settings, settings.serving_processes))
    torch.set_num_threads(settings.torch_threads)
    faiss.omp_set_num_threads(settings.torch_threads)  # one query at a time: OpenMP spinning only costs
    tables = tables_from_json(settings.ps_tables) if settings.ps_tables else DEFAULT_TABLES
    params = ShardedClient.connect(settings.param_server_addrs, settings.ps_token)
    reader = FeatureReader(redis_client(settings.redis_url), FeatureConfig.from_settings(settings),
                           async_client=async_redis_client(settings.redis_url, REDIS_CONNECTIONS))
    if not settings.log_impressions:
        log.warning("RTREC_LOG_IMPRESSIONS is off: served lists are NOT logged back to Kafka")
    registry = CollectorRegistry()
    serving = build_serving(params, reader, registry, tables, sync_interval_s=settings.sync_interval_s,
                            dense_interval_s=settings.dense_sync_interval_s,
                            min_sync_interval_s=settings.sync_min_interval_s,
                            api_key=settings.api_key, open_endpoints=settings.open_endpoint_names,
                            ranking=RankingConfig.from_settings(settings),
                            impression_sender_env=_sender_env(settings) if settings.log_impressions else None,
                            index_plan=IndexPlan(ivf_min_items=settings.index_ivf_min_items,
                                                 nprobe=settings.index_nprobe),
                            dense_phase=float(os.environ.get(DENSE_PHASE_ENV, "0")))
    try:
        _first_sync(serving.sync)
        # What start-up built (model, mirror, catalogue, index) lives as long as the process: keep
        # it out of the cyclic collector's full passes, which otherwise stall requests for ms.
        gc.collect()
        gc.freeze()
        serving.sync.start(nice=settings.serving_sync_nice)
        metrics_url = serve_metrics(settings.metrics_port, settings.metrics_host, registry)
        # uvicorn stops on SIGTERM and then re-raises it to the handler found at start; make that
        # one ours (a log line), so the process does not die there but runs the clean-up below.
        signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM: shutting down"))
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # uvloop: cheaper I/O per request
            runner.run(_serve_http(create_app(serving), settings.http_host, settings.http_port, metrics_url))
    finally:
        log.info("stopping: sync loop, impression log, connections")
        serving.sync.stop()
        if serving.impressions is not None:
            serving.impressions.close(timeout_s=10.0)
        params.close()


def _sender_env(settings: Any) -> dict[str, str]:
    """The impression sender's environment: ours, with the producer settings this process runs with."""
    return {**os.environ, "RTREC_KAFKA": settings.kafka, "RTREC_ACTIONS_TOPIC": settings.actions_topic,
            "RTREC_IMPRESSION_LINGER_MS": str(settings.impression_linger_ms),
            "RTREC_PRODUCER_BATCH_BYTES": str(settings.producer_batch_bytes), "RTREC_LOG_LEVEL": settings.log_level}


def _first_sync(sync: SyncLoop) -> None:
    """Sync once, retrying while the parameter server or Redis is not reachable yet."""
    deadline = time.monotonic() + FIRST_SYNC_TIMEOUT_S
    while True:
        try:
            rows = sync.sync_once()
            log.info("first sync: %d rows, version %s, %d items indexed", rows, sync.mirror.version, len(sync.index))
            return
        except (OSError, redis.RedisError) as exc:
            if time.monotonic() > deadline:
                raise ImproperlyConfigured(f"first sync failed for {FIRST_SYNC_TIMEOUT_S:.0f} s: {exc!r}") from exc
            log.warning("first sync failed (%r); retrying", exc)
            time.sleep(1.0)


async def _serve_http(app: Any, host: str, port: int, metrics_url: str) -> None:
    """Run uvicorn on a socket bound here (so port 0 gives a known port); print the ready line."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it every response waits ~40 ms for Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if os.environ.get(REUSE_PORT_ENV):  # one of several serving processes on this port (serving/processes.py)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    # Keep-alive longer than uvicorn's 5 s default: clients and load balancers pool connections and
    # a connection closed under them costs a failed request or a retry.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           timeout_keep_alive=75))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        url = f"http://{host}:{bound}"
        print(json.dumps({"ready": True, "serving": url, "metrics": metrics_url}), flush=True)
        log.info("serving at %s (docs at %s/docs), metrics at %s", url, url, metrics_url)
    await task


if __name__ == "__main__":
    from rtrec.settings import load_settings

    main(load_settings())
