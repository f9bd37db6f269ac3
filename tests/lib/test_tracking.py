"""MLflow tracking and registry: URIs, metric names, runs, aliases and the pyfunc round trip.

The registry scenario runs twice: against the default local SQLite store under the data folder,
and (integration) against a real `mlflow server` subprocess with proxied artifacts.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from mlflow.utils.validation import validate_param_and_metric_name

from recsys_assets.contract.artifact import ServingArtifact, load_artifact, save_artifact
from recsys_assets.contract.scoring import Component, Scorer
from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.lib.tracking import (
    CHALLENGER,
    CHAMPION,
    MlflowTracking,
    metric_key,
    sanitize_name,
)

N_USERS, N_ITEMS, K = 5, 8, 3


def make_artifact(seed: int, version: str) -> ServingArtifact:
    """5 users x 8 items, blending popularity with a cosine item-item similarity."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.35) * rng.integers(1, 5, (N_USERS, N_ITEMS))
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = 2  # everyone has a history
    history = sp.csr_matrix(dense.astype(np.float64))
    cols = dense.T.astype(np.float64)
    norms = np.linalg.norm(cols, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    sim = (cols / norms) @ (cols / norms).T
    np.fill_diagonal(sim, 0.0)
    popularity = dense.sum(axis=0).astype(np.float64) + rng.random(N_ITEMS) * 0.1
    scorer = Scorer(
        components={
            "popularity": Component("popularity", {"popularity": popularity}),
            "item_item": Component("item_item", {"similarity": sp.csr_matrix(sim)}, {"neighbours": 8}),
        },
        weights={"popularity": 0.3, "item_item": 0.7},
    )
    return ServingArtifact(
        model_name="itemknn",
        model_version=version,
        scorer=scorer,
        user_ids=np.array([f"u{i}" for i in range(N_USERS)]),
        item_ids=np.array([f"item-{j}" for j in range(N_ITEMS)]),
        history=history,
        item_titles=np.array([f"Title {j}" for j in range(N_ITEMS)]),
        item_categories=np.array(["a|b" if j % 2 else "c" for j in range(N_ITEMS)]),
        dataset_fingerprint=f"fp-{seed}",
        metrics={"ndcg@10": 0.1 * seed},
    )


def metrics_table(model: str, scale: float) -> pd.DataFrame:
    rows = [
        (model, "ndcg", 10, "temporal", "all", 0.3 * scale),
        (model, "recall", 5, "temporal", "cold users", 0.2 * scale),
        (model, "averagepopularity", math.nan, "leave-one-out", "all", 12.5),
        (model, "hit", 20, "temporal", "empty", math.nan),  # nothing measured: not logged
        ("other", "ndcg", 10, "temporal", "all", 0.99),  # another model's row: ignored
    ]
    return pd.DataFrame(rows, columns=["model", "metric", "k", "protocol", "slice", "value"])


def expected_topk(art: ServingArtifact, k: int) -> list[list[str]]:
    idx = art.topk_for_users(np.arange(len(art.user_ids)), k)
    return [[str(art.item_ids[j]) for j in row if j >= 0] for row in idx]


def predicted_topk(model: mlflow.pyfunc.PyFuncModel, users: list[str], k: int) -> dict[str, list[str]]:
    out = model.predict(pd.DataFrame({"user_id": users, "k": [k] * len(users)}))
    assert list(out.columns) == ["user_id", "rank", "item_id"]
    return {u: g.sort_values("rank")["item_id"].tolist() for u, g in out.groupby("user_id", sort=False)}


def run_registry_scenario(tracking: MlflowTracking, work: Path) -> None:
    """Two runs, champion then challenger; aliases, pyfunc predictions, download and history."""
    uri_before, env_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    arts, run_ids, versions = {}, {}, {}
    report = work / "report.html"
    report.write_text("<html><body>evaluation</body></html>")
    for alias, seed in ((CHAMPION, 1), (CHALLENGER, 2)):
        art = make_artifact(seed, f"v{seed}")
        folder = work / f"artifact-{seed}"
        save_artifact(art, str(folder))
        run_ids[alias] = tracking.log_training_run(
            "itemknn",
            params={"k": 8, "shrink": 0.5, "weights": {"popularity": 0.3}},
            metrics=metrics_table("itemknn", seed),
            dataset_fingerprint=art.dataset_fingerprint,
            protocol_tags={"protocol": "temporal", "cutoff": "2024-01-01"},
            artifacts={"evaluation_report": str(report)},
            duration_s=1.5,
        )
        versions[alias] = tracking.register_artifact(str(folder), run_ids[alias], alias)
        arts[alias] = art
    assert versions == {CHAMPION: "1", CHALLENGER: "2"}
    # the fluent API's global state is put back after logging the models
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == (uri_before, env_before)

    client = tracking.client()
    run = client.get_run(run_ids[CHAMPION])
    assert run.info.status == "FINISHED"
    assert run.data.tags["recsys.dataset_fingerprint"] == "fp-1"
    assert (run.data.tags["protocol"], run.data.tags["protocol.cutoff"]) == ("temporal", "2024-01-01")
    assert run.data.params["dataset_fingerprint"] == "fp-1"
    assert run.data.params["weights"] == '{"popularity": 0.3}'
    assert run.data.metrics == pytest.approx(
        {
            "ndcg_at_10.temporal.all": 0.3,
            "recall_at_5.temporal.cold_users": 0.2,
            "averagepopularity.leave-one-out.all": 12.5,
            "train_duration_s": 1.5,
        }
    )
    assert [f.path for f in client.list_artifacts(run_ids[CHAMPION], "evaluation_report")] == [
        "evaluation_report/report.html"
    ]

    for alias in (CHAMPION, CHALLENGER):
        info = tracking.alias_version(alias)
        assert info is not None
        assert (info["version"], info["run_id"]) == (versions[alias], run_ids[alias])
        assert info["aliases"] == [alias]
        assert info["tags"]["recsys.artifact_sha256"] == arts[alias].checksum
        assert info["created_at"].tzinfo is not None
    assert tracking.alias_version("nobody") is None

    users = [*arts[CHAMPION].user_ids.tolist(), "stranger"]
    with tracking.activated():
        loaded = {
            a: mlflow.pyfunc.load_model(f"models:/{tracking.registered_model}@{a}") for a in (CHAMPION, CHALLENGER)
        }
    for alias, model in loaded.items():
        got = predicted_topk(model, users, K)
        want = expected_topk(arts[alias], K)
        assert [got[u] for u in arts[alias].user_ids] == want
        # an unknown user gets the blend of an empty history: still k items
        assert len(got["stranger"]) == K
    assert expected_topk(arts[CHAMPION], K) != expected_topk(arts[CHALLENGER], K)

    for alias in (CHAMPION, CHALLENGER):
        folder = tracking.download_artifact(alias, str(work / "downloads" / alias))
        assert Path(folder).is_relative_to(work / "downloads" / alias)
        back = load_artifact(folder)
        assert back.checksum == arts[alias].checksum
        assert back.model_version == arts[alias].model_version
    with pytest.raises(LookupError):
        tracking.download_artifact("nobody", str(work / "downloads" / "none"))

    history = tracking.champion_history()
    assert history["version"].tolist() == [1, 2]
    assert history["aliases"].tolist() == [CHAMPION, CHALLENGER]
    assert history["run_id"].tolist() == [run_ids[CHAMPION], run_ids[CHALLENGER]]
    assert history["dataset_fingerprint"].tolist() == ["fp-1", "fp-2"]
    assert history["ndcg_at_10.temporal.all"].tolist() == pytest.approx([0.3, 0.6])

    # the console's copy (`model_registry`, written on promotion): the same versions, with the runs' names
    store = Storage.from_uri(str(work / "tables"))
    runs.write_model_registry(store, tracking)
    table = store.read_table("model_registry.parquet")
    assert table["version"].tolist() == [1, 2] and table["aliases"].tolist() == [CHAMPION, CHALLENGER]
    assert table["ndcg_at_10.temporal.all"].tolist() == pytest.approx([0.3, 0.6])
    # the promotion names its runs "<model> (champion)"; these were not promoted by it
    assert table["run_name"].tolist() == ["itemknn", "itemknn"] and table["registered_as"].isna().all()


# ---------------------------------------------------------------------------------------------
# Unit
# ---------------------------------------------------------------------------------------------


def test_default_uri_lives_under_the_data_folder(settings: Settings, tmp_path: Path) -> None:
    root = settings.local_root()
    store = settings.mlflow_store()
    assert store.tracking_uri == f"sqlite:///{root}/mlflow/mlflow.db"
    assert store.artifact_location == (root / "mlflow" / "artifacts").as_uri()
    res = MlflowTracking.for_store(store)
    assert (res.tracking_uri, res.artifact_location) == (store.tracking_uri, store.artifact_location)
    assert (res.experiment, res.registered_model) == ("recsys", "recsys-recommender")

    server = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:5000"}).mlflow_store()
    assert server.tracking_uri == "http://127.0.0.1:5000"
    assert server.artifact_location is None

    azure = get_settings(
        storage_uri="abfs://recsys/data",
        azure_connection_string="UseDevelopmentStorage=true",
        dagster_home=str(tmp_path / "dagster"),
    )
    assert azure.mlflow_store().tracking_uri == f"sqlite:///{tmp_path}/dagster/mlflow/mlflow.db"


def test_metric_names_are_sanitized() -> None:
    assert metric_key("ndcg", 10, "temporal", "all") == "ndcg_at_10.temporal.all"
    assert metric_key("ndcg", 10.0, "temporal", "all") == "ndcg_at_10.temporal.all"
    assert metric_key("itemcoverage", math.nan, "leave-one-out", "all") == "itemcoverage.leave-one-out.all"
    assert metric_key("recall@20", None, "temporal", "cold users") == "recall_at_20.temporal.cold_users"
    weird = metric_key("hit rate/µ", 5, "time:split", "users/../new ☃")
    assert weird == "hit_rate__at_5.time_split.users_.._new"
    assert sanitize_name("") == "_"
    for name in (weird, metric_key("a b", 1, "c/d", "e:f")):
        assert validate_param_and_metric_name(name)
        assert "/" not in name


def test_duplicate_metric_rows_are_rejected(settings: Settings) -> None:
    table = pd.DataFrame(
        [("m", "ndcg", 10, "temporal", "all", 0.1), ("m", "ndcg@10", None, "temporal", "all", 0.2)],
        columns=["model", "metric", "k", "protocol", "slice", "value"],
    )
    with pytest.raises(ValueError, match="several rows"):
        MlflowTracking.for_store(settings.mlflow_store()).log_training_run("m", {}, table, "fp")


def test_working_directory_stays_clean(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    run_id = tracking.log_training_run("pop", {"a": 1}, metrics_table("pop", 1.0), "fp")
    assert tracking.client().get_run(run_id).data.metrics["ndcg_at_10.temporal.all"] == pytest.approx(0.3)
    assert tracking.alias_version(CHAMPION) is None
    assert tracking.champion_history().empty
    assert sorted(os.listdir(cwd)) == []
    assert (settings.local_root() / "mlflow" / "mlflow.db").is_file()


# ---------------------------------------------------------------------------------------------
# The registry against the default local store
# ---------------------------------------------------------------------------------------------


def test_registry_round_trip_local(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work = tmp_path / "work"
    work.mkdir()
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    run_registry_scenario(tracking, work)
    assert sorted(os.listdir(cwd)) == []
    # the model files live in the experiment's artifact root under the data folder
    assert list((settings.local_root() / "mlflow" / "artifacts").rglob("manifest.json"))

    # a fresh interpreter loads and runs the registered model without RecBole or torch
    probe = (
        "import sys, mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('models:/{tracking.registered_model}@{CHAMPION}')\n"
        "out = m.predict(pd.DataFrame({'user_id': ['u0'], 'k': [2]}))\n"
        "assert len(out) == 2, out\n"
        "print(sorted(n for n in ('torch', 'recbole', 'ray') if n in sys.modules))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri}
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert sorted(os.listdir(cwd)) == []


# ---------------------------------------------------------------------------------------------
# The registry against a real tracking server
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_registry_round_trip_server(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work = tmp_path / "work"
    work.mkdir()
    tracking = MlflowTracking.for_store(
        settings.model_copy(update={"mlflow_tracking_uri": mlflow_server}).mlflow_store()
    )
    assert tracking.artifact_location is None
    run_registry_scenario(tracking, work)
    # artifacts went through the server (mlflow-artifacts:), not to a local folder
    assert tracking.alias_version(CHAMPION)["source"].startswith("models:/")
    assert sorted(os.listdir(cwd)) == []
    assert not (settings.local_root() / "mlflow").exists()
