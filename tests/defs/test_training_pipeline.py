"""Training through the asset graph: candidates on both protocols, the report, the blocking promotion
check and the MLflow registry (smoke budget, a few RecBole models)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from recsys_assets.contract.artifact import CHALLENGER_POINTER, read_pointer
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.definitions import PIPELINE_JOB, TUNE_JOB, build_definitions
from recsys_assets.defs.training import TUNED_PARAMS
from recsys_assets.lib import canary as gate
from recsys_assets.lib import champion as champion_log
from recsys_assets.lib.tracking import MlflowTracking

pytestmark = pytest.mark.integration


def run(settings: Settings, **candidates) -> dg.ExecuteInProcessResult:
    config = {"budget": "smoke", **candidates}
    job = build_definitions(settings).resolve_job_def(PIPELINE_JOB)
    return job.execute_in_process(raise_on_error=False, run_config={"ops": {"model_candidates": {"config": config}}})


def check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    evs = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.asset_check_key.name == name
    ]
    assert len(evs) == 1
    return evs[0]


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dg.ExecuteInProcessResult]:
    from recsys_assets.contract.settings import get_settings

    s = get_settings(storage_uri=str(tmp_path_factory.mktemp("train") / "data"))
    return s, run(s, models=["Pop", "EASE"])


def test_candidates_report_and_champion(first, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, result = first
    assert result.success
    store = Storage.from_settings(settings)
    table = store.read_table("evaluation_report.parquet")
    assert {"model", "protocol", "slice", "metric", "k", "value", "n_users"} <= set(table.columns)
    assert set(table["protocol"]) == {"random", "temporal"}
    assert set(table["k"]) == {5, 10, 20}
    assert {"Pop", "EASE", "Popularity", "Content", "Hybrid", "BuyAgain"} == set(table["model"])
    assert {"precision", "recall", "ndcg", "map", "hit", "mrr", "itemcoverage", "averagepopularity"} <= set(
        table["metric"]
    )
    temporal = table[(table["protocol"] == "temporal") & (table["metric"] == "ndcg") & (table["k"] == 10)]
    assert {"all", "0", "20+", "new_item"} <= set(temporal["slice"])
    html = store.read_bytes("reports", "evaluation_report.html").decode()
    assert "<script src=" not in html and html.count("plotly-graph-div") >= 6

    ev = check(result, "challenger_beats_baseline_and_champion")
    assert ev.passed
    assert ev.metadata["challenger_ndcg@10"].value >= ev.metadata["popularity_ndcg@10"].value

    pointer = read_pointer(store)
    assert pointer is not None and store.exists(*pointer["path"], "manifest.json")
    monkeypatch.chdir(tmp_path)  # nothing of MLflow's may land in the working directory
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    champion = tracking.alias_version("champion")
    assert champion is not None and champion["version"] == pointer["registry_version"]
    challenger = tracking.alias_version("challenger")
    assert challenger is not None
    # the promotion is recorded, and the pointer can be written again from the version's own record
    changes = champion_log.read_changes(store)
    assert changes[["action", "from_version", "to_version"]].values.tolist() == [
        ["pipeline", "", pointer["registry_version"]]
    ]
    assert changes["actor"][0].startswith("dagster run ")
    assert json.loads(champion["tags"][champion_log.TAG_POINTER])["data_until"] == pointer["data_until"]
    # the runner-up got a challenger pointer when it beat the popularity baseline
    ranked = store.read_table("challenger_model.parquet")
    second = read_pointer(store, CHALLENGER_POINTER)
    assert (second is not None) == bool(ranked["beats_baseline"].iloc[1])
    if second is not None:
        assert second["registry_version"] == challenger["version"]
        assert store.exists(*second["path"], "manifest.json")
    runs = tracking.client().search_runs([tracking.experiment_id()])
    assert len(runs) >= 10  # every candidate on both protocols, plus the promotions
    assert all(r.data.params.get("dataset_fingerprint") for r in runs)
    report_runs = [r for r in runs if r.info.run_name == "evaluation report"]
    assert len(report_runs) == 1
    logged = {a.path for a in tracking.client().list_artifacts(report_runs[0].info.run_id, "report")}
    assert logged == {"report/evaluation_report.html", "report/evaluation_report.parquet"}
    assert list(tmp_path.iterdir()) == []


def test_a_worse_challenger_is_not_promoted(first) -> None:
    settings, _ = first
    store = Storage.from_settings(settings)
    before = read_pointer(store)
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    alias_before = tracking.alias_version("champion")
    # only RecBole's popularity and the content model: both lose to the hybrid champion
    result = run(settings, models=["Pop"], native_models=["Content"])
    ev = check(result, "challenger_beats_baseline_and_champion")
    assert not ev.passed
    assert ev.metadata["challenger_ndcg@10"].value < ev.metadata["current_champion_ndcg@10"].value
    materialized = {
        e.asset_key.to_user_string() for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    assert "challenger_model" in materialized and "champion_model" not in materialized
    assert read_pointer(store) == before
    assert tracking.alias_version("champion")["version"] == alias_before["version"]
    table = store.read_table("evaluation_report.parquet")
    assert set(table["model"]) == {"Pop", "Content"}  # the report shows what this run measured


def test_hyperparameter_search_feeds_the_next_comparison(first) -> None:
    settings, _ = first
    defs = build_definitions(settings)
    job = defs.resolve_job_def(TUNE_JOB)
    result = job.execute_in_process(
        raise_on_error=False,
        run_config={"ops": {"tuned_hyperparameters": {"config": {"models": ["EASE"], "trials": 2}}}},
    )
    assert result.success
    store = Storage.from_settings(settings)
    best = json.loads(store.read_bytes(*TUNED_PARAMS))
    assert set(best) == {"EASE"} and 10.0 <= best["EASE"]["params"]["reg_weight"] <= 2000.0
    from recsys_assets.lib.models.tuning import model_config

    assert model_config("EASE", "standard", tuned=best)["params"]["reg_weight"] == best["EASE"]["params"]["reg_weight"]


def test_a_candidate_over_the_limits_is_skipped_with_its_reason_in_the_metadata_and_the_report(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from recsys_assets.contract.limits import TrainingLimits
    from recsys_assets.contract.settings import get_settings

    settings = get_settings(
        storage_uri=str(tmp_path_factory.mktemp("limits") / "data"),
        limits=TrainingLimits(ease_max_items=1_000, threads=1),  # ml-100k has 1,682 items
    )
    result = run(settings, models=["EASE", "ALS"], native_models=["Popularity", "Hybrid"], protocols=["temporal"])
    assert result.success
    meta = result.asset_materializations_for_node("model_candidates")[0].metadata
    assert "EASE refused: 1,682 items > ease_max_items=1,000" in meta["skipped"].value
    store = Storage.from_settings(settings)
    table = store.read_table("evaluation_report.parquet")
    assert set(table["model"]) == {"ALS", "Popularity", "Hybrid"}
    html = store.read_bytes("reports", "evaluation_report.html").decode()
    assert "Models not trained" in html and "EASE refused: 1,682 items" in html
    skipped = json.loads(store.read_bytes("reports", "skipped_candidates.json"))["skipped"]
    assert [(s["model"], s["protocol"]) for s in skipped] == [("EASE", "temporal")]


def test_the_comparison_budget_skips_candidates_in_the_plan_with_the_reason(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from recsys_assets.contract.limits import TrainingLimits
    from recsys_assets.contract.settings import get_settings

    settings = get_settings(
        storage_uri=str(tmp_path_factory.mktemp("budget") / "data"),
        limits=TrainingLimits(comparison_minutes=1e-6, threads=1),  # room for the Hybrid and the baseline only
    )
    models = ["ALS", "ItemItemCosine"]
    result = run(settings, models=models, native_models=["Popularity", "Content", "Hybrid"], protocols=["temporal"])
    assert result.success
    # the plan gave steps to admitted models only
    steps = {e.step_key for e in result.all_events if e.step_key}
    model_steps = {k for k in steps if k.startswith("model_candidates.candidate[")}
    assert model_steps == {"model_candidates.candidate[Popularity]"}
    store = Storage.from_settings(settings)
    assert set(store.read_table("evaluation_report.parquet")["model"]) == {"Hybrid", "Popularity"}
    skipped = json.loads(store.read_bytes("reports", "skipped_candidates.json"))["skipped"]
    assert [s["model"] for s in skipped] == ["ALS", "ItemItemCosine", "Content"]
    assert all("over the comparison's time budget" in s["reason"] for s in skipped)


def test_a_challenger_of_another_model_opens_a_canary_and_the_champion_stays(first) -> None:
    """With a champion serving, a winner that is another model goes to the canary share of users
    (`lib/canary.py`); the `champion` alias and the pointer do not move."""
    settings, _ = first
    lenient = settings.model_copy(update={"promotion_margin": 0.99})
    store = Storage.from_settings(settings)
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    before, alias_before = read_pointer(store), tracking.alias_version("champion")
    result = run(lenient, models=["Pop"], native_models=["Content"])
    assert result.success
    mat = next(
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key.to_user_string() == "champion_model"
    )
    assert mat.metadata["canary"].value is True
    assert read_pointer(store) == before and tracking.alias_version("champion")["version"] == alias_before["version"]
    canary = read_pointer(store, CHALLENGER_POINTER)
    assert canary["role"] == "canary" and canary["share"] == settings.canary.share and canary["salt"]
    assert canary["registry_version"] == tracking.alias_version("challenger")["version"]
    assert store.exists(*canary["path"], "manifest.json")
    state = gate.read_state(store)
    assert state is not None and state.phase == "canary"
    assert state.champion["registry_version"] == alias_before["version"]
    decisions = gate.read_decisions(store)
    assert decisions[["phase", "verdict"]].values.tolist()[-1] == ["canary", "start"]
