"""Fault injection against the API as processes (issue 14): each test starts `redis-server` and the API,
injects one fault the way it was found, and checks what the API does about it.

1. a restart while the pointer names a refused artifact serves the last good champion;
2. a crash between two steps of storing an event, then the client's retry;
3. a concurrent flood and forged `X-Forwarded-For` against the rate limit;
4, 9. hostile and loose bodies (deep nesting, wrong Content-Type, numbers as strings, duplicate keys,
   ids a spreadsheet would run or a URL would split);
5. a damaged `arrays.npz` whose manifest checksum was recomputed;
6, 7. a worker killed while Redis is down, Redis back, and the master killed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recsys_assets.contract.settings import EventLogSource, Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.tools.chaos import damage_keeping_checksum
from recsys_assets.tools.services import worker_pids
from tests.api_support import (
    ADMIN_KEY,
    API_KEY,
    ApiProcess,
    RedisServer,
    api_env,
    movielens_artifact,
    publish,
    read_segments,
    with_version,
)

pytestmark = pytest.mark.integration
EVENTS = {"X-API-Key": API_KEY}


def wait_for(what: str, predicate, timeout: float = 20.0, api: ApiProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}; log tail:\n{api.log()[-3000:] if api else ''}"
        time.sleep(0.1)


def workers_of(api: ApiProcess) -> list[int]:
    assert api.proc is not None
    return worker_pids(api.proc.pid)


def metric(url: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    return float(found.group(1)) if found else None


def rejected_reloads(url: str) -> float:
    return metric(url, 'recsys_model_reloads_total{outcome="rejected"}') or 0.0


def kill_a_worker_under_load(api: ApiProcess, events_dir: Path) -> list[int]:
    """Status codes of lists asked for while one worker is killed (-9) and its master replaces it,
    until the replacement has served lists too (its impressions are in a segment named by its pid)."""
    stop = False
    results: list[int] = []

    def load() -> None:
        n = 0
        while not stop:
            n += 1
            # a new connection each time, so both workers, the replacement too, take requests
            try:
                results.append(httpx.get(f"{api.url}/v1/users/{n % 900 + 1}/recommendations", timeout=10).status_code)
            except httpx.TransportError:
                results.append(0)  # in flight on the killed worker

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(load) for _ in range(2)]
        try:
            time.sleep(0.5)
            before: set[int] = set()

            def both_up() -> bool:
                before.clear()
                before.update(workers_of(api))
                return len(before) == 2

            wait_for("both workers", both_up, api=api)
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            # one read per check: two reads can straddle a fork or a health-check restart
            replaced: set[int] = set()

            def replacement_up() -> bool:
                now = set(workers_of(api))
                replaced.clear()
                replaced.update(now - before)
                return len(now) == 2 and victim not in now and len(replaced) == 1

            wait_for("a replacement worker", replacement_up, api=api)
            (new,) = replaced
            wait_for("the replacement serving", lambda: any(events_dir.glob(f"events-*-{new}-*.csv")), 60, api)
            time.sleep(1.0)
        finally:
            stop = True
        for f in futures:
            f.result()
    return results


# --- 1 ------------------------------------------------------------------------------------------


def test_restart_on_a_refused_champion_serves_the_last_good_one(
    storage: Path, redis_server: RedisServer, start_api
) -> None:
    env = api_env(storage, redis_server.url)
    first = start_api(env)
    assert json.loads((storage / "artifacts" / "LAST_GOOD.json").read_text())["model_version"] == "Hybrid-test-A"
    publish(storage, with_version(movielens_artifact(), "Hybrid-test-bad"), corrupt=True)
    wait_for("the running worker refuses it", lambda: "rejected champion artifact" in first.log(), api=first)
    first.stop()

    for without_last_good in (False, True):
        if without_last_good:
            # an older deployment never wrote it: the newest artifact that loads is found instead
            (storage / "artifacts" / "LAST_GOOD.json").unlink()
        api = start_api(env, workers=2, via_module=True)
        codes = [httpx.get(f"{api.url}/v1/users/{n}/recommendations", timeout=10).status_code for n in range(1, 101)]
        assert codes == [200] * 100
        assert httpx.get(f"{api.url}/ready").json()["model_version"] == "Hybrid-test-A"
        model = httpx.get(f"{api.url}/v1/model").json()
        assert model["champion"]["model_version"] == "Hybrid-test-A"
        assert model["last_rejected"]["path"] == "artifacts/Hybrid-test-bad"
        assert "checksum" in model["last_rejected"]["error"]
        assert rejected_reloads(api.url) >= 1
        reload = httpx.post(f"{api.url}/v1/admin/reload", headers={"X-API-Key": ADMIN_KEY})
        assert reload.status_code == 409 and "artifacts/Hybrid-test-bad" in reload.json()["detail"]
        line = next(x for x in api.log().splitlines() if "rejected champion artifact artifacts/Hybrid-test-bad" in x)
        assert "serving the last good champion Hybrid-test-A" in line, line
        source = "the newest loadable artifact" if without_last_good else "artifacts/LAST_GOOD.json"
        assert source in line, line
        assert "no champion artifact" not in api.log()

        # a worker killed under load is replaced by one that serves the same model at once
        results = kill_a_worker_under_load(api, storage / "events")
        assert results.count(200) > 10 and results.count(0) <= 2 and set(results) <= {0, 200}, sorted(set(results))
        api.stop()


# --- 2 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["before_append", "after_append"])
def test_a_crash_between_steps_never_turns_a_retry_into_a_lost_duplicate(
    step: str, storage: Path, redis_server: RedisServer, start_api
) -> None:
    event_id = f"crash-{step}-{uuid.uuid4().hex[:6]}"
    event = {"user_id": "crasher", "item_id": "50", "event_type": "purchase", "event_id": event_id}
    env = api_env(storage, redis_server.url)
    api = start_api({**env, "SERVING_TEST_KILL_AT": f"{step}:{event_id}"})
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{api.url}/v1/events", json=event, headers=EVENTS, timeout=10)
    api.proc.wait(timeout=10)  # type: ignore[union-attr]
    assert api.proc.returncode == -signal.SIGKILL  # type: ignore[union-attr]
    in_log = [r for r in read_segments(storage / "events") if r["event_id"] == event_id]
    assert len(in_log) == (1 if step == "after_append" else 0)

    # the client retries within seconds, on a restarted API
    again = start_api(env)
    r = httpx.post(f"{again.url}/v1/events", json=event, headers=EVENTS, timeout=10)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 1, r.json()  # never "duplicate" for an event the log may not hold
    assert httpx.post(f"{again.url}/v1/events", json=event, headers=EVENTS).json()["duplicates"] == 1
    rows = [r for r in read_segments(storage / "events") if r["event_id"] == event_id]
    assert 1 <= len(rows) <= 2
    # the pipeline's ingestion keeps one row per event id
    from recsys_assets.lib.ingest import cleaning, readers

    raw = readers.read_event_log(EventLogSource(paths=[str(storage / "events" / "*.csv")]))
    clean = cleaning.clean_events(raw, Settings(_env_file=None).cleaning())  # type: ignore[call-arg]
    assert (clean.interactions["event_id"] == event_id).sum() == 1


# --- 3 ------------------------------------------------------------------------------------------


def _flood(url: str, n: int, clients: int, headers_for) -> list[httpx.Response]:
    def one(i: int) -> httpx.Response:
        return httpx.get(f"{url}/v1/items/50/similar", headers=headers_for(i), timeout=20)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(n)))


def test_rate_limit_holds_under_a_concurrent_flood_and_forged_forwarded_for(
    storage: Path, redis_server: RedisServer, start_api
) -> None:
    redis_server.client().flushdb()
    env = api_env(storage, redis_server.url, RECSYS_RATE_LIMIT_PER_MINUTE="300")
    api = start_api(env, workers=2, via_module=True)
    answers = _flood(api.url, 450, 50, lambda i: {})
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 300 and codes.count(429) == 150, (codes.count(200), codes.count(429))
    refused = next(r for r in answers if r.status_code == 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "300 per minute" in refused.json()["detail"]

    # a new address per request: not believed from a client that is no configured proxy
    redis_server.client().flushdb()
    forged = _flood(api.url, 450, 50, lambda i: {"X-Forwarded-For": f"10.9.{i // 250}.{i % 250}"})
    assert [r.status_code for r in forged].count(200) == 300
    api.stop()

    # behind a configured proxy, the forwarded address is the client's: each gets its own budget
    redis_server.client().flushdb()
    proxied = start_api({**env, "RECSYS_FORWARDED_ALLOW_IPS": "127.0.0.1"}, workers=2, via_module=True)
    per_client = _flood(proxied.url, 400, 20, lambda i: {"X-Forwarded-For": f"10.9.0.{i % 2}"})
    assert [r.status_code for r in per_client].count(200) == 400
    keys = {k.decode() for k in redis_server.client().keys("recsys:ratelimit:*")}
    assert keys == {"recsys:ratelimit:ip:10.9.0.0", "recsys:ratelimit:ip:10.9.0.1"}


# --- 4, 8, 9 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[ApiProcess]:
    root = tmp_path_factory.mktemp("strict")
    publish(root / "data", movielens_artifact())
    api = ApiProcess(api_env(root / "data", redis_server.url), root / "api.log").start()
    try:
        yield api
    finally:
        api.stop()


def post_raw(api: ApiProcess, body: bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = dict(EVENTS)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return httpx.post(f"{api.url}/v1/events", content=body, headers=headers, timeout=10)


def test_deeply_nested_json_is_a_400_naming_the_limit(strict_api: ApiProcess) -> None:
    for depth in (1000, 500, 9):
        body = b"[" * depth + b"]" * depth
        r = post_raw(strict_api, body)
        assert r.status_code == 400, (depth, r.text)
        assert r.json()["extra"][0]["message"] == f"JSON nested {depth} levels deep; the limit is 8 (max_json_depth)"
    nested_in_a_field = b'{"user_id": ' + b"[" * 1000 + b"]" * 1000 + b', "item_id": "1", "event_type": "view"}'
    assert "limit is 8" in post_raw(strict_api, nested_in_a_field).text
    assert "RecursionError" not in strict_api.log() and "unhandled error" not in strict_api.log()


def test_loose_input_is_refused_and_ids_round_trip_through_the_event_log(strict_api: ApiProcess) -> None:
    event = b'{"user_id": "u1", "item_id": "50", "event_type": "view"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml", None):
        r = post_raw(strict_api, event, content_type)
        assert r.status_code == 415, (content_type, r.text)
        assert "application/json" in r.json()["detail"]
    assert post_raw(strict_api, event, "application/json; charset=utf-8").status_code == 202
    assert post_raw(strict_api, event, "application/json; charset=latin-1").status_code == 415

    empty = post_raw(strict_api, b"")
    assert empty.status_code == 400 and empty.json()["extra"][0]["message"].startswith("the body is empty")
    for body, key in (
        (b'{"user_id": "u1", "item_id": "50", "event_type": "rating", "value": "4"}', "value"),
        (b'{"user_id": "u1", "item_id": "50", "event_type": "view", "timestamp": "1700000000"}', "timestamp"),
        (b'{"user_id": "u1", "item_id": "50", "event_type": "view", "user_id": "u2"}', "user_id"),
        (
            b'[{"user_id": "u1", "item_id": "5", "event_type": "view"}, {"user_id": "u", "item_id": "5", '
            b'"item_id": "6", "event_type": "view"}]',
            "[1].item_id",
        ),
        (b"[]", "body"),
    ):
        r = post_raw(strict_api, body)
        assert r.status_code == 400 and r.json()["extra"][0]["key"] == key, (body, r.text)

    # ids: what a spreadsheet would run, what a URL would split, what the CSV reader takes for "missing"
    for bad in ("=HYPERLINK(1)", "+1", "-1", "@SUM(A1)", "a/b", "with space", "NA", "null", "x\n", "é"):
        r = post_raw(strict_api, json.dumps({"user_id": bad, "item_id": "50", "event_type": "view"}).encode())
        assert r.status_code == 400 and r.json()["extra"][0]["key"] == "user_id", (bad, r.text)
    assert post_raw(strict_api, b'{"user_id": -1, "item_id": "50", "event_type": "view"}').status_code == 400
    assert httpx.get(f"{strict_api.url}/v1/users/x%0A/recommendations").status_code == 400
    assert httpx.get(f"{strict_api.url}/v1/users/a%2Fb/recommendations").status_code in (400, 404)

    odd = [f"u{uuid.uuid4().hex[:6]}:a@b.c+d=e~f_g-h", "_0", "NAN", "007", "1e5"]
    body = [{"user_id": u, "item_id": "50", "event_type": "view", "event_id": f"rt-{u}"} for u in odd]
    assert post_raw(strict_api, json.dumps(body).encode()).json()["accepted"] == len(odd)
    # the pipeline's reader gives every id back exactly as sent
    from recsys_assets.lib.ingest import readers

    events_dir = Path(strict_api.env["RECSYS_STORAGE_URI"]) / "events"
    raw = readers.read_event_log(EventLogSource(paths=[str(events_dir / "*.csv")]))
    read_back = dict(zip(raw["event_id"], raw["user_id"], strict=True))
    assert [read_back[f"rt-{u}"] for u in odd] == odd


def test_openapi_states_every_response_code_and_limit(strict_api: ApiProcess) -> None:
    schema = httpx.get(f"{strict_api.url}/docs/openapi.json").json()
    ops = {op["operationId"]: op for p in schema["paths"].values() for op in p.values() if "operationId" in op}
    expected = {
        "postEvents": {"202", "400", "401", "403", "413", "415", "429", "503"},
        "getRecommendations": {"200", "400", "429", "503"},
        "getSimilarItems": {"200", "400", "404", "429", "503"},
        "reloadModel": {"200", "401", "403", "409", "429"},
        "getModel": {"200", "429"},
        "getReady": {"200", "503"},
    }
    for op, codes in expected.items():
        assert set(ops[op]["responses"]) == codes, (op, sorted(ops[op]["responses"]))
    body = ops["postEvents"]["requestBody"]["content"]["application/json"]["schema"]
    batch = next(s for s in body["anyOf"] if s.get("type") == "array")
    assert (batch["minItems"], batch["maxItems"]) == (1, 1000)
    user_id = batch["items"]["properties"]["user_id"]["anyOf"][0]
    assert user_id["maxLength"] == 256 and user_id["pattern"].startswith("^(?!")
    path_user = next(p for p in ops["getRecommendations"]["parameters"] if p["name"] == "user_id")
    assert path_user["schema"]["pattern"] == user_id["pattern"] and path_user["schema"]["maxLength"] == 256


# --- 5 ------------------------------------------------------------------------------------------


def test_a_damaged_npz_with_a_matching_checksum_is_a_reported_rejection(
    storage: Path, redis_server: RedisServer, start_api
) -> None:
    api = start_api(api_env(storage, redis_server.url))
    art = movielens_artifact()
    before = rejected_reloads(api.url)
    store = Storage.from_uri(str(storage))
    for version, damage in (("Hybrid-test-crc", "crc"), ("Hybrid-test-short", "shape")):
        bad = with_version(art, version)
        if damage == "shape":
            # a well-formed file whose titles are one short of the manifest's n_items
            import dataclasses

            bad = dataclasses.replace(bad, item_titles=bad.item_titles[:-1])
        from recsys_assets.contract.artifact import write_to_storage

        write_to_storage(bad, store, "artifacts", version)
        if damage == "crc":
            damage_keeping_checksum(storage / "artifacts" / version)
        pointer = {"model_version": version, "path": ["artifacts", version]}
        (storage / "artifacts" / "CHAMPION.json").write_text(json.dumps(pointer))
        wait_for(
            f"{version} refused", lambda v=version: f"rejected champion artifact artifacts/{v}" in api.log(), api=api
        )
        model = httpx.get(f"{api.url}/v1/model").json()
        assert model["champion"]["model_version"] == "Hybrid-test-A"
        assert model["last_rejected"]["path"] == f"artifacts/{version}"
        reason = model["last_rejected"]["error"]
        assert ("BadZipFile" in reason or "CRC" in reason) if damage == "crc" else "item_titles" in reason, reason
        reload = httpx.post(f"{api.url}/v1/admin/reload", headers={"X-API-Key": ADMIN_KEY})
        assert reload.status_code == 409, reload.text
    time.sleep(2.0)  # four polls: a refused pointer is not read again
    log = api.log()
    assert "Traceback" not in log and "model refresh failed" not in log
    assert log.count("rejected champion artifact artifacts/Hybrid-test-crc") == 2  # the poll, the admin reload
    assert rejected_reloads(api.url) - before == 4
    assert httpx.get(f"{api.url}/v1/users/1/recommendations").json()["model_version"] == "Hybrid-test-A"


# --- 6, 7 ---------------------------------------------------------------------------------------


def test_worker_killed_while_redis_is_down_leaves_no_stale_gauge_and_redis_returns_once(
    storage: Path, start_api, tmp_path: Path
) -> None:
    redis = RedisServer().start()
    metrics_tmp = tmp_path / "tmp"
    metrics_tmp.mkdir()
    try:
        env = api_env(storage, redis.url, TMPDIR=str(metrics_tmp))
        api = start_api(env, workers=2, via_module=True)
        folders = list(metrics_tmp.glob("recsys-api-metrics-*"))
        assert len(folders) == 1
        # a pool of several connections in each worker
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: httpx.get(f"{api.url}/v1/users/{n}/recommendations"), range(1, 200)))
        redis.stop()
        wait_for("both workers see Redis down", lambda: metric(api.url, "recsys_redis_up") == 0.0, api=api)
        victim = workers_of(api)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for("a replacement worker", lambda: len(workers_of(api)) == 2 and victim not in workers_of(api))
        redis.start()  # same port, empty
        wait_for("Redis up again in /metrics", lambda: metric(api.url, "recsys_redis_up") == 1.0, api=api)
        assert not list(folders[0].glob(f"gauge_live*_{victim}.db"))

        # back once: no further outage from connections pooled before it
        back = api.log().count("is back")
        user = f"after-{uuid.uuid4().hex[:6]}"
        for n in range(60):
            event = {"user_id": user, "item_id": str(n + 1), "event_type": "click", "event_id": f"{user}-{n}"}
            with httpx.Client(timeout=10) as fresh:  # new connections: either worker answers
                assert fresh.post(f"{api.url}/v1/events", json=event, headers=EVENTS).status_code == 202
                served = [
                    it["item_id"] for it in fresh.get(f"{api.url}/v1/users/{user}/recommendations").json()["items"]
                ]
            assert str(n + 1) not in served
            time.sleep(0.2)
        tail = api.log().split("is back")[-1]
        assert "unreachable" not in tail and api.log().count("is back") == back, tail[-2000:]

        # kill -9 of the whole server leaves its folder; the next start removes it
        api.kill9()
        assert folders[0].exists()
        start_api(env, workers=2, via_module=True)
        assert not folders[0].exists() and len(list(metrics_tmp.glob("recsys-api-metrics-*"))) == 1
    finally:
        redis.stop()
