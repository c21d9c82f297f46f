"""Fixtures of the serving tests (helpers live in serving_fixtures.py)."""

from __future__ import annotations

import pytest

from serving_fixtures import Trained, make_trained


@pytest.fixture
def trained() -> Trained:
    """A ParamStore trained a little by OnlineTrainer on ClickSimulator data."""
    return make_trained()
