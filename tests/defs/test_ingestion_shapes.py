"""Real log shapes through the ingestion graph and `python -m recsys_assets ingest` (issue 15): every
row rejected fails the step with the reasons in its message; a ratings file with no type column
ingests by configuration alone. Fixtures are small files written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.definitions import INGESTION_JOB, build_definitions
from tests.conftest import ROOT

RATINGS = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{i},{1 + (u + i) % 5},{1704067200 + 60 * (u * 10 + i)}\n" for u in range(1, 6) for i in range(1, 8)
)
RATINGS_LOG = {
    "columns": {"user_id": "userId", "item_id": "movieId", "timestamp": "timestamp", "value": "rating"},
    "defaults": {"event_type": "rating"},
}


def run(settings: Settings) -> dg.ExecuteInProcessResult:
    return build_definitions(settings).resolve_job_def(INGESTION_JOB).execute_in_process(raise_on_error=False)


def step_failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        e.step_key: e.event_specific_data.error.to_string()
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    }


def test_all_rows_rejected_fails_with_the_reasons_in_the_message(tmp_path: Path, settings: Settings) -> None:
    log = tmp_path / "ratings.csv"
    # the shape of issue 15: ratings with no type column, the rating column mapped as the type too
    log.write_text("user_id,item_id,event_type,timestamp,value\n" + "u1,i1,rating,1704067200,7\n" * 3)
    log.write_text(log.read_text() + "u2,i2,pv,1704067200,\n")
    s = get_settings(storage_uri=settings.storage_uri, source="event_log", event_log={"paths": [str(log)]})
    result = run(s)
    assert not result.success
    failures = step_failures(result)
    assert list(failures) == ["clean"]
    msg = failures["clean"]
    assert "no interaction left: 4 of 4 rows rejected (100%)" in msg
    assert "bad_value: 3 rows" in msg and "RECSYS_RATING_MAX" in msg
    assert f"e.g. {log} line 2: user_id='u1', item_id='i1', event_type='rating'" in msg
    assert "unknown_event_type: 1 rows" in msg and "`event_types`" in msg
    # nothing written: no table of a log that has no interaction
    assert not Storage.from_settings(s).exists("interactions.parquet")


def test_ratings_without_a_type_column_through_the_graph(tmp_path: Path, settings: Settings) -> None:
    log = tmp_path / "ratings.tsv.csv"
    log.write_text(RATINGS.replace(",", "\t"))  # and tab-separated under a .csv name
    s = get_settings(
        storage_uri=settings.storage_uri, source="event_log", event_log={"paths": [str(log)], **RATINGS_LOG}
    )
    result = run(s)
    assert result.success, step_failures(result)
    meta = result.asset_materializations_for_node("clean")[0].metadata
    assert meta["rows"].value == 35 and meta["rejected_rows"].value == 0
    inter = Storage.from_settings(s).read_table("interactions.parquet")
    assert set(inter["event_type"]) == {"rating"} and inter["value"].between(1, 5).all()


def test_ingest_command_materializes_the_ingestion_group_only(tmp_path: Path) -> None:
    log = tmp_path / "ratings.csv"
    log.write_text(RATINGS + "9,9,6,1704067200\n")  # one rating out of range
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {
        "RECSYS_STORAGE_URI": str(tmp_path / "data"),
        "RECSYS_DAGSTER_HOME": str(tmp_path / "home"),
        "RECSYS_SOURCE": "event_log",
        "RECSYS_EVENT_LOG": json.dumps({"paths": [str(log)], **RATINGS_LOG}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_assets", "ingest"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "SUCCESS" in out and "36 raw rows -> 35 interactions (5 users, 7 items); 1 rejected (bad_value 1)" in out
    assert f"EDA report: {tmp_path / 'data' / 'reports' / 'eda_report.html'}" in out
    assert "evaluation report" not in out
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "home"))) as instance:
        assert len(instance.get_runs()) == 1
        assert instance.get_latest_materialization_event(dg.AssetKey("eda_report")) is not None
        assert instance.get_latest_materialization_event(dg.AssetKey("model_candidates")) is None


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str | None]]:
    return {
        e.event_specific_data.check_name: (e.event_specific_data.passed, e.event_specific_data.description)
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_one_instant_for_every_event_stops_before_training(tmp_path: Path, settings: Settings) -> None:
    # a play-count file with no time, given a constant timestamp to get in
    log = tmp_path / "plays.csv"
    log.write_text("user,item,weight\n" + "".join(f"u{u},i{i},{u + i}\n" for u in range(4) for i in range(5)))
    source = {
        "paths": [str(log)],
        "columns": {"user_id": "user", "item_id": "item", "value": "weight"},
        "defaults": {"event_type": "view", "timestamp": "2024-01-01T00:00:00Z"},
    }
    s = get_settings(storage_uri=settings.storage_uri, source="event_log", event_log=source)
    result = run(s)
    assert not result.success
    passed, description = check_evaluations(result)["interactions_have_time"]
    assert not passed and "all 20 interactions share one timestamp (2024-01-01 00:00:00+00:00)" in description
    # the check blocks what follows the interactions; a model step would be skipped the same way
    materialized = {
        e.asset_key.to_user_string() for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    assert "interactions" in materialized and "interaction_matrix" not in materialized


def test_most_events_at_one_instant_is_a_warning(tmp_path: Path, settings: Settings) -> None:
    log = tmp_path / "events.csv"
    rows = [f"u{i % 4},i{i % 5},view,1704067200" for i in range(15)] + [
        f"u1,i{i},view,{1704067300 + i}" for i in range(5)
    ]
    log.write_text("user_id,item_id,event_type,timestamp\n" + "\n".join(rows) + "\n")
    s = get_settings(storage_uri=settings.storage_uri, source="event_log", event_log={"paths": [str(log)]})
    result = run(s)
    assert result.success
    passed, description = check_evaluations(result)["interactions_have_time"]
    assert not passed and "share one timestamp" in description
