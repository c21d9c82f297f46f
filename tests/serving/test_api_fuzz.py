"""Fuzzing serving's HTTP API from its own OpenAPI document (schemathesis): whatever a client
sends -- valid per the schema, or not -- the answer is never a 5xx.

The app is the real one (``serving.api.create_app``) over a trained store and the real Redis
feature store of the test stack, called in-process through ASGI.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode

from features.reader import FeatureReader
from serving.api import create_app
from serving.main import build_serving
from serving_fixtures import make_trained, write_features

pytestmark = pytest.mark.integration

EXAMPLES = 30  # per operation and mode


@pytest.fixture(scope="module")
def api_schema(redis_url: str) -> Iterator[schemathesis.BaseSchema]:
    trained = make_trained()
    client = redis.Redis.from_url(redis_url)
    config = write_features(client, trained.events, f"fuzz{uuid.uuid4().hex[:8]}:")
    sent: list[dict] = []
    serving = build_serving(trained.store, FeatureReader(client, config), CollectorRegistry(), dense_interval_s=0,
                            send_impression=sent.append)
    serving.sync.sync_once()
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(serving))
    if serving.impressions is not None:
        serving.impressions.close()
    client.close()


def test_no_request_gets_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    """Every operation, with requests valid per the schema and with invalid ones."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # schemathesis' own pytest plugin does not load under pytest 9: drive its strategies here.
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                response = case.call()
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.300} -> "
                    f"{response.status_code} {response.text[:300]}")

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (an operation without inputs)
                assert mode is GenerationMode.NEGATIVE, operation.label
