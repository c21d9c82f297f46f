"""The dense real-time features of (user, item) pairs that the ranking head takes: one definition
for the trainer and for serving, so the model sees the same inputs in both.

Read in one Redis round trip, with the window sums done inside Redis
(:meth:`features.reader.FeatureReader.window_counts`). Counts enter as ``log1p``; CTRs are
smoothed towards the stream's CTR over the same window with ``ctr_prior_strength``
pseudo-impressions; trending is ``log1p`` of the decayed score. Order:
:data:`rtrec.model.REALTIME_FEATURES`. Training must read them as they were before the example's
own label arrived (the worker reads them before it applies the batch that holds the click), or
the model learns to read its label from its features.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from features import keys
from features.reader import FeatureReader, counts_array
from rtrec.model import REALTIME_FEATURES

__all__ = ["read_realtime_features"]

ITEM_COUNTS = ("impression_1h", "click_1h", "impression_24h", "click_24h")
USER_COUNTS = ("impression_24h", "click_1h", "click_24h")


def read_realtime_features(reader: FeatureReader, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """``float32 (len(item_ids), 8)`` for pairs ``(user_ids[i], item_ids[i])``; one user broadcasts."""
    n = len(item_ids)
    if len(user_ids) not in (1, n):
        raise ValueError(f"user_ids must have 1 or {n} entries, got {len(user_ids)}")
    users, user_row = np.unique(np.asarray(user_ids, dtype=str), return_inverse=True)
    items, item_row = np.unique(np.asarray(item_ids, dtype=str), return_inverse=True)
    prefix = reader.config.prefix
    pipe = reader.client.pipeline(transaction=False)
    reader.window_counts("i", items.tolist(), ITEM_COUNTS, pipe)
    reader.window_counts("u", users.tolist(), USER_COUNTS, pipe)
    reader.window_counts("g", [], ITEM_COUNTS, pipe)
    pipe.zmscore(keys.ranking(prefix, "trending"), items.tolist() or [""])
    pipe.get(keys.watermark(prefix))
    item_reply, user_reply, stream_reply, trending, wm = pipe.execute()
    item_counts = counts_array(item_reply, len(ITEM_COUNTS))[item_row].astype(np.float64)
    user_counts = counts_array(user_reply, len(USER_COUNTS))[np.broadcast_to(user_row, (n,))].astype(np.float64)
    stream = counts_array(stream_reply, len(ITEM_COUNTS))[0].astype(np.float64)
    a = reader.config.ctr_prior_strength
    p0_1h = stream[1] / stream[0] if stream[0] else 0.0
    p0_24h = stream[3] / stream[2] if stream[2] else 0.0
    log_score = np.array([np.nan if s is None else s for s in trending], dtype=np.float64)[item_row]
    decayed = np.exp(np.minimum(log_score - float(wm or 0.0) / reader.config.trending_tau_s, 50.0))
    columns = {
        "item_log_impressions_1h": np.log1p(item_counts[:, 0]),
        "item_log_clicks_1h": np.log1p(item_counts[:, 1]),
        "item_ctr_1h": (item_counts[:, 1] + a * p0_1h) / (item_counts[:, 0] + a),
        "item_ctr_24h": (item_counts[:, 3] + a * p0_24h) / (item_counts[:, 2] + a),
        "item_log_trending": np.log1p(np.nan_to_num(decayed, nan=0.0)),
        "user_log_impressions_24h": np.log1p(user_counts[:, 0]),
        "user_log_clicks_1h": np.log1p(user_counts[:, 1]),
        "user_log_clicks_24h": np.log1p(user_counts[:, 2]),
    }
    return np.stack([columns[name] for name in REALTIME_FEATURES], axis=1).astype(np.float32)
