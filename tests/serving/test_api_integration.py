"""The API as real processes (uvicorn) with a real `redis-server`: durability across `kill -9`, live
state shared by processes and workers, Redis stopped and restarted mid-test, and hot reload of a new
champion under load with a corrupt artifact refused."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.api_support import (
    ADMIN_KEY,
    API_KEY,
    SCI_FI_CLICKS,
    RedisServer,
    api_env,
    movielens_artifact,
    publish,
    read_segments,
    with_version,
)

pytestmark = pytest.mark.integration
EVENTS = {"X-API-Key": API_KEY}


def item_ids(body: dict) -> list[str]:
    return [it["item_id"] for it in body["items"]]


def get_recs(url: str, user: str, **params: object) -> dict:
    r = httpx.get(f"{url}/v1/users/{user}/recommendations", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


# one worker under uvicorn, and `python -m serving` with two workers, each on its own socket
@pytest.mark.parametrize(("workers", "via_module"), [(1, False), (2, True)])
def test_acknowledged_events_survive_kill_9(
    storage: Path, redis_server: RedisServer, start_api, workers: int, via_module: bool
) -> None:
    redis_server.client().flushdb()  # the ids of the other parametrisation's run
    api = start_api(api_env(storage, redis_server.url), workers=workers, via_module=via_module)
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=api.url, headers=EVENTS, timeout=5) as client:
            n = 0
            while not stop.is_set():
                batch = [
                    {
                        "user_id": f"k{n % 7}",
                        "item_id": str(1 + (n + i) % 50),
                        "event_type": "view",
                        "event_id": f"k-{n}-{i}",
                    }
                    for i in range(5)
                ]
                n += 1
                try:
                    r = client.post("/v1/events", json=batch)
                except httpx.HTTPError:
                    return  # the server died mid-request: that batch was never acknowledged
                if r.status_code == 202:
                    acked.extend(e["event_id"] for e in batch)

    # one event sent twice is stored once
    dup = {"user_id": "k0", "item_id": "9", "event_type": "purchase", "event_id": "order-1"}
    assert httpx.post(f"{api.url}/v1/events", json=dup, headers=EVENTS).json()["accepted"] == 1
    assert httpx.post(f"{api.url}/v1/events", json=dup, headers=EVENTS).json()["duplicates"] == 1
    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(2.0)
    api.kill9()  # while batches are in flight
    stop.set()
    thread.join(timeout=10)
    assert len(acked) >= 50, "too few batches acknowledged before the kill"
    stored = [r["event_id"] for r in read_segments(storage / "events") if r["event_type"] != "impression"]
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    assert stored.count("order-1") == 1
    assert len(stored) == len(set(stored)), "an event was stored twice"


def test_live_state_is_shared_by_processes_and_workers(
    storage: Path, redis_server: RedisServer, start_api, tmp_path: Path
) -> None:
    env = api_env(storage, redis_server.url, RECSYS_CACHE_TTL_SECONDS="300")
    # A: `python -m serving` (what `make serve` runs) with two workers; B: a single uvicorn process
    a = start_api(env, workers=2, via_module=True)
    b = start_api(env)
    assert re.search(rf"recsys API on http://127\.0\.0\.1:{a.port} .*2 worker", a.log())
    user = f"newbie-{uuid.uuid4().hex[:8]}"
    cold = get_recs(b.url, user)
    assert cold["cold_start"] and {it["reason"] for it in cold["items"]} == {"popular now"}
    for n, item in enumerate(SCI_FI_CLICKS, start=1):
        writer, reader = (a, b) if n % 2 else (b, a)
        r = httpx.post(
            f"{writer.url}/v1/events", json={"user_id": user, "item_id": item, "event_type": "click"}, headers=EVENTS
        )
        assert r.status_code == 202
        # the very next request, on the other process (or either worker of A), reflects the event
        for url in (reader.url, reader.url, writer.url):
            assert not set(item_ids(get_recs(url, user))) & set(SCI_FI_CLICKS[:n])
    fourth = get_recs(b.url, user)
    assert not fourth["cold_start"] and item_ids(fourth) != item_ids(cold)
    reasons = [it["reason"] for it in fourth["items"]]
    assert sum(r.startswith("because you clicked ") for r in reasons) >= 8, reasons
    # cached lists are shared too, and /metrics of A adds up both of its workers
    for _ in range(4):
        get_recs(a.url, user)
    text = httpx.get(f"{a.url}/metrics").text
    assert re.search(r'recsys_cache_requests_total\{result="hit"\} [1-9]', text), text[-2000:]
    assert re.search(r'recsys_events_total\{outcome="accepted"\} [1-9]', text)
    assert 'recsys_model_info{arm="champion",model_name="Hybrid",model_version="Hybrid-test-A"} 1.0' in text


def test_rate_limit_is_shared_by_processes_through_redis(storage: Path, redis_server: RedisServer, start_api) -> None:
    redis_server.client().flushdb()  # counters of earlier tests must not count here
    env = api_env(storage, redis_server.url, RECSYS_RATE_LIMIT_PER_MINUTE="10")
    a, b = start_api(env), start_api(env)
    codes = [httpx.get(f"{url}/v1/items/50/similar").status_code for url in [a.url] * 6 + [b.url] * 6]
    assert codes == [200] * 10 + [429] * 2
    assert httpx.get(f"{b.url}/health").status_code == 200
    assert redis_server.client().keys("recsys:ratelimit*")


def test_redis_outage_falls_back_to_process_state_and_recovers(storage: Path, start_api, tmp_path: Path) -> None:
    redis = RedisServer().start()
    try:
        # with rate limiting on: its counters move to process memory during the outage
        api = start_api(api_env(storage, redis.url, RECSYS_RATE_LIMIT_PER_MINUTE="100000"))
        user = f"outage-{uuid.uuid4().hex[:8]}"
        first, second = SCI_FI_CLICKS[0], SCI_FI_CLICKS[1]

        def click(item: str, event_id: str) -> dict:
            body = {"user_id": user, "item_id": item, "event_type": "click", "event_id": event_id}
            r = httpx.post(f"{api.url}/v1/events", json=body, headers=EVENTS, timeout=10)
            assert r.status_code == 202, r.text
            return r.json()

        click(first, "o-1")
        assert first not in item_ids(get_recs(api.url, user))
        assert httpx.get(f"{api.url}/ready").json()["redis"] == "up"

        redis.stop()
        # answers stay correct from in-process state, and the outage is logged
        for _ in range(3):
            assert first not in item_ids(get_recs(api.url, user))
        assert click(second, "o-2")["accepted"] == 1
        assert click(second, "o-2")["duplicates"] == 1  # ids are still deduplicated, in memory
        served = item_ids(get_recs(api.url, user))
        assert first not in served and second not in served
        assert httpx.get(f"{api.url}/ready").json() == {
            "status": "ready",
            "model_version": "Hybrid-test-A",
            "redis": "down",
        }
        assert "unreachable" in api.log()

        redis.start()  # same port, empty
        deadline = time.monotonic() + 15
        while httpx.get(f"{api.url}/ready").json()["redis"] != "up":
            assert time.monotonic() < deadline, api.log()[-2000:]
            get_recs(api.url, user)
            time.sleep(0.3)
        served = item_ids(get_recs(api.url, user))
        assert first not in served and second not in served
        # what Redis lost was replayed into it from the process's memory
        client = redis.client()
        assert client.llen(f"recsys:ev:{user}") == 2
        assert client.exists("recsys:eid:o-1") and client.exists("recsys:eid:o-2")
        assert click(first, "o-1")["duplicates"] == 1
        assert "is back" in api.log()
        text = httpx.get(f"{api.url}/metrics").text
        assert "recsys_redis_up 1.0" in text
    finally:
        redis.stop()


def test_hot_reload_under_load_without_failures_and_corrupt_artifact_refused(
    storage: Path, redis_server: RedisServer, start_api
) -> None:
    api = start_api(api_env(storage, redis_server.url))
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=api.url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = client.get(f"/v1/users/{n % 900 + 1}/recommendations", params={"k": 5})
                    results.append(
                        (r.status_code, r.json().get("model_version", "") if r.status_code == 200 else r.text)
                    )
                except httpx.HTTPError as exc:
                    results.append((0, repr(exc)))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        art = movielens_artifact()
        publish(storage, with_version(art, "Hybrid-test-B"))
        deadline = time.monotonic() + 20
        while not (results and results[-1][1] == "Hybrid-test-B"):
            assert time.monotonic() < deadline, api.log()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)

        publish(storage, with_version(art, "Hybrid-test-C"), corrupt=True)
        deadline = time.monotonic() + 20
        while "rejected champion artifact artifacts/Hybrid-test-C" not in api.log():
            assert time.monotonic() < deadline, api.log()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    versions = [v for _, v in results]
    assert set(versions) == {"Hybrid-test-A", "Hybrid-test-B"} and len(versions) > 50
    # B from the switch on (a request started just before it may still finish with A), C never
    assert set(versions[versions.index("Hybrid-test-B") + 4 :]) == {"Hybrid-test-B"}
    model = httpx.get(f"{api.url}/v1/model").json()
    assert model["champion"]["model_version"] == "Hybrid-test-B"
    assert model["last_rejected"]["path"] == "artifacts/Hybrid-test-C"
    assert "checksum" in model["last_rejected"]["error"]
    line = next(x for x in api.log().splitlines() if "rejected champion artifact" in x)
    assert "still serving Hybrid-test-B" in line
    reload = httpx.post(f"{api.url}/v1/admin/reload", headers={"X-API-Key": ADMIN_KEY})
    assert reload.status_code == 409 and json.loads(reload.text)["detail"].startswith("champion artifact")
