"""The HTTP API end to end over a trained store, the real Redis feature store and the model."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import CollectorRegistry

from features.config import FeatureConfig
from features.ids import feature_ids
from features.reader import FeatureReader
from features.writer import FeatureWriter
from rtrec.events import Event
from serving.api import Serving, create_app
from serving.main import build_serving
from serving_fixtures import T0, Trained, clicks_of, make_trained, train

pytestmark = pytest.mark.integration


@dataclass
class Env:
    trained: Trained
    serving: Serving
    client: TestClient
    writer: FeatureWriter
    reader: FeatureReader
    sent: list[dict]


def write(writer: FeatureWriter, events: list[Event]) -> None:
    events = sorted(events, key=lambda e: e.ts)
    for lo in range(0, len(events), 500):
        writer.write_many(events[lo:lo + 500])


def _env(redis_url: str) -> Iterator[Env]:
    trained = make_trained()
    client = redis.Redis.from_url(redis_url)
    config = FeatureConfig(prefix=f"t{uuid.uuid4().hex[:8]}:")
    writer, reader = FeatureWriter(client, config), FeatureReader(client, config)
    write(writer, trained.events)
    sent: list[dict] = []
    serving = build_serving(trained.store, reader, CollectorRegistry(), dense_interval_s=0, send_impression=sent.append)
    serving.sync.sync_once()
    with TestClient(create_app(serving)) as http:
        yield Env(trained, serving, http, writer, reader, sent)
    if serving.impressions is not None:
        serving.impressions.close()
    client.close()


@pytest.fixture
def env(redis_url: str) -> Iterator[Env]:
    """A fresh store, feature namespace and app: for tests that train or sync."""
    yield from _env(redis_url)


@pytest.fixture(scope="module")
def shared(redis_url: str) -> Iterator[Env]:
    """One app for the read-only tests of this module."""
    yield from _env(redis_url)


def active_user(env: Env) -> str:
    """The simulated user with the most clicks (known to the model and with recent items)."""
    users = [e.user_id for e in env.trained.events if e.action == "click"]
    return max(set(users), key=users.count)


def recommend(env: Env, body: dict) -> dict:
    response = env.client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_healthz_reports_the_synced_version(shared: Env) -> None:
    body = shared.client.get("/healthz").json()
    assert body["status"] == "ok" and body["model_version"] == shared.trained.store.version
    assert body["synced_at"] > 0


def test_embeddings_equal_the_parameter_server_rows(shared: Env) -> None:
    user, item = active_user(shared), shared.trained.events[0].item_id
    for kind, slot, name in (("user", 1, user), ("item", 2, item)):
        body = shared.client.get(f"/embeddings/{kind}/{name}").json()
        expected = shared.trained.store.pull_many(feature_ids(slot, [name]))[0]
        assert body["id"] == name and body["version"] == shared.trained.store.version
        np.testing.assert_array_equal(np.array(body["vector"], dtype=np.float32), expected)
    missing = shared.client.get("/embeddings/user/nobody-at-all")
    assert missing.status_code == 404 and "error" in missing.json()


def test_recommend_returns_k_ranked_items_and_logs_impressions(env: Env) -> None:
    body = recommend(env, {"user_id": active_user(env), "k": 5, "context": {"device": "ios"}})
    scores = [it["score"] for it in body["items"]]
    assert len(body["items"]) == 5 and body["model_version"] == env.trained.store.version
    assert all(0.0 <= s <= 1.0 for s in scores)
    deadline = time.monotonic() + 5
    while len(env.sent) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e["item_id"] for e in env.sent] == [it["item_id"] for it in body["items"]]
    assert {e["request_id"] for e in env.sent} == {body["request_id"]}
    assert all(e["action"] == "impression" and e["context"] == {"device": "ios"} for e in env.sent)


def test_unknown_user_gets_the_cold_start_list(shared: Env) -> None:
    cold = shared.serving.metrics.recommendations.labels("cold_start")
    before = cold._value.get()
    body = recommend(shared, {"user_id": "brand-new-user", "k": 5})
    trending = [name for name, _ in shared.reader.top("trending", 5)]
    assert len(trending) == 5 and [it["item_id"] for it in body["items"]] == trending
    assert cold._value.get() == before + 1 and shared.serving.metrics._cold_share() > 0


def test_excluded_and_already_seen_items_never_appear(shared: Env) -> None:
    user = active_user(shared)
    seen = set(shared.reader.users([user])[0]["recent_items"])
    first = [it["item_id"] for it in recommend(shared, {"user_id": user, "k": 20})["items"]]
    assert seen and not seen & set(first)
    exclude = first[:10]
    second = [it["item_id"] for it in recommend(shared, {"user_id": user, "k": 20, "exclude": exclude})["items"]]
    assert not (set(exclude) | seen) & set(second)
    cold = recommend(shared, {"user_id": "newcomer", "k": 5, "exclude": first[:3]})["items"]
    assert not set(first[:3]) & {it["item_id"] for it in cold}


def test_recommendations_change_after_the_users_clicks_are_trained_and_synced(env: Env) -> None:
    user = active_user(env)
    before = [it["item_id"] for it in recommend(env, {"user_id": user, "k": 10})["items"]]
    vector_before = env.client.get(f"/embeddings/user/{user}").json()["vector"]
    clicks = clicks_of(user, before[:5] * 4, T0 + 700)
    train(env.trained.trainer, clicks)
    write(env.writer, clicks)
    env.serving.sync.sync_once()
    after = recommend(env, {"user_id": user, "k": 10})
    assert after["model_version"] == env.trained.store.version
    assert env.client.get(f"/embeddings/user/{user}").json()["vector"] != vector_before
    assert [it["item_id"] for it in after["items"]] != before
    assert not set(before[:5]) & {it["item_id"] for it in after["items"]}  # now already seen


def test_score_similar_and_features(shared: Env) -> None:
    user, items = active_user(shared), sorted({e.item_id for e in shared.trained.events})[:3]
    scores = shared.client.post("/score", json={"user_id": user, "item_ids": items}).json()["scores"]
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    similar = shared.client.get(f"/similar/items/{items[0]}", params={"k": 4}).json()["items"]
    assert len(similar) == 4 and items[0] not in {s["id"] for s in similar}
    recommend(shared, {"user_id": user})
    recommend(shared, {"user_id": "u1"})
    users = shared.client.get(f"/similar/users/{user}", params={"k": 3}).json()["users"]
    assert user not in {u["id"] for u in users}
    assert shared.client.get("/similar/items/not-an-item").status_code == 404
    features = shared.client.get(f"/features/user/{user}").json()
    assert features["id"] == user and features["recent_items"]
    assert "ctr_1h" in shared.client.get(f"/features/item/{items[0]}").json()
    metrics = shared.client.get("/metrics").text
    assert "rtrec_serving_request_duration_seconds_bucket" in metrics and "rtrec_serving_model_version" in metrics
    assert shared.client.get("/openapi.json").json()["paths"]["/recommend"]


MALFORMED = [
    ("post", "/recommend", b"not json"),
    ("post", "/recommend", {}),
    ("post", "/recommend", {"user_id": ""}),
    ("post", "/recommend", {"user_id": "u" * 257}),
    ("post", "/recommend", {"user_id": "u1", "k": 0}),
    ("post", "/recommend", {"user_id": "u1", "k": 101}),
    ("post", "/recommend", {"user_id": "u1", "k": "ten"}),
    ("post", "/recommend", {"user_id": 5}),
    ("post", "/recommend", {"user_id": "u1", "exclude": ["x"] * 1001}),
    ("post", "/recommend", {"user_id": "u1", "context": {"k": {"nested": 1}}}),
    ("post", "/recommend", [1, 2]),
    ("post", "/score", {"user_id": "u1", "item_ids": ["x"] * 1001}),
    ("post", "/score", {"user_id": "u1"}),
    ("get", "/similar/items/i1?k=1000", None),
    ("get", "/similar/users/u1?k=x", None),
    ("get", "/embeddings/shoe/i1", None),
    ("get", "/no/such/route", None),
    ("get", "/recommend", None),
]


@pytest.mark.parametrize("method,path,body", MALFORMED)
def test_malformed_requests_get_4xx_json_errors(shared: Env, method: str, path: str, body: object) -> None:
    if isinstance(body, bytes):
        response = shared.client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        response = shared.client.request(method, path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]


def test_oversized_body_is_refused(shared: Env) -> None:
    response = shared.client.post("/recommend", content=b" " * (2 << 20), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "error" in response.json()


SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=20))
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
BODIES = st.one_of(JSON, st.fixed_dictionaries({"user_id": JSON}, optional={"k": JSON, "context": JSON,
                                                                            "exclude": JSON}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_fuzzed_recommend_bodies_never_get_5xx(shared: Env, body: object) -> None:
    response = shared.client.post("/recommend", json=body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"error"}


def test_api_key_guards_everything_but_health_and_metrics(shared: Env) -> None:
    guarded = Serving(**{**shared.serving.__dict__, "api_key": "s3cret", "impressions": None})
    with TestClient(create_app(guarded)) as http:
        assert http.post("/recommend", json={"user_id": "u1"}).status_code == 401
        ok = http.post("/recommend", json={"user_id": "u1"}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert http.get("/healthz").status_code == 200 and http.get("/metrics").status_code == 200


def test_swaps_during_concurrent_requests_never_error(env: Env) -> None:
    users = sorted({e.user_id for e in env.trained.events})[:8] + ["stranger"]
    errors: list[BaseException] = []
    done = threading.Event()

    def hammer() -> None:
        n = 0
        while not done.is_set() or n < 20:
            try:
                result = env.serving.recommender.recommend(users[n % len(users)], 10, {"device": "web"}, [])
                assert len(result.items) <= 10
                env.serving.recommender.score(users[n % len(users)], ["i1", "i2"], None)
            except BaseException as exc:  # noqa: BLE001 - any failure in a reader thread fails the test
                errors.append(exc)
                return
            n += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for round_ in range(6):  # every sync pulls dense weights (dense_interval_s=0): model and index swaps
        train(env.trained.trainer, clicks_of(users[round_], [f"i{round_}", f"i{round_ + 1}"] * 3, T0 + 800 + round_))
        env.serving.sync.sync_once()
    done.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    assert env.serving.sync.model_version == env.trained.store.version


def test_ids_that_are_not_valid_unicode_get_a_422_not_a_crash(shared: Env) -> None:
    raw = b'{"user_id": "u\\ud800", "k": 3}'  # a JSON escape of a lone surrogate
    response = shared.client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "unicode" in response.json()["error"]
    response = shared.client.post("/score", content=b'{"user_id": "u", "item_ids": ["a"], "context": {"d": "\\udfff"}}',
                                  headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_a_batch_of_requests_gets_what_each_would_get_alone(shared: Env) -> None:
    from serving.ranking import Ask

    rec = shared.serving.recommender
    users = sorted({e.user_id for e in shared.trained.events})[:6] + ["never-seen-user"]
    asks = [Ask(u, 5, {"device": "ios"}, ["i1"] if n % 2 else []) for n, u in enumerate(users)]
    together = rec.recommend_many(asks)
    alone = [rec.recommend_many([a])[0] for a in asks]
    assert [[name for name, _ in r.items] for r in together] == [[name for name, _ in r.items] for r in alone]
    for batched, single in zip(together, alone):  # batched matrix products differ in the last bits only
        assert [s for _, s in batched.items] == pytest.approx([s for _, s in single.items], rel=1e-5, abs=1e-7)
    assert [r.cold_start for r in together].count(True) >= 1  # the unknown user got the cold-start list


def test_a_chunked_body_over_the_limit_is_refused_too(shared: Env) -> None:
    from serving.api import MAX_BODY_BYTES

    chunks = iter([b'{"user_id": "u1", "exclude": ["' + b"x" * MAX_BODY_BYTES, b'"]}'])  # no Content-Length
    response = shared.client.post("/recommend", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over" in response.json()["error"]
    assert shared.client.post("/recommend", json={"user_id": "u1"}).status_code == 200
