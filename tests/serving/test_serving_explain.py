"""``/recommend`` with ``"explain": true``: what retrieval, ranking and the rules did, for diagnosis
(benchmarks/live_quality.py); the default response stays as CONTRACT.md describes it."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from features.reader import FeatureReader
from serving.api import create_app
from serving.main import build_serving
from serving.ranking import Ask, RankingConfig
from serving_fixtures import make_trained, write_features

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app(redis_url: str) -> Iterator[tuple[TestClient, str]]:
    """Serving over a trained store and its events' features; yields the client and an active user."""
    trained = make_trained()
    client = redis.Redis.from_url(redis_url)
    config = write_features(client, trained.events, f"t{uuid.uuid4().hex[:8]}:")
    serving = build_serving(trained.store, FeatureReader(client, config), CollectorRegistry(), dense_interval_s=0,
                            send_impression=lambda _: None)
    serving.sync.sync_once()
    clicks = [e.user_id for e in trained.events if e.action == "click"]
    with TestClient(create_app(serving)) as http:
        yield http, max(set(clicks), key=clicks.count)
    if serving.impressions is not None:
        serving.impressions.close()
    client.close()


def post(http: TestClient, body: dict) -> dict:
    response = http.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_explain_says_what_each_stage_kept(app: tuple[TestClient, str]) -> None:
    http, user = app
    exclude = post(http, {"user_id": user, "k": 3})["items"][0]["item_id"]
    body = post(http, {"user_id": user, "k": 10, "exclude": [exclude], "explain": True})
    why, served = body["explain"], [it["item_id"] for it in body["items"]]
    assert why["cold_start"] is False
    assert why["ranked"] and set(why["ranked"]) <= set(why["retrieved"])
    assert set(served) <= set(why["ranked"])  # the list is made of scored candidates
    assert exclude in why["blocked"] and exclude not in why["retrieved"]
    assert not set(why["blocked"]) & set(why["ranked"])
    scores = {it["item_id"]: it["score"] for it in body["items"]}
    by_head = [name for name in why["ranked"] if name in scores]  # head order agrees with the scores
    assert [scores[n] for n in by_head] == sorted(scores.values(), reverse=True)


def test_explain_marks_the_cold_start_list(app: tuple[TestClient, str]) -> None:
    http, _ = app
    why = post(http, {"user_id": "never-seen-explain", "k": 5, "explain": True})["explain"]
    assert why == {"cold_start": True, "retrieved": [], "ranked": [], "blocked": []}


def test_the_default_response_has_no_explain(app: tuple[TestClient, str]) -> None:
    http, user = app
    for body in ({"user_id": user, "k": 5}, {"user_id": user, "k": 5, "explain": False}):
        assert set(post(http, body)) == {"request_id", "model_version", "items"}


def test_the_covisited_items_are_ranked_beside_what_the_user_vector_retrieved(redis_url: str) -> None:
    trained = make_trained()
    client = redis.Redis.from_url(redis_url)
    reader = FeatureReader(client, write_features(client, trained.events, f"t{uuid.uuid4().hex[:8]}:"))
    clicks = [e.user_id for e in trained.events if e.action == "click"]
    user = max(set(clicks), key=clicks.count)
    covisited = reader.recall_many([user], top=5)[0].covisited
    assert len(covisited) == 5, "the stream must co-visit the user's items"
    ranked = {}
    for channel in (0, 5):
        serving = build_serving(trained.store, reader, CollectorRegistry(), dense_interval_s=0,
                                send_impression=lambda _: None, ranking=RankingConfig(ranked=1, covisited=channel))
        serving.sync.sync_once()
        why = serving.recommender.recommend_many([Ask(user, 3, explain=True)])[0].explain
        assert why is not None and set(why["ranked"]) <= set(why["retrieved"])
        ranked[channel] = why["ranked"]
    # by the head's order: the user vector's best item, then the co-visited ones not already it
    (best,) = ranked[0]
    assert sorted(ranked[5]) == sorted({best, *covisited})
    client.close()


def test_items_acted_on_before_the_recent_list_are_never_recommended_again(redis_url: str) -> None:
    trained = make_trained()
    client = redis.Redis.from_url(redis_url)
    config = write_features(client, trained.events, f"t{uuid.uuid4().hex[:8]}:", recent_items=2)
    serving = build_serving(trained.store, FeatureReader(client, config), CollectorRegistry(), dense_interval_s=0)
    serving.sync.sync_once()
    clicks = [e.user_id for e in trained.events if e.action == "click"]
    user = max(set(clicks), key=clicks.count)
    acted = {e.item_id for e in trained.events if e.user_id == user and e.action == "click"}
    ask = [Ask(user, 30, None, (), explain=True)]
    recommender = serving.recommender
    recommender.reader = FeatureReader(client, replace(config, acted_items=0))  # the recent list only
    shown_again = {name for name, _ in recommender.recommend_many(ask)[0].items} & acted
    assert shown_again, "the user's older items must be among its best candidates, else this proves nothing"
    recommender.reader = FeatureReader(client, config)
    rec = recommender.recommend_many(ask)[0]
    assert not {name for name, _ in rec.items} & acted
    assert rec.explain is not None and shown_again <= set(rec.explain["blocked"])
    assert not shown_again & (set(rec.explain["retrieved"]) | set(rec.explain["ranked"]))
    client.close()
