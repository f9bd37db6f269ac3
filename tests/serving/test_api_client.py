"""serving.client against the API run as a process (every endpoint, errors, retries on 429 and 503 with
the server's own Retry-After), its backoff on a scripted transport, and the committed OpenAPI document
against the one the API serves."""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import time

import httpx
import pytest

from serving import client as client_module
from serving.client import ApiError, RecsysClient, retry_after_seconds
from serving.openapi import REGENERATE, render
from serving.schemas import EventIn
from tests.api_support import ADMIN_KEY, API_KEY, SCI_FI_CLICKS, ApiProcess, api_env, movielens_artifact, publish
from tests.conftest import ROOT, wait_for_port

OPENAPI = ROOT / "docs" / "openapi.json"


@pytest.mark.integration
def test_every_endpoint_through_the_client(redis_server, storage, start_api) -> None:
    api = start_api(api_env(storage, redis_server.url))
    with RecsysClient(api.url, api_key=API_KEY) as c, RecsysClient(api.url, api_key=ADMIN_KEY) as admin:
        assert c.health().status == "ok"
        ready = c.ready()
        assert (ready.status, ready.model_version) == ("ready", "Hybrid-test-A")
        recs = c.recommendations("1", k=5)
        assert recs.user_id == "1" and [i.rank for i in recs.items] == [1, 2, 3, 4, 5] and not recs.cold_start
        assert len(c.recommendations("1", k=3, exclude_seen=False).items) == 3
        dramas = c.recommendations("1", k=5, category="Drama")
        assert dramas.items and all("Drama" in i.categories for i in dramas.items)
        similar = c.similar_items("50", k=4)
        assert similar.item_id == "50" and len(similar.items) == 4
        # a newcomer's clicks, one posted alone and a batch, attributed to the list they came from
        cold = c.recommendations("client-newcomer", k=5)
        assert cold.cold_start
        first = {"user_id": "client-newcomer", "item_id": SCI_FI_CLICKS[0], "event_type": "click"}
        first["recommendation_id"] = cold.recommendation_id
        assert c.post_events(first).accepted == 1
        batch = [
            EventIn(user_id="client-newcomer", item_id=i, event_type="click", event_id=f"client-{i}")
            for i in SCI_FI_CLICKS[1:]
        ]
        assert c.post_events(batch).accepted == 2
        # the same event ids again: answered as duplicates, not stored twice
        again = c.post_events(batch)
        assert (again.accepted, again.duplicates, sorted(again.duplicate_event_ids)) == (
            0,
            2,
            sorted(e.event_id for e in batch),
        )
        assert not c.recommendations("client-newcomer", k=5).cold_start
        assert c.model().champion.model_version == "Hybrid-test-A"
        assert admin.reload_model().champion.model_version == "Hybrid-test-A"
        assert "recsys_api_requests_total" in c.metrics() or "recsys_api" in c.metrics()
        # errors: the status, the API's detail, and the request id to quote
        with pytest.raises(ApiError) as missing:
            c.similar_items("no-such-item", request_id="client-trace-1")
        assert missing.value.status_code == 404 and missing.value.request_id == "client-trace-1"
        assert "no-such-item" in missing.value.detail
        with pytest.raises(ApiError) as refused:
            c.reload_model()
        assert refused.value.status_code == 403
        with RecsysClient(api.url) as anonymous, pytest.raises(ApiError) as no_key:
            anonymous.post_events(first)
        assert no_key.value.status_code == 401


@pytest.mark.integration
def test_429_is_retried_after_the_servers_retry_after(redis_server, storage, start_api) -> None:
    api = start_api(api_env(storage, redis_server.url, RECSYS_RATE_LIMIT_PER_MINUTE="2"))
    waits: list[float] = []
    with RecsysClient(api.url, retries=2, sleep=waits.append) as c:
        c.recommendations("1"), c.recommendations("1")
        with pytest.raises(ApiError) as limited:
            c.recommendations("1")
    assert limited.value.status_code == 429
    # two retries, each after the server's Retry-After (seconds left in its minute), as it said
    assert len(waits) == 2 and all(0 < w <= 60 for w in waits), waits


@pytest.mark.integration
def test_503_is_retried_until_a_champion_is_published(redis_server, tmp_path, start_api) -> None:
    """No champion: 503 with Retry-After. The client waits; meanwhile the pipeline publishes one; the retry
    after it is served."""
    empty = tmp_path / "empty-store"
    empty.mkdir()
    api = ApiProcess(api_env(empty, redis_server.url), tmp_path / "api-empty.log")
    try:
        _start_unready(api)
        waits: list[float] = []

        def wait_and_publish(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 1:
                publish(empty, movielens_artifact())
                deadline = time.monotonic() + 20
                while httpx.get(f"{api.url}/ready", timeout=2).status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.2)

        with RecsysClient(api.url, retries=3, sleep=wait_and_publish) as c:
            assert c.ready().status == "not ready"
            recs = c.recommendations("1", k=3)
        assert len(recs.items) == 3
        assert waits == [5.0]  # the API's Retry-After on a 503
    finally:
        api.stop()


def _start_unready(api: ApiProcess) -> None:
    """Start the API process without waiting for /ready (it stays 503 until a champion exists)."""
    cmd = [
        sys.executable,
        *("-m", "uvicorn", "--factory", "serving.app:create_app_from_env"),
        *("--host", "127.0.0.1", "--port", str(api.port)),
    ]
    api._log = api.log_path.open("ab")
    api.proc = subprocess.Popen(
        cmd, cwd=ROOT, env=api.env, stdout=api._log, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_for_port(api.port, timeout=60, proc=api.proc)


@pytest.mark.integration
def test_the_committed_openapi_document_is_the_served_one(redis_server, storage, start_api) -> None:
    api = start_api(api_env(storage, redis_server.url))
    served = httpx.get(f"{api.url}/docs/openapi.json", timeout=10).json()
    committed = json.loads(OPENAPI.read_text())
    assert render(served) == render(committed), (
        f"docs/openapi.json differs from the schema the API serves: regenerate it with `{REGENERATE}` "
        "(or `make openapi`), review the diff for breaking changes, and commit it"
    )
    # and the client has a method for every operation the API serves
    operations = {op["operationId"] for path in served["paths"].values() for op in path.values()}
    assert operations == set(client_module.OPERATIONS), "serving/client.py: add a method for the new operation"
    assert all(callable(getattr(RecsysClient, m)) for m in client_module.OPERATIONS.values())


class Scripted(httpx.BaseTransport):
    """Answers from a list, recording each request."""

    def __init__(self, answers: list[httpx.Response | Exception]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


HEALTHY = httpx.Response(200, json={"status": "ready", "model_version": "v1", "redis": "up"})
ACCEPTED = {"accepted": 1, "duplicates": 0, "duplicate_event_ids": []}


def test_backoff_retry_after_forms_and_the_same_request_id() -> None:
    soon = email.utils.format_datetime(email.utils.localtime(), usegmt=True)
    transport = Scripted(
        [
            httpx.Response(503, headers={"Retry-After": "2"}, json={"status_code": 503, "detail": "no model"}),
            httpx.Response(429, headers={"Retry-After": soon}, json={"status_code": 429, "detail": "slow down"}),
            httpx.ConnectError("refused"),
            httpx.Response(503, json={"status_code": 503, "detail": "no model"}),
            httpx.Response(202, json=ACCEPTED),
        ]
    )
    waits: list[float] = []
    c = RecsysClient("http://api", retries=4, backoff=0.1, max_wait=1.5, transport=transport, sleep=waits.append)
    assert c.post_events({"user_id": "u", "item_id": "i", "event_type": "click"}).accepted == 1
    # Retry-After in seconds (capped at max_wait), as an HTTP date (now: 0), then backoff with jitter
    assert waits[0] == 1.5 and waits[1] == pytest.approx(0, abs=1.01)
    assert 0.1 * 4 * 0.5 <= waits[2] <= 0.1 * 4 and 0.1 * 8 * 0.5 <= waits[3] <= 0.1 * 8
    ids = {r.headers["X-Request-ID"] for r in transport.requests}
    bodies = {r.content for r in transport.requests}
    # one request id and one body (with the event id the client gave it) on every attempt
    assert len(ids) == 1 and len(bodies) == 1 and json.loads(bodies.pop())["event_id"]


def test_errors_are_not_retried_and_retries_run_out() -> None:
    transport = Scripted([httpx.Response(400, json={"status_code": 400, "detail": "bad k"})])
    c = RecsysClient("http://api", transport=transport, sleep=lambda s: None)
    with pytest.raises(ApiError, match="bad k"):
        c.recommendations("1", k=500)
    assert len(transport.requests) == 1
    transport = Scripted([httpx.Response(503, json={"status_code": 503, "detail": "x"})] * 3)
    c = RecsysClient("http://api", retries=2, transport=transport, sleep=lambda s: None)
    with pytest.raises(ApiError) as out:
        c.recommendations("1")
    assert out.value.status_code == 503 and len(transport.requests) == 3
    # probes report what they see: a 503 readiness is an answer, never retried
    transport = Scripted([httpx.Response(503, json={"status": "not ready", "model_version": None, "redis": "up"})])
    assert RecsysClient("http://api", transport=transport).ready().status == "not ready"
    assert RecsysClient("http://api", transport=Scripted([HEALTHY])).ready().model_version == "v1"


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(later, now=1_000_000) == pytest.approx(30)
    assert retry_after_seconds(email.utils.formatdate(999_000, usegmt=True), now=1_000_000) == 0.0
