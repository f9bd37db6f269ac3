"""The canary gate end to end: a real `mlflow server`, Redis and an API process serving real traffic whose
clicks the test decides; `canary_sensor` reads the API's event log, and what it decides changes what the
API serves: a worse canary is withdrawn, a better one promoted, and a new champion that drops during its
holdout is rolled back."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from recsys_assets.contract.artifact import CHALLENGER_POINTER, read_pointer
from recsys_assets.contract.canary import CanaryConfig
from recsys_assets.contract.settings import get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.defs.sensors import canary_sensor
from recsys_assets.lib import canary as gate
from recsys_assets.lib import champion
from recsys_assets.lib.tracking import CHALLENGER, CHAMPION, MlflowTracking
from tests.api_support import API_KEY, api_env, register_versions

pytestmark = pytest.mark.integration

CONFIG = CanaryConfig(share=0.5, holdout_share=0.5, min_lists=60, max_lists=5_000, conversion=False)


def model_state(url: str) -> dict:
    return httpx.get(f"{url}/v1/model", timeout=5).json()


def wait_for(url: str, check, what: str, within: float = 15.0) -> dict:
    started = time.monotonic()
    while time.monotonic() - started < within:
        state = model_state(url)
        if check(state):
            return state
        time.sleep(0.2)
    raise AssertionError(f"the API did not come to {what} within {within}s: {model_state(url)}")


def traffic(url: str, click_rate: dict[str, float], lists: int, rng: random.Random) -> dict[str, int]:
    """`lists` lists for MovieLens users; a list is clicked (its first item) with its model's rate."""
    served: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(lists):
            user = str(1 + (n * 7) % 943)
            r = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
            assert r.status_code == 200, r.text
            body = r.json()
            served[body["arm"]] = served.get(body["arm"], 0) + 1
            if rng.random() < click_rate[body["model_version"]]:
                event = {
                    "user_id": user,
                    "item_id": body["items"][0]["item_id"],
                    "event_type": "click",
                    "recommendation_id": body["recommendation_id"],
                }
                assert client.post("/v1/events", json=event, headers={"X-API-Key": API_KEY}).status_code == 202
    return served


def look_until_decided(url: str, rates: dict[str, float], resources: dict, rng: random.Random) -> str:
    for _ in range(8):
        traffic(url, rates, 200, rng)
        result = canary_sensor(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral()), **resources)
        message = str(result.skip_message)
        if not message.startswith("continue"):
            return message
    raise AssertionError(f"no verdict after 1,600 lists: {message}")


def test_the_gate_withdraws_promotes_and_rolls_back_what_the_api_serves(
    mlflow_server: str, tmp_path: Path, redis_server, start_api
) -> None:
    storage = tmp_path / "data"
    store = Storage.from_uri(str(storage))
    tracking = MlflowTracking(tracking_uri=mlflow_server)
    versions = register_versions(tracking, tmp_path, {"gate-A": CHAMPION, "gate-B": CHALLENGER})
    assert champion.sync_champion(tracking, store, actor="test setup") is not None
    api = start_api(api_env(storage, redis_server.url), workers=1)
    resources = {
        "settings": get_settings(storage_uri=str(storage), canary=CONFIG),
        "storage": StorageResource(uri=str(storage)),
        "mlflow": MlflowResource(tracking_uri=mlflow_server),
    }
    rng = random.Random(7)

    # 1. a canary that users click far less than the champion is withdrawn, and the API stops serving it
    gate.start_canary(tracking, store, CONFIG, versions["gate-B"], "test: B passed offline")
    wait_for(api.url, lambda s: s["challenger_role"] == "canary" and s["challenger_share"] == 0.5, "the canary")
    verdict = look_until_decided(api.url, {"gate-A": 0.4, "gate-B": 0.05}, resources, rng)
    assert verdict.startswith("withdraw") and "withdrew gate-B" in verdict
    state = wait_for(api.url, lambda s: s["challenger"] is None, "no challenger")
    assert state["champion"]["model_version"] == "gate-A"
    assert read_pointer(store, CHALLENGER_POINTER)["role"] == "withdrawn"
    assert tracking.alias_version(CHAMPION)["version"] == versions["gate-A"]

    # 2. a canary users prefer is promoted: it becomes champion and the old champion keeps a holdout
    gate.start_canary(tracking, store, CONFIG, versions["gate-B"], "test: B again")
    wait_for(api.url, lambda s: s["challenger_role"] == "canary", "the second canary")
    verdict = look_until_decided(api.url, {"gate-A": 0.05, "gate-B": 0.4}, resources, rng)
    assert verdict.startswith("promote"), verdict
    assert tracking.alias_version(CHAMPION)["version"] == versions["gate-B"]
    state = wait_for(
        api.url,
        lambda s: s["champion"]["model_version"] == "gate-B" and s["challenger_role"] == "holdout",
        "B as champion with A held out",
    )
    assert state["challenger"]["model_version"] == "gate-A"

    # 3. the new champion drops during the holdout: rolled back, and the API serves A alone again
    verdict = look_until_decided(api.url, {"gate-A": 0.4, "gate-B": 0.05}, resources, rng)
    assert verdict.startswith("withdraw") and "rolled back to gate-A" in verdict
    assert tracking.alias_version(CHAMPION)["version"] == versions["gate-A"]
    wait_for(api.url, lambda s: s["champion"]["model_version"] == "gate-A" and s["challenger"] is None, "A alone")
    assert gate.read_state(store) is None

    decisions = gate.read_decisions(store)
    assert decisions[["phase", "verdict"]].values.tolist() == [
        ["canary", "start"],
        ["canary", "withdraw"],
        ["canary", "start"],
        ["canary", "promote"],
        ["holdout", "start"],
        ["holdout", "withdraw"],
    ]
    decided = decisions[decisions["verdict"] != "start"]
    # the evidence: each arm's lists and clicks, the difference and its always-valid interval
    assert (decided["champion_lists"] >= CONFIG.min_lists).all() and (decided["challenger_lists"] >= 60).all()
    assert (decided["low"] <= decided["estimate"]).all() and (decided["estimate"] <= decided["high"]).all()
    assert (decided.loc[decided["verdict"] == "withdraw", "high"] < 0).all()
    assert decided["challenger_clicks"].notna().all()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    shown = subprocess.run(
        [sys.executable, "-m", "recsys_assets", "champion", "canary"],
        env={**env, "RECSYS_STORAGE_URI": str(storage), "RECSYS_MLFLOW_TRACKING_URI": mlflow_server},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "no canary or holdout open" in shown.stdout and "rolled back to gate-A" in shown.stdout
    changes = champion.read_changes(store)
    assert changes["action"].tolist()[-2:] == ["promote", "rollback"]
    assert changes["actor"].tolist()[-1] == gate.ACTOR
    assert "holdout" in changes["reason"].tolist()[-1]
