"""The MLflow registry drives what the API serves: promote, roll back, and an alias moved in the MLflow
UI, against a real `mlflow server`, Redis and a two-worker API process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from recsys_assets.contract import registry_alias
from recsys_assets.contract.artifact import CHAMPION_POINTER, read_pointer
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.defs.sensors import champion_alias_sensor
from recsys_assets.lib import champion
from recsys_assets.lib.tracking import CHALLENGER, CHAMPION, MlflowTracking
from tests.api_support import api_env, register_versions
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration


def served_versions(url: str, tries: int = 8) -> set[str]:
    """The champion version every answering worker reports (several requests reach several workers)."""
    return {httpx.get(f"{url}/v1/model", timeout=5).json()["champion"]["model_version"] for _ in range(tries)}


def wait_served(url: str, version: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if served_versions(url) == {version}:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"API still serves {served_versions(url)}, not {version}, after {within}s")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys_assets", "champion", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_registry_moves_what_the_api_serves(mlflow_server: str, tmp_path: Path, redis_server, start_api) -> None:
    storage = tmp_path / "data"
    store = Storage.from_uri(str(storage))
    tracking = MlflowTracking(tracking_uri=mlflow_server)
    versions = register_versions(tracking, tmp_path, {"hyb-A": CHAMPION, "hyb-B": CHALLENGER})
    assert versions == {"hyb-A": "1", "hyb-B": "2"}

    # the first sync copies the artifact out of MLflow (storage has none) and writes the pointer
    first = champion.sync_champion(tracking, store, actor="test setup")
    assert first is not None and first["to_version"] == "1"
    assert read_pointer(store)["path"] == ["artifacts", "hyb-A"]
    assert champion.sync_champion(tracking, store) is None  # in step: nothing to do

    poll = 0.5
    api = start_api(api_env(storage, redis_server.url, RECSYS_MODEL_POLL_SECONDS=str(poll)), workers=2)
    assert served_versions(api.url) == {"hyb-A"}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")},
        "RECSYS_STORAGE_URI": str(storage),
        "RECSYS_MLFLOW_TRACKING_URI": mlflow_server,
        "RECSYS_MODEL_POLL_SECONDS": str(poll),
    }

    done = cli(env, "promote", "2", "--reason", "B wins the A/B test", "--actor", "alice")
    assert done.returncode == 0, done.stderr
    assert "-> 2 (hyb-B)" in done.stdout
    assert tracking.alias_version(CHAMPION)["version"] == "2"
    # every worker within a poll or two (the pointer is read every `model_poll_seconds`)
    assert wait_served(api.url, "hyb-B", within=10 * poll + 5) < 10 * poll + 5

    done = cli(env, "rollback", "--reason", "CTR fell", "--actor", "bob")
    assert done.returncode == 0, done.stderr
    assert tracking.alias_version(CHAMPION)["version"] == "1"
    wait_served(api.url, "hyb-A", within=10 * poll + 5)

    # moved in the MLflow UI (the registry's own API, as the UI calls it): the sensor follows it
    tracking.set_alias(CHAMPION, "2")
    result = champion_alias_sensor(
        dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral()),
        storage=StorageResource(uri=str(storage)),
        mlflow=MlflowResource(tracking_uri=mlflow_server),
    )
    assert "registry version 2" in str(result.skip_message)
    wait_served(api.url, "hyb-B", within=10 * poll + 5)

    status = cli(env, "status")
    assert status.returncode == 0, status.stderr
    assert '"in_sync": true' in status.stdout and '"rollback_to": "1"' in status.stdout

    changes = champion.read_changes(store)
    assert changes["action"].tolist() == ["registry", "promote", "rollback", "registry"]
    assert changes[["from_version", "to_version"]].values.tolist() == [["", "1"], ["1", "2"], ["2", "1"], ["1", "2"]]
    assert changes["actor"].tolist()[1:3] == ["alice", "bob"]
    assert changes["reason"].tolist()[1:3] == ["B wins the A/B test", "CTR fell"]
    assert changes["to_model"].tolist() == ["hyb-A", "hyb-B", "hyb-A", "hyb-B"]
    assert changes["at"].is_monotonic_increasing

    # a version that does not exist: a clear error, nothing moved
    done = cli(env, "promote", "9")
    assert done.returncode == 2 and "has no version '9'" in done.stderr
    assert read_pointer(store)["registry_version"] == "2"
    assert Storage.from_uri(str(storage)).exists(*CHAMPION_POINTER)


def test_an_alias_moved_in_the_registry_is_served_within_the_poll(
    mlflow_server: str, tmp_path: Path, redis_server, start_api
) -> None:
    """With a registry URL the API asks MLflow's REST API for the `champion` alias on every poll: an
    alias moved in the MLflow UI reaches every worker within `model_poll_seconds`, with no sensor run
    and the pointer file unchanged; a registry that does not answer leaves the pointer file in charge."""
    storage = tmp_path / "data"
    store = Storage.from_uri(str(storage))
    tracking = MlflowTracking(tracking_uri=mlflow_server)
    versions = register_versions(tracking, tmp_path, {"reg-C": CHAMPION, "reg-D": CHALLENGER}, store)
    assert champion.sync_champion(tracking, store, actor="test setup") is not None
    # what the API builds from the registry names what the sync wrote (these versions carry no promotion
    # pointer tag, so the sync added the manifest's model and times, which the API does not read)
    asked = registry_alias.alias_version(mlflow_server)
    assert asked is not None and asked["version"] == versions["reg-C"]
    built, written = registry_alias.pointer_of(asked), read_pointer(store)
    assert built == {k: written[k] for k in ("model_version", "path", "registry_version")}
    assert registry_alias.alias_version(mlflow_server, model="no-such-model") is None

    poll = 0.5
    env = api_env(storage, redis_server.url, RECSYS_MODEL_POLL_SECONDS=str(poll), RECSYS_REGISTRY_URL=mlflow_server)
    api = start_api(env, workers=2)
    assert served_versions(api.url) == {"reg-C"}

    # the MLflow UI moves the alias with this REST call (`set_registered_model_alias`); no sensor runs
    tracking.set_alias(CHAMPION, versions["reg-D"])
    # every worker within one poll (plus the registry's answer and the load): 2 polls at most
    elapsed = wait_served(api.url, "reg-D", within=10)
    print(f"alias moved -> every worker serves it: {elapsed:.2f} s (model_poll_seconds {poll})")
    assert elapsed <= 2 * poll + 1.0
    assert read_pointer(store)["model_version"] == "reg-C"  # the file is the sync's to rewrite, later

    # a registry that does not answer: the pointer file decides (reg-C), and /ready stays 200
    dead = api_env(storage, redis_server.url, RECSYS_REGISTRY_URL=f"http://127.0.0.1:{free_port()}")
    fallback = start_api(dead, workers=1)
    assert served_versions(fallback.url, tries=3) == {"reg-C"}
    assert httpx.get(f"{fallback.url}/ready", timeout=5).status_code == 200
    assert "model registry not answering" in fallback.log()

    tracking.set_alias(CHAMPION, versions["reg-C"])
    assert wait_served(api.url, "reg-C", within=10) <= 2 * poll + 1.0
