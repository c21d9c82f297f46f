"""Run one parameter-server shard: ``main(settings)`` (wired to ``rtrec param-server``).

Start-up refuses a non-loopback ``settings.ps_host`` without ``RTREC_PS_TOKEN`` (unless
``RTREC_ALLOW_UNAUTHENTICATED``; see :func:`check_exposure`), restores the shard's latest snapshot
from ``settings.snapshot_dir`` when there is one, then listens on ``settings.ps_host:ps_port``
(0 = a free port), serves Prometheus metrics on ``settings.metrics_port`` and prints exactly one
JSON line to stdout once ready::

    {"ready": true, "param_server": "127.0.0.1:P", "metrics": "http://127.0.0.1:M/metrics"}

It snapshots every ``snapshot_interval_s`` (when something changed) and once more on SIGTERM or
SIGINT, then exits. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Any

from prometheus_client import CollectorRegistry

from param_server.config import DEFAULT_TABLES, EmbeddingConfig, tables_from_json
from param_server.metrics import ParamServerMetrics
from param_server.protocol import Limits
from param_server.server import ParamServer
from param_server.snapshot import latest_snapshot, read_snapshot
from param_server.store import ParamStore
from rtrec.errors import ImproperlyConfigured
from rtrec.logs import configure_logging
from rtrec.metrics_http import serve_metrics
from rtrec.settings import refuse_unauthenticated_bind

__all__ = ["main", "serve", "load_store", "check_exposure"]

log = logging.getLogger("param_server")

# Settings this module reads with a default until rtrec.settings declares them.


def main(settings: Any) -> None:
    """Run one shard until SIGTERM/SIGINT (see the module docstring)."""
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))


def load_store(settings: Any, tables: tuple[EmbeddingConfig, ...]) -> ParamStore:
    """The shard's store: restored from its latest snapshot, or empty."""
    path = latest_snapshot(settings.snapshot_dir, settings.ps_shard)
    if path is None:
        log.info("no snapshot of shard %d under %s; starting empty", settings.ps_shard, settings.snapshot_dir)
        return ParamStore(tables, settings.snapshot_dir, settings.ps_shard, settings.ps_num_shards,
                          settings.max_event_ahead_s)
    arrays, meta = read_snapshot(path)
    if (meta["shard"], meta["num_shards"]) != (settings.ps_shard, settings.ps_num_shards):
        raise ImproperlyConfigured(
            f"snapshot {path} is of shard {meta['shard']}/{meta['num_shards']} but this process is "
            f"shard {settings.ps_shard}/{settings.ps_num_shards}; IDs would be routed elsewhere")
    try:
        store = ParamStore.from_state(arrays, meta, tables, settings.snapshot_dir, settings.max_event_ahead_s)
    except ValueError as exc:
        raise ImproperlyConfigured(f"cannot restore {path}: {exc}") from exc
    store.mark_snapshot(path, store.version)
    log.info("restored %s: version %d, rows %s, offsets %s", path, store.version,
             {n: len(t) for n, t in store.tables.items()}, store.offsets)
    return store


def check_exposure(settings: Any) -> None:
    """Refuse (ImproperlyConfigured) to listen on a non-loopback address with no shared token, unless
    ``RTREC_ALLOW_UNAUTHENTICATED`` is set: any peer could overwrite the model or force snapshots."""
    refuse_unauthenticated_bind(settings.ps_host, settings.ps_token, "RTREC_PS_HOST", "RTREC_PS_TOKEN",
                                settings.allow_unauthenticated)


async def serve(settings: Any) -> None:
    """The shard's lifetime on the running event loop."""
    check_exposure(settings)
    tables_json = settings.ps_tables
    tables = tables_from_json(tables_json) if tables_json else DEFAULT_TABLES
    store = load_store(settings, tables)
    registry = CollectorRegistry()
    metrics = ParamServerMetrics(registry, store)
    limits = Limits(max_body_bytes=settings.ps_max_request_bytes)
    server = ParamServer(store, settings.ps_host, settings.ps_port, settings.ps_token, limits, metrics,
                         snapshot_keep=settings.ps_snapshots_keep)
    host, port = await server.start()
    metrics_url = serve_metrics(settings.metrics_port, settings.metrics_host, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": True, "param_server": f"{host}:{port}", "metrics": metrics_url}), flush=True)
    log.info("shard %d ready; metrics at %s", settings.ps_shard, metrics_url)
    periodic = asyncio.create_task(_snapshot_every(server, settings.snapshot_interval_s, metrics))
    try:
        await stop.wait()
        log.info("stop signal received; final snapshot and shutdown")
    finally:
        periodic.cancel()
        await server.close()
        await _snapshot_if_changed(server, metrics)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _snapshot_every(server: ParamServer, interval_s: float, metrics: ParamServerMetrics) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await _snapshot_if_changed(server, metrics)


async def _snapshot_if_changed(server: ParamServer, metrics: ParamServerMetrics) -> None:
    """Snapshot unless nothing changed since the last one; a failure is logged and counted, not fatal."""
    if server.store.version == server.store.last_snapshot.version:
        return
    try:
        await server.snapshot()
    except (OSError, ValueError):
        log.exception("snapshot of shard %d failed; the previous snapshot stays", server.store.shard)
        metrics.observe_error("snapshot")


if __name__ == "__main__":
    from rtrec.settings import load_settings

    try:
        main(load_settings())
    except ImproperlyConfigured as exc:
        print(f"param-server: {exc}", file=sys.stderr)
        sys.exit(2)
