"""Fixtures shared by the worker and recovery tests on the real stack."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.integration.test_worker import Pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, redis_url: str) -> Iterator[Pipeline]:
    """A parameter server and one worker (more with ``add_worker``) of the module's own, stopped after it."""
    p = Pipeline(tmp_path_factory.mktemp("pipeline"), kafka_bootstrap, redis_url)
    try:
        p.add_worker()
        yield p
    finally:
        p.stop()
