"""Settings: defaults, environment variables with the RECSYS_ prefix, and clear errors."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from recsys_assets.contract.settings import get_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)


def test_defaults_are_local_movielens() -> None:
    s = get_settings()
    assert s.source == "movielens"
    assert s.storage_uri == "data"
    assert not s.is_azure
    assert s.event_weights["purchase"] > s.event_weights["add_to_cart"] > s.event_weights["view"]


def test_environment_with_prefix_and_nested_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SOURCE", "event_log")
    monkeypatch.setenv(
        "RECSYS_EVENT_LOG",
        json.dumps({"paths": ["a.csv"], "header": False, "names": ["user_id", "item_id", "event_type", "timestamp"]}),
    )
    monkeypatch.setenv("RECSYS_KCORE_USER", "5")
    s = get_settings()
    assert s.event_log is not None and s.event_log.paths == ["a.csv"]
    assert s.kcore_user == 5


def test_env_file(tmp_path) -> None:
    env = tmp_path / "x.env"
    env.write_text("RECSYS_STORAGE_URI=/tmp/somewhere\nRECSYS_RATING_MAX=10\n")
    s = get_settings(env_file=env)
    assert s.storage_uri == "/tmp/somewhere" and s.rating_max == 10


def test_abfs_needs_credentials() -> None:
    with pytest.raises(ValidationError, match="RECSYS_AZURE_CONNECTION_STRING"):
        get_settings(storage_uri="abfs://recsys/data")
    s = get_settings(storage_uri="abfs://recsys/data", azure_connection_string="UseDevelopmentStorage=true")
    assert s.is_azure


@pytest.mark.parametrize("uri", ["s3://bucket/x", "abfs://"])
def test_bad_storage_uri_is_named(uri: str) -> None:
    with pytest.raises(ValidationError, match="storage_uri"):
        get_settings(storage_uri=uri, azure_connection_string="x")


@pytest.mark.parametrize("weight", [0, -1])
def test_an_event_weight_must_be_positive(monkeypatch: pytest.MonkeyPatch, weight: int) -> None:
    # a zero or negative weight would cancel or invert a user's history (and divide by zero in a fold-in)
    monkeypatch.setenv("RECSYS_EVENT_WEIGHTS", json.dumps({"view": 1, "dislike": weight}))
    with pytest.raises(ValidationError, match=r"event_weights\.dislike\n.*greater than 0"):
        get_settings()


def test_event_log_source_required_and_event_types_checked() -> None:
    with pytest.raises(ValidationError, match="RECSYS_EVENT_LOG"):
        get_settings(source="event_log")
    with pytest.raises(ValidationError, match="unknown event types"):
        get_settings(source="event_log", event_log={"paths": ["a.csv"], "event_types": {"pv": "pageview"}})
