"""The recommendation API in process (Litestar's TestClient, in-process live state): endpoint shapes,
reasons, cold start, live adaptation, filters, security, validation, limits, idempotency, the event
log, impressions, metrics, OpenAPI and the docs page's local assets."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from litestar.testing import TestClient

from recsys_assets.contract.artifact import write_to_storage
from recsys_assets.contract.canary import in_challenger_arm
from recsys_assets.contract.settings import EventLogSource, Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.lib.ingest import cleaning, readers
from serving.app import create_app
from serving.eventlog import LOG_COLUMNS, EventLog
from serving.loaded import LoadedModel
from serving.recommend import build_history
from serving.schemas import LiveEvent
from serving.security import ApiKeys
from tests.api_support import (
    ADMIN_KEY,
    API_KEY,
    API_KEYS,
    SCI_FI_CLICKS,
    movielens_artifact,
    publish,
    read_segments,
    with_version,
)
from tests.conftest import ROOT

EVENTS = {"X-API-Key": API_KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def artifact():
    return movielens_artifact()


@pytest.fixture(scope="module")
def storage_uri(tmp_path_factory: pytest.TempPathFactory, artifact) -> str:
    root = tmp_path_factory.mktemp("api-storage")
    publish(root, artifact)
    return str(root)


@pytest.fixture
def api_settings(settings: Settings, storage_uri: str, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "storage_uri": storage_uri,
            "events_dir": str(tmp_path / "events"),
            "redis_url": "",
            "api_keys": API_KEYS,
            "rate_limit_per_minute": 0,
            "model_poll_seconds": 60.0,
        }
    )


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as c:
        yield c


def recs(client: TestClient, user: str, **params: object) -> dict:
    r = client.get(f"/v1/users/{user}/recommendations", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def post(client: TestClient, body: object, headers: dict[str, str] = EVENTS):
    return client.post("/v1/events", json=body, headers=headers)


def test_recommendations_shape_reasons_and_offline_equality(client: TestClient, artifact) -> None:
    body = recs(client, "1", k=5)
    assert set(body) == {"recommendation_id", "user_id", "model_version", "arm", "cold_start", "items", "policy"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["recommendation_id"])
    assert (body["user_id"], body["model_version"], body["arm"], body["cold_start"]) == (
        "1",
        "Hybrid-test-A",
        "champion",
        False,
    )
    items = body["items"]
    assert [it["rank"] for it in items] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(items))
    for it in items:
        assert it["title"] and isinstance(it["categories"], list)
        assert it["reason_kind"] in {"similar", "popular"}
        if it["reason_kind"] == "similar":
            # evidence from the training history: the history item contributing most
            assert it["reason"].startswith("similar to ") and it["evidence_item_id"]
        else:
            assert it["reason"] == "popular now"
    # the served list is the offline top-k of the same artifact
    users = np.array([0, 1, 41, 404])
    offline = artifact.topk_for_users(users, 10)
    for u, expected in zip(users, offline, strict=True):
        served = [it["item_id"] for it in recs(client, artifact.user_ids[u], k=10)["items"]]
        assert served == [artifact.item_ids[j] for j in expected]


def test_cold_start_for_unknown_users_is_popularity(client: TestClient, artifact) -> None:
    body = recs(client, "someone-new", k=10)
    assert body["cold_start"] is True
    assert {it["reason"] for it in body["items"]} == {"popular now"}
    pop = artifact.scorer.components["popularity"].arrays["popularity"]
    assert [it["item_id"] for it in body["items"]] == [
        artifact.item_ids[j] for j in np.argsort(-pop, kind="stable")[:10]
    ]
    # odd but valid ids are users too; ids outside the id rule are refused, in paths as in bodies
    assert recs(client, "u:mail@example.org+x=1~y.z_-", k=3)["cold_start"] is True
    for bad in ("user with spaces", "-1", "=cmd", "null", "é"):
        r = client.get(f"/v1/users/{bad}/recommendations")
        assert r.status_code == 400 and r.json()["extra"][0]["key"] == "user_id", (bad, r.text)


def test_three_clicks_personalise_a_new_user(client: TestClient) -> None:
    cold = [it["item_id"] for it in recs(client, "newbie")["items"]]
    for n, item in enumerate(SCI_FI_CLICKS, start=1):
        assert post(client, {"user_id": "newbie", "item_id": item, "event_type": "click"}).status_code == 202
        served = recs(client, "newbie")
        ids = [it["item_id"] for it in served["items"]]
        assert not set(ids) & set(SCI_FI_CLICKS[:n]), "a consumed item came back"
    # the fourth request: personalised, explained by the clicks
    assert served["cold_start"] is False
    assert ids != cold
    reasons = [it["reason"] for it in served["items"]]
    assert sum(r.startswith("because you clicked ") for r in reasons) >= 8, reasons
    assert all(it["evidence_item_id"] in SCI_FI_CLICKS for it in served["items"] if it["reason_kind"] == "history")


def test_ratings_and_known_users_adapt(client: TestClient, artifact) -> None:
    before = [it["item_id"] for it in recs(client, "1")["items"]]
    assert post(client, {"user_id": "1", "item_id": before[0], "event_type": "view"}).status_code == 202
    assert before[0] not in [it["item_id"] for it in recs(client, "1")["items"]]
    batch = [{"user_id": "rater", "item_id": i, "event_type": "rating", "value": 5} for i in SCI_FI_CLICKS]
    assert post(client, batch).status_code == 202
    reasons = [it["reason"] for it in recs(client, "rater")["items"]]
    assert sum(r.startswith("because you rated ") for r in reasons) >= 8, reasons


def test_exclude_seen_and_category_filter(client: TestClient, artifact) -> None:
    seen = set(artifact.item_ids[artifact.history[404].indices].tolist())
    user = artifact.user_ids[404]
    assert not {it["item_id"] for it in recs(client, user, k=50)["items"]} & seen
    assert {it["item_id"] for it in recs(client, user, k=50, exclude_seen="false")["items"]} & seen

    comedy = recs(client, user, k=20, category="comedy")["items"]
    assert len(comedy) == 20 and all("Comedy" in it["categories"] for it in comedy)
    cold = recs(client, "nobody-yet", k=5, category="Film-Noir")["items"]
    assert {it["reason"] for it in cold} == {"popular in category Film-Noir"}
    assert recs(client, user, category="no such category")["items"] == []


def test_similar_items(client: TestClient) -> None:
    r = client.get("/v1/items/50/similar", params={"k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "item_item" and body["model_version"] == "Hybrid-test-A"
    assert len(body["items"]) == 5 and "50" not in [it["item_id"] for it in body["items"]]
    assert {it["reason"] for it in body["items"]} == {"similar to Star Wars"}
    assert "181" in [it["item_id"] for it in body["items"]]  # Return of the Jedi
    missing = client.get("/v1/items/no-such-item/similar")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]


def test_api_keys_and_scopes(client: TestClient) -> None:
    event = {"user_id": "u", "item_id": "1", "event_type": "view"}
    assert post(client, event, headers={}).status_code == 401
    assert post(client, event, headers={"X-API-Key": "wrong"}).status_code == 401
    assert post(client, event, headers=ADMIN).status_code == 403
    assert post(client, event).status_code == 202
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.post("/v1/admin/reload", headers=EVENTS).status_code == 403
    reloaded = client.post("/v1/admin/reload", headers=ADMIN)
    assert reloaded.status_code == 200 and reloaded.json()["champion"]["model_version"] == "Hybrid-test-A"
    keys = ApiKeys.parse("a, b:events ,b:admin,c:admin")
    assert keys.scopes("a") == {"events", "admin"} and keys.scopes("b") == {"events", "admin"}
    assert keys.scopes("c") == {"admin"} and keys.scopes("d") is None and keys.scopes(None) is None
    with pytest.raises(ValueError, match="scope"):
        ApiKeys.parse("k:root")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"user_id": "u", "item_id": "1", "event_type": "teleport"}, "event_type"),
        ({"user_id": "u", "event_type": "click"}, "item_id"),
        ({"user_id": "u", "item_id": "1", "event_type": "click", "colour": "red"}, "colour"),
        (
            [
                {"user_id": "u", "item_id": "1", "event_type": "click"},
                {"user_id": "u", "item_id": [], "event_type": "view"},
            ],
            "[1].item_id",
        ),
        ([{"user_id": "u", "item_id": "1", "event_type": "rating"}], "[0].value"),
        ({"user_id": "u", "item_id": "1", "event_type": "rating", "value": 9}, "value"),
        ({"user_id": "u", "item_id": "1", "event_type": "purchase", "value": -3}, "value"),
        ({"user_id": "u", "item_id": "1", "event_type": "click", "timestamp": "1970-01-02T00:00:00Z"}, "timestamp"),
        ({"user_id": "", "item_id": "1", "event_type": "click"}, "user_id"),
        # far outside what a date can hold (found by schemathesis): still a 400, not a 500
        ({"user_id": "u", "item_id": "1", "event_type": "view", "timestamp": -6.6430527642906536e16}, "timestamp"),
        ({"user_id": "u", "item_id": "1", "event_type": "view", "timestamp": 1e300}, "timestamp"),
        ([], "body"),
    ],
)
def test_validation_errors_are_400_and_name_the_field(client: TestClient, body: object, key: str) -> None:
    r = post(client, body)
    assert r.status_code == 400, r.text
    assert key in [e.get("key") for e in r.json()["extra"]], r.json()


def test_query_validation_names_the_parameter(client: TestClient) -> None:
    for params, key in (
        ({"k": 0}, "k"),
        ({"k": "many"}, "k"),
        ({"k": 101}, "k"),
        ({"exclude_seen": "maybe"}, "exclude_seen"),
    ):
        r = client.get("/v1/users/1/recommendations", params=params)
        assert r.status_code == 400 and r.json()["extra"][0]["key"] == key, r.text
    json_type = {**EVENTS, "Content-Type": "application/json"}
    assert client.post("/v1/events", content=b"{not json", headers=json_type).status_code == 400


def test_rejected_requests_store_nothing(client: TestClient, api_settings: Settings) -> None:
    good = {"user_id": "careful", "item_id": "50", "event_type": "click", "event_id": "e-1"}
    bad = {"user_id": "careful", "item_id": "1", "event_type": "rating", "value": 99}
    assert post(client, [good, bad]).status_code == 400
    assert post(client, [good], headers={}).status_code == 401
    assert recs(client, "careful")["cold_start"] is True
    events_dir = Path(api_settings.events_dir or "")
    assert [r for r in read_segments(events_dir) if r["event_type"] != "impression"] == []
    # the refused request did not claim the event id either
    ok = post(client, [good])
    assert ok.status_code == 202 and ok.json() == {"accepted": 1, "duplicates": 0, "duplicate_event_ids": []}


def test_body_size_limit_is_413(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings.model_copy(update={"max_body_bytes": 2048}))) as c:
        batch = [{"user_id": "u", "item_id": str(i), "event_type": "view"} for i in range(100)]
        r = c.post("/v1/events", json=batch, headers=EVENTS)
        assert r.status_code == 413
        assert c.post("/v1/events", json=batch[:5], headers=EVENTS).status_code == 202
    assert len(read_segments(Path(api_settings.events_dir or ""))) == 5


def test_rate_limit_is_429(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings.model_copy(update={"rate_limit_per_minute": 3}))) as c:
        codes = [c.get("/v1/users/1/recommendations").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = c.get("/v1/users/1/recommendations")
        assert 55 <= int(refused.headers["Retry-After"]) <= 60 and "3 per minute" in refused.json()["detail"]
        # an unknown key is no way around it: the client is still its address
        assert c.get("/v1/users/1/recommendations", headers={"X-API-Key": "made-up"}).status_code == 429
        # a valid key is a client of its own, with its own budget
        event = {"user_id": "u", "item_id": "1", "event_type": "view"}
        assert [post(c, event).status_code for _ in range(4)] == [202, 202, 202, 429]
        # probes are never throttled
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
    rows = read_segments(Path(api_settings.events_dir or ""))
    assert len([r for r in rows if r["event_type"] == "view"]) == 3


def test_idempotency_stores_an_event_id_once(client: TestClient, api_settings: Settings) -> None:
    event = {"user_id": "u1", "item_id": "7", "event_type": "purchase", "value": 12.5, "event_id": "order-42"}
    first = post(client, event)
    assert first.status_code == 202 and first.json()["accepted"] == 1
    again = post(client, [event, {**event, "event_id": "order-43"}, {**event, "event_id": "order-43"}])
    assert again.json() == {"accepted": 1, "duplicates": 2, "duplicate_event_ids": ["order-42", "order-43"]}
    rows = [r for r in read_segments(Path(api_settings.events_dir or "")) if r["event_type"] == "purchase"]
    assert sorted(r["event_id"] for r in rows) == ["order-42", "order-43"]


def test_event_log_and_impressions_ingest_with_the_pipeline(api_settings: Settings) -> None:
    events_dir = Path(api_settings.events_dir or "")
    with TestClient(create_app(api_settings)) as c:
        served = recs(c, "reader", k=3)
        rec_id = served["recommendation_id"]
        clicked = served["items"][1]["item_id"]
        r = post(c, {"user_id": "reader", "item_id": clicked, "event_type": "click", "recommendation_id": rec_id})
        assert r.status_code == 202
        post(c, {"user_id": 17, "item_id": 50, "event_type": "rating", "value": 4.5, "timestamp": 1_700_000_000})
    segments = sorted(events_dir.glob("events-*.csv"))
    assert segments and segments[0].read_text().splitlines()[0] == ",".join(LOG_COLUMNS)
    rows = read_segments(events_dir)
    impressions = [r for r in rows if r["event_type"] == "impression"]
    assert [(r["item_id"], r["value"]) for r in impressions] == [
        (it["item_id"], str(it["rank"])) for it in served["items"]
    ]
    assert {(r["recommendation_id"], r["model_version"], r["arm"], r["user_id"]) for r in impressions} == {
        (rec_id, "Hybrid-test-A", "champion", "reader")
    }
    # the impression is in the log before the click that answers it
    kinds = [r["event_type"] for r in rows]
    assert kinds.index("click") > max(i for i, k in enumerate(kinds) if k == "impression")
    # the pipeline's own reader and cleaning take the segments as an event log
    raw = readers.read_event_log(EventLogSource(paths=[str(events_dir / "*.csv")]))
    clean = cleaning.clean_events(raw, api_settings.cleaning())
    assert clean.notes["impressions"] == len(impressions) and sum(clean.reject_counts.values()) == 0
    inter = clean.interactions.set_index("event_type")
    assert inter.loc["click", "recommendation_id"] == rec_id
    assert inter.loc["rating", "user_id"] == "17" and inter.loc["rating", "weight"] == 4.5
    assert str(inter.loc["rating", "timestamp"]).startswith("2023-11-14 22:13:20")


def test_event_log_rotates_segments(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=1024, max_seconds=3600)
    for i in range(40):
        log.append([("u", str(i), "view", "2026-01-01T00:00:00+00:00", None, f"e{i}", None, None, None)])
    log.add_impressions(
        [
            (
                "u",
                "x",
                "impression",
                "2026-01-01T00:00:00+00:00",
                1,
                "r:1",
                "r",
                "v",
                "champion",
                "champion:v:greedy",
                1.0,
            )
        ]
    )
    log.close()
    segments = log.segments()
    assert len(segments) > 1
    assert all(p.read_text().startswith(",".join(LOG_COLUMNS) + "\n") for p in segments)
    rows = read_segments(tmp_path)
    assert [r["event_id"] for r in rows] == [f"e{i}" for i in range(40)] + ["r:1"]


def test_health_ready_model_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "model_version": "Hybrid-test-A", "redis": "disabled"}
    model = client.get("/v1/model").json()
    assert model["champion"]["model_version"] == "Hybrid-test-A" and model["challenger"] is None
    assert model["champion"]["components"] == {
        "collaborative": "item_item",
        "content": "content",
        "popularity": "popularity",
    }
    recs(client, "m1")
    post(client, {"user_id": "m1", "item_id": "1", "event_type": "click"})
    post(client, {"user_id": "m1", "item_id": "1", "event_type": "click"}, headers={})
    text = client.get("/metrics").text
    assert re.search(
        r'recsys_api_request_duration_seconds_bucket\{[^}]*path="/v1/users/\{user_id\}/recommendations"', text
    )
    assert 'recsys_cache_requests_total{result="bypass"}' in text
    assert re.search(r'recsys_events_total\{outcome="accepted"\} [1-9]', text)
    assert re.search(r'recsys_event_requests_rejected_total\{status="401"\} [1-9]', text)
    assert 'recsys_model_info{arm="champion",model_name="Hybrid",model_version="Hybrid-test-A"} 1.0' in text
    assert "recsys_impressions_total" in text and "recsys_redis_up" in text


def test_not_ready_without_a_champion(api_settings: Settings, tmp_path: Path) -> None:
    with TestClient(create_app(api_settings.model_copy(update={"storage_uri": str(tmp_path / "empty")}))) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 503
        r = c.get("/v1/users/1/recommendations")
        assert r.status_code == 503 and "no model" in r.json()["detail"]


def test_corrupt_champion_is_rejected_and_the_old_one_serves(
    client: TestClient, api_settings: Settings, artifact, tmp_path: Path
) -> None:
    # a copy of the storage whose pointer we can break without touching the module's
    root = tmp_path / "store"
    publish(root, artifact)
    with TestClient(create_app(api_settings.model_copy(update={"storage_uri": str(root)}))) as c:
        publish(root, with_version(artifact, "Hybrid-test-corrupt"), corrupt=True)
        r = c.post("/v1/admin/reload", headers=ADMIN)
        assert r.status_code == 409 and "checksum" in r.json()["detail"]
        assert recs(c, "1")["model_version"] == "Hybrid-test-A"
        rejected = c.get("/v1/model").json()["last_rejected"]
        assert rejected["path"] == "artifacts/Hybrid-test-corrupt" and "checksum" in rejected["error"]
        (root / "artifacts" / "CHAMPION.json").write_text("{not json")
        assert c.post("/v1/admin/reload", headers=ADMIN).status_code == 409
        assert recs(c, "1")["model_version"] == "Hybrid-test-A"
        good = with_version(artifact, "Hybrid-test-B")
        publish(root, good)
        assert c.post("/v1/admin/reload", headers=ADMIN).json()["champion"]["model_version"] == "Hybrid-test-B"
        assert recs(c, "1")["model_version"] == "Hybrid-test-B"


def test_a_worker_starting_on_a_broken_pointer_serves_the_last_good_champion(
    api_settings: Settings, artifact, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    publish(root, artifact)
    settings = api_settings.model_copy(update={"storage_uri": str(root)})
    with TestClient(create_app(settings)) as c:
        assert recs(c, "1")["model_version"] == "Hybrid-test-A"
    last_good = json.loads((root / "artifacts" / "LAST_GOOD.json").read_text())
    assert last_good == {
        "path": ["artifacts", "Hybrid-test-A"],
        "model_version": "Hybrid-test-A",
        "model_name": "Hybrid",
    }
    for broken in (b"{not json", json.dumps({"path": ["artifacts", "nowhere"]}).encode()):
        (root / "artifacts" / "CHAMPION.json").write_bytes(broken)
        with TestClient(create_app(settings)) as c:
            assert c.get("/ready").status_code == 200
            assert recs(c, "1")["model_version"] == "Hybrid-test-A"
            assert c.get("/v1/model").json()["last_rejected"]["path"] in (
                "artifacts/CHAMPION.json",
                "artifacts/nowhere",
            )
            assert c.post("/v1/admin/reload", headers=ADMIN).status_code == 409


def test_ab_split_is_stable_and_recorded(api_settings: Settings, artifact, tmp_path: Path) -> None:
    root = tmp_path / "store"
    publish(root, artifact)
    write_to_storage(with_version(artifact, "Hybrid-test-challenger"), Storage.from_uri(str(root)), "candidates", "Alt")
    settings = api_settings.model_copy(
        update={"storage_uri": str(root), "ab_challenger_share": 0.3, "ab_challenger_path": "candidates/Alt"}
    )
    with TestClient(create_app(settings)) as c:
        arms = {}
        for i in range(200):
            body = recs(c, f"user-{i}", k=1)
            arms[f"user-{i}"] = body["arm"]
            expected = "challenger" if in_challenger_arm(f"user-{i}", 0.3) else "champion"
            assert body["arm"] == expected
            assert body["model_version"] == ("Hybrid-test-challenger" if expected == "challenger" else "Hybrid-test-A")
        assert 0.2 < sum(a == "challenger" for a in arms.values()) / 200 < 0.4
        assert recs(c, "user-7", k=1)["arm"] == arms["user-7"]
        assert c.get("/v1/model").json()["challenger"]["path"] == "candidates/Alt"
    impressions = read_segments(Path(settings.events_dir or ""))
    assert {(r["arm"], r["model_version"]) for r in impressions} == {
        ("champion", "Hybrid-test-A"),
        ("challenger", "Hybrid-test-challenger"),
    }


def test_the_request_blend_equals_the_offline_scores_and_its_shares_add_up(artifact) -> None:
    """What a request ranks (`Scorer.score_parts` on its live history) is what offline evaluation scores for the
    same history (`Scorer.score_many`), and the components' shares add up to it."""
    model = LoadedModel.build(artifact, "artifacts/x")
    weights = {"view": 1.0, "click": 2.0}
    for user, events in (
        ("1", []),
        ("405", []),
        ("1", [LiveEvent("50", "click", None, 0.0)]),
        ("fresh", [LiveEvent(i, "view", None, 0.0) for i in SCI_FI_CLICKS]),
        ("fresh", []),
    ):
        history = build_history(model, user, events, weights)
        total, parts = artifact.scorer.score_parts(history.idx, history.weights, history.user)
        row = sp.csr_matrix((history.weights, history.idx, [0, len(history.idx)]), shape=(1, artifact.scorer.n_items))
        np.testing.assert_array_equal(total, artifact.scorer.score_many(row, np.asarray([history.user]))[0])
        assert set(parts) <= set(artifact.scorer.components) and parts
        np.testing.assert_array_equal(sum(parts.values()), total)


def test_openapi_documents_every_operation_and_docs_load_locally(client: TestClient) -> None:
    schema = client.get("/docs/openapi.json").json()
    ops = {op["operationId"]: op for path in schema["paths"].values() for op in path.values() if "operationId" in op}
    assert set(ops) >= {
        "getRecommendations",
        "getSimilarItems",
        "postEvents",
        "getHealth",
        "getReady",
        "getMetrics",
        "getModel",
        "reloadModel",
    }
    assert all(op.get("description") for op in ops.values())
    assert ops["postEvents"]["security"] == [{"apiKey": []}]
    assert schema["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "name": "X-API-Key", "in": "header"}
    html = client.get("/docs").text
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
    assert urls and not [u for u in urls if "//" in u], urls
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert client.get("/docs/openapi.yaml").status_code == 200


def test_serving_imports_no_pipeline_or_training_code() -> None:
    code = (
        "import sys, serving.app, serving.__main__, recsys_assets\n"
        "heavy = [m for m in ('dagster', 'torch', 'recbole', 'streamlit', 'mlflow') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().replace("'", '"')) == []
