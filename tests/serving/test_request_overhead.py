"""What a request costs beyond its work: Litestar resolves the handlers' dependencies one at a time,
never in a task group per request (one anyio task per dependency, ~9% of a list's CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar._kwargs import kwargs_model
from litestar.testing import TestClient

from recsys_assets.contract.settings import Settings
from serving.app import create_app
from tests.api_support import API_KEY, API_KEYS, movielens_artifact, publish


@pytest.fixture
def client(settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    publish(tmp_path / "data", movielens_artifact())
    api_settings = settings.model_copy(
        update={
            "storage_uri": str(tmp_path / "data"),
            "events_dir": str(tmp_path / "events"),
            "redis_url": "",
            "api_keys": API_KEYS,
            "rate_limit_per_minute": 0,
        }
    )
    with TestClient(create_app(api_settings)) as c:
        yield c


def test_dependencies_resolve_without_a_task_group(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise AssertionError("dependencies resolved in a task group")

    monkeypatch.setattr(kwargs_model, "create_task_group", refuse)
    for path in ("/v1/users/1/recommendations", "/v1/items/1/similar", "/v1/model", "/ready"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
    r = client.post(
        "/v1/events", json={"user_id": "1", "item_id": "1", "event_type": "click"}, headers={"X-API-Key": API_KEY}
    )
    assert r.status_code == 202, r.text
