"""Request ids (from and to `X-Request-ID`), JSON log lines (the opt-in `log_format=json`) and CORS (off
unless origins are configured): in the app, and in the API run as a process."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient

from recsys_assets.contract.logs import REQUEST_ID, JsonFormatter, RequestIdFilter, configure_process_logging
from recsys_assets.contract.settings import Settings
from serving.app import create_app
from tests.api_support import api_env, movielens_artifact, publish


@pytest.fixture
def api_settings(settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "store"
    publish(root, movielens_artifact())
    return settings.model_copy(
        update={
            "storage_uri": str(root),
            "events_dir": str(tmp_path / "events"),
            "redis_url": "",
            "rate_limit_per_minute": 0,
            "model_poll_seconds": 60.0,
        }
    )


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as c:
        yield c


def test_a_request_id_is_generated_or_echoed(client: TestClient) -> None:
    fresh = client.get("/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    assert client.get("/health").headers["x-request-id"] != fresh
    given = client.get("/v1/users/1/recommendations", headers={"X-Request-ID": "client-7:abc"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "client-7:abc"
    # errors carry it too
    missing = client.get("/v1/items/no-such-item/similar", headers={"X-Request-ID": "r-404"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-404"
    # what cannot be logged or echoed safely is replaced, not passed on
    for bad in ("has space", "x" * 129, 'quote"d'):
        echoed = client.get("/health", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), bad


def test_cors_is_off_unless_origins_are_configured(client: TestClient, api_settings: Settings) -> None:
    plain = client.get("/health", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in plain.headers
    allowed = api_settings.model_copy(update={"cors_allow_origins": "https://app.example.com/, https://b.example"})
    with TestClient(create_app(allowed)) as c:
        preflight = c.options(
            "/v1/users/1/recommendations",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "X-Request-ID",
            },
        )
        assert preflight.status_code in (200, 204), preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in preflight.headers["access-control-allow-headers"].lower()
        got = c.get("/health", headers={"Origin": "https://b.example"})
        assert got.headers["access-control-allow-origin"] == "https://b.example"
        assert "x-request-id" in got.headers["access-control-expose-headers"].lower()
        other = c.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_credentials_with_any_origin_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="RECSYS_CORS_ALLOW_CREDENTIALS with RECSYS_CORS_ALLOW_ORIGINS"):
        Settings.model_validate({**settings.model_dump(), "cors_allow_origins": "*", "cors_allow_credentials": True})


def test_json_lines_carry_the_request_id_extras_and_the_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    log = logging.getLogger("recsys.test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        token = REQUEST_ID.set("req-1")
        try:
            log.warning("scored %s items", 3, extra={"user_id": "42", "odd": object()})
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                log.exception("failed")
        finally:
            REQUEST_ID.reset(token)
        log.info("outside")
    finally:
        log.removeHandler(handler)
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "scored 3 items" and first["level"] == "WARNING"
    assert (first["request_id"], first["user_id"], first["logger"]) == ("req-1", "42", "recsys.test.json")
    assert first["odd"].startswith("<object object")
    assert first["ts"].endswith("+00:00")
    assert second["request_id"] == "req-1" and "RuntimeError: boom" in second["exc_info"]
    assert third["request_id"] is None


def test_process_logging_is_replaced_not_stacked(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure_process_logging("text")
        configure_process_logging("json")
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1 and isinstance(added[0].formatter, JsonFormatter)
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


@pytest.mark.integration
def test_the_api_process_logs_json_with_the_request_id(redis_server, storage, start_api) -> None:
    api = start_api(api_env(storage, redis_server.url, RECSYS_LOG_FORMAT="json"))
    r = httpx.get(f"{api.url}/v1/users/1/recommendations", headers={"X-Request-ID": "trace-42"}, timeout=10)
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    generated = httpx.get(f"{api.url}/v1/items/no-such-item/similar", timeout=10).headers["x-request-id"]
    api.stop()
    lines = [line for line in api.log().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\nlog:\n" + "\n".join(lines))
    ours = [p for p in parsed if p["request_id"] == "trace-42"]
    assert any(p["logger"] == "uvicorn.access" and "/v1/users/1/recommendations" in p["message"] for p in ours), ours
    assert any(p["request_id"] == generated and "/similar" in p["message"] for p in parsed)
    # the API's own lines (startup) are JSON too, outside any request
    assert any(p["logger"] == "serving" and p["request_id"] is None for p in parsed)
