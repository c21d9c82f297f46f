"""A shard's Prometheus metrics report what its tables hold, read live at scrape time."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from features.ids import feature_ids
from param_server.metrics import ParamServerMetrics
from param_server.store import ParamStore


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels or None)


def test_rows_admissions_evictions_and_version_follow_the_store() -> None:
    store = ParamStore()
    registry = CollectorRegistry()
    ParamServerMetrics(registry, store)
    items = feature_ids(2, [f"i{k}" for k in range(5)])
    store.push_many(items, np.ones((5, 32), np.float32), ts=1.0)
    assert sample(registry, "rtrec_param_server_table_rows", table="item_id", slot="2") == 5
    assert sample(registry, "rtrec_param_server_admissions_total", table="item_id") == 5
    users = feature_ids(1, ["u1"])
    store.push_many(users, np.ones((1, 32), np.float32), ts=2.0)  # user_id admits on the 2nd sighting
    assert sample(registry, "rtrec_param_server_table_rows", table="user_id", slot="1") == 0
    store.push_many(users, np.ones((1, 32), np.float32), ts=3.0)
    assert sample(registry, "rtrec_param_server_table_rows", table="user_id", slot="1") == 1
    assert sample(registry, "rtrec_param_server_version") == store.version
    store.expire(now=1.0 + 31 * 86400)
    assert sample(registry, "rtrec_param_server_table_rows", table="item_id", slot="2") == 0
    assert sample(registry, "rtrec_param_server_evictions_total", table="item_id") == 5
