"""Settings come from RTREC_* environment variables with defaults that fit the local stack."""

from __future__ import annotations

import pytest

from rtrec.settings import load_settings


def test_contract_variables_are_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_KAFKA", "k1:9092,k2:9092")
    monkeypatch.setenv("RTREC_REDIS_URL", "redis://r:6380/1")
    monkeypatch.setenv("RTREC_PARAM_SERVERS", "ps0:7070, ps1:7071")
    monkeypatch.setenv("RTREC_HTTP_PORT", "9000")
    s = load_settings()
    assert (s.kafka, s.redis_url, s.http_port) == ("k1:9092,k2:9092", "redis://r:6380/1", 9000)
    assert s.param_server_addrs == [("ps0", 7070), ("ps1", 7071)]


def test_bad_param_server_address_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_PARAM_SERVERS", "nohostport")
    with pytest.raises(ValueError, match="expected host:port"):
        _ = load_settings().param_server_addrs


def test_out_of_range_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_HTTP_PORT", "70000")
    with pytest.raises(ValueError):
        load_settings()
