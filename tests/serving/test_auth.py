"""Who may call serving: with RTREC_API_KEY set, only RTREC_OPEN_ENDPOINTS are served without it, and
never the endpoints that return one user's data; without a key, serving refuses to listen anywhere
but loopback unless RTREC_ALLOW_UNAUTHENTICATED is set."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import uuid
from dataclasses import replace
from types import SimpleNamespace
from typing import Iterator

import pydantic
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from features.reader import FeatureReader
from rtrec.errors import ImproperlyConfigured
from rtrec.settings import OPENABLE_ENDPOINTS, USER_DATA_ENDPOINTS, load_settings
from serving.api import ENDPOINT_PATHS, OPEN_PATHS, Serving, create_app
from serving.main import build_serving, check_exposure
from serving_fixtures import make_trained, write_features

KEY = "s3cret"
USER_DATA_PATHS = ("/features/user/{user}", "/similar/users/{user}", "/embeddings/user/{user}")


@pytest.fixture(scope="module")
def served(redis_url: str) -> Iterator[tuple[Serving, str]]:
    """Serving (no key yet) over a trained store and its events' features, and its most active user."""
    trained = make_trained()
    client = redis.Redis.from_url(redis_url)
    config = write_features(client, trained.events, f"t{uuid.uuid4().hex[:8]}:")
    serving = build_serving(trained.store, FeatureReader(client, config), CollectorRegistry(), dense_interval_s=0)
    serving.sync.sync_once()
    clicks = [e.user_id for e in trained.events if e.action == "click"]
    yield serving, max(set(clicks), key=clicks.count)
    client.close()


def client(served: tuple[Serving, str], api_key: str, open_endpoints: set[str] = set()) -> TestClient:
    return TestClient(create_app(replace(served[0], api_key=api_key, open_endpoints=frozenset(open_endpoints))))


def assert_refused(response: object) -> None:
    assert response.status_code == 401, response.text  # type: ignore[attr-defined]
    assert response.json() == {"error": "missing or wrong X-API-Key"}  # type: ignore[attr-defined]


@pytest.mark.integration
def test_open_recommend_is_served_without_key_but_user_data_needs_it(served: tuple[Serving, str]) -> None:
    user = served[1]
    with client(served, KEY, {"recommend"}) as http:
        body = http.post("/recommend", json={"user_id": user, "k": 3})
        assert body.status_code == 200 and len(body.json()["items"]) == 3  # recent_users now knows the user
        assert_refused(http.post("/score", json={"user_id": user, "item_ids": ["i1"]}))  # not opened
        assert_refused(http.get("/similar/items/i1"))
        for path in USER_DATA_PATHS:
            assert_refused(http.get(path.format(user=user)))
            assert_refused(http.get(path.format(user=user), headers={"X-API-Key": KEY + "x"}))
            assert http.get(path.format(user=user), headers={"X-API-Key": KEY}).status_code == 200, path


@pytest.mark.integration
def test_explain_needs_the_key_even_on_an_open_recommend(served: tuple[Serving, str]) -> None:
    """Its ``blocked`` list names items the user acted on."""
    body = {"user_id": served[1], "k": 3, "explain": True}
    with client(served, KEY, {"recommend"}) as http:
        refused = http.post("/recommend", json=body)
        assert refused.status_code == 401 and refused.json() == {"error": "explain needs X-API-Key"}
        assert "explain" in http.post("/recommend", json=body, headers={"X-API-Key": KEY}).json()


@pytest.mark.integration
def test_every_openable_endpoint_opened_still_guards_user_data(served: tuple[Serving, str]) -> None:
    user = served[1]
    with client(served, KEY, set(OPENABLE_ENDPOINTS)) as http:
        assert http.post("/score", json={"user_id": user, "item_ids": ["i1"]}).status_code == 200
        assert http.get("/similar/items/i1").status_code in (200, 404)  # not 401: served
        assert http.get("/features/item/i1").status_code == 200
        for path in USER_DATA_PATHS:
            assert_refused(http.get(path.format(user=user)))
        assert_refused(http.get("/similar/items/i1/extra"))  # an open prefix opens no other path


@pytest.mark.integration
def test_without_a_key_everything_stays_open_as_on_loopback(served: tuple[Serving, str]) -> None:
    with client(served, "") as http:
        for path in USER_DATA_PATHS:
            assert http.get(path.format(user=served[1])).status_code == 200, path
        assert "explain" in http.post("/recommend", json={"user_id": served[1], "explain": True}).json()


def test_endpoint_names_cover_every_route_once() -> None:
    """Every route is either always open (health, metrics, docs) or has exactly one endpoint name,
    and the names are those rtrec.settings sorts into openable and user data."""
    assert set(ENDPOINT_PATHS) == set(OPENABLE_ENDPOINTS) | set(USER_DATA_ENDPOINTS)
    assert not set(OPENABLE_ENDPOINTS) & set(USER_DATA_ENDPOINTS)
    app = create_app(Serving(SimpleNamespace(recommend_many_async=None), None, None, None))  # type: ignore[arg-type]
    paths = {route.path for route in app.routes}  # type: ignore[attr-defined]
    for path in paths - OPEN_PATHS:
        for kind in (("user", "item") if "{kind}" in path else ("",)):
            example = re.sub(r"\{[^}]+\}", "x", path.replace("{kind}", kind))
            names = [n for n, pattern in ENDPOINT_PATHS.items() if re.fullmatch(pattern, example)]
            assert len(names) == 1, (example, names)


def test_create_app_refuses_to_open_user_data() -> None:
    for name in USER_DATA_ENDPOINTS:
        with pytest.raises(ValueError, match=name):
            create_app(Serving(None, None, None, None, api_key=KEY,  # type: ignore[arg-type]
                               open_endpoints=frozenset({"recommend", name})))


def test_settings_refuse_user_data_and_unknown_endpoints_in_the_open_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_OPEN_ENDPOINTS", " recommend, score ,similar_items")
    assert load_settings().open_endpoint_names == {"recommend", "score", "similar_items"}
    assert load_settings(open_endpoints="").open_endpoint_names == set()
    for name in USER_DATA_ENDPOINTS:
        with pytest.raises(pydantic.ValidationError, match=f"RTREC_OPEN_ENDPOINTS may not list {name}.*RTREC_API_KEY"):
            load_settings(open_endpoints=f"recommend,{name}")
    with pytest.raises(pydantic.ValidationError, match="unknown endpoint.*recomend"):
        load_settings(open_endpoints="recomend")


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.1.2.3", "serving.example.com"])
def test_serving_refuses_a_non_loopback_bind_without_a_key(host: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="RTREC_HTTP_HOST=.* RTREC_API_KEY is empty.*make secrets"):
        check_exposure(load_settings(http_host=host, api_key=""))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_serving_on_loopback_needs_no_key(host: str) -> None:
    check_exposure(load_settings(http_host=host, api_key=""))


def test_serving_binds_anywhere_with_a_key_or_the_explicit_opt_out(caplog: pytest.LogCaptureFixture) -> None:
    check_exposure(load_settings(http_host="0.0.0.0", api_key=KEY))
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        check_exposure(load_settings(http_host="0.0.0.0", api_key="", allow_unauthenticated=True))
    assert "RTREC_ALLOW_UNAUTHENTICATED" in caplog.text


def test_rtrec_serve_exits_with_the_reason_before_connecting_anything() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RTREC_API_KEY", "RTREC_ALLOW_UNAUTHENTICATED")}
    env.update(RTREC_HTTP_HOST="0.0.0.0", RTREC_PARAM_SERVERS="127.0.0.1:9", RTREC_REDIS_URL="redis://127.0.0.1:9/0")
    result = subprocess.run([sys.executable, "-m", "rtrec.cli", "serve"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert "RTREC_HTTP_HOST=0.0.0.0 is not a loopback address and RTREC_API_KEY is empty" in result.stderr
