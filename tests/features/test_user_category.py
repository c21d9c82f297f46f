"""The (user, category) counters against a real Redis: impressions and clicks count for the user and the
item's category (the event's, else the catalogue's), and the two ranking features read them."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from features.config import FeatureConfig
from features.reader import FeatureReader
from features.realtime import log_lift, read_realtime
from features.writer import FeatureWriter
from rtrec.events import Event
from rtrec.recipe.model import REALTIME_FEATURES

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
CLICKS = REALTIME_FEATURES.index("user_category_log_clicks_24h")
CTR = REALTIME_FEATURES.index("user_category_log_ctr_lift_24h")


def test_user_category_counts_follow_the_items_category_from_the_catalogue(feature_redis) -> None:
    client = feature_redis.client
    config = feature_redis.config()
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    shoes = {"category": "shoes"}
    events = [Event("1", "u", "s1", "impression", T0, item=shoes),
              Event("2", "u", "s1", "click", T0 + 1),  # no category on the event: the catalogue's
              Event("3", "u", "s2", "impression", T0 + 2, item=shoes),
              Event("4", "u", "h1", "impression", T0 + 3, item={"category": "hats"}),
              Event("5", "v", "s2", "click", T0 + 4, item=shoes)]
    writer.write_many(events, now=T0)
    counts = reader.window_counts("uc", [("u", "s2"), ("u", "h1"), ("v", "s1"), ("u", "nowhere")],
                                  ("impression_24h", "click_24h"))
    assert counts.tolist() == [[2, 1], [1, 0], [0, 1], [0, 0]]
    dense = read_realtime(reader, ["u"], ["s2", "h1"]).dense
    stream_ctr = 2 / 3  # the stream's 24 h CTR: 2 clicks of 3 impressions
    prior = config.ctr_prior_strength * stream_ctr
    assert dense[:, CLICKS].tolist() == pytest.approx(np.log1p([1.0, 0.0]).tolist())
    rates = np.array([(1 + prior) / (2 + config.ctr_prior_strength), prior / (1 + config.ctr_prior_strength)])
    assert dense[:, CTR].tolist() == pytest.approx(log_lift(rates, stream_ctr).tolist())


def test_user_category_counters_keep_only_the_actions_features_read(feature_redis) -> None:
    client = feature_redis.client
    config = feature_redis.config()
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    writer.write_many([Event("1", "u", "s1", "like", T0, item={"category": "shoes"}),
                       Event("2", "u", "s1", "click", T0 + 1)], now=T0)
    p = config.layout.prefix_of("u")
    uc_keys = sorted(k.decode() for k in client.scan_iter(match=f"{p}w:uc:*"))
    assert uc_keys == [f"{p}w:uc:u\x1fshoes\x1fclick"]  # no string for the like
    assert reader.users(["u"])[0]["counts"]["like_24h"] == 1  # the user's own counters keep every action
    with pytest.raises(ValueError, match="user categories"):
        reader.window_counts("uc", [("u", "s1")], ("like_24h",))
