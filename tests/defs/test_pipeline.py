"""The Dagster asset graph: definitions load, the whole graph materializes, checks pass, bad input
fails cleanly and leaves the last good tables in place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.instance.ref import InstanceRef

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.contract.warehouse import connect
from recsys_assets.defs.definitions import INGESTION_JOB, build_definitions
from tests.conftest import ROOT, free_port

INGESTION_ASSETS = {
    "raw_events",
    "raw_items",
    "raw_users",
    "interactions",
    "rejected_events",
    "items",
    "users",
    "interaction_matrix",
    "eda_report",
}


def run(settings: Settings) -> dg.ExecuteInProcessResult:
    defs = build_definitions(settings)
    return defs.resolve_job_def(INGESTION_JOB).execute_in_process(raise_on_error=False)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.event_specific_data.asset_check_key.name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_definitions_list_every_asset_and_check(settings: Settings) -> None:
    graph = build_definitions(settings).resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys >= INGESTION_ASSETS
    groups = {graph.get(dg.AssetKey(k)).group_name for k in INGESTION_ASSETS}
    assert groups == {"ingestion"}
    checks = {k.name for k in graph.asset_check_keys}
    assert {"interactions_not_empty", "interactions_unique", "interactions_valid", "referential_integrity"} <= checks


def test_movielens_graph_materializes_with_published_sizes(settings: Settings) -> None:
    result = run(settings)
    assert result.success
    assert check_results(result) == {
        "interactions_not_empty": True,
        "interactions_have_time": True,
        "interactions_unique": True,
        "interactions_valid": True,
        "referential_integrity": True,
    }
    con = connect(Storage.from_settings(settings))
    n, users, items = con.sql(
        "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM interactions"
    ).fetchall()[0]
    assert (n, users, items) == (100_000, 943, 1682)
    assert con.sql("SELECT count(*) FROM users").fetchall()[0][0] == 943
    assert con.sql("SELECT count(*) FROM items").fetchall()[0][0] == 1682
    nnz, total = con.sql("SELECT count(*), sum(weight) FROM interaction_matrix").fetchall()[0]
    assert nnz == 100_000 and total == pytest.approx(con.sql("SELECT sum(value) FROM interactions").fetchall()[0][0])
    report = settings.local_root() / "reports" / "eda_report.html"
    assert report.is_file()
    mats = result.asset_materializations_for_node("eda_report")
    meta = mats[0].metadata
    assert meta["n_interactions"].value == 100_000
    assert 0.93 < meta["sparsity"].value < 0.94  # 1 - 100000 / (943 * 1682)
    # the same numbers beside the report, and the cleaning run's reject counts: the console reads these
    store = Storage.from_settings(settings)
    summary = json.loads(store.read_bytes("reports", "eda_summary.json"))
    assert summary["n_interactions"] == 100_000 and summary["sparsity"] == meta["sparsity"].value
    rejects = store.read_table("reject_counts.parquet")
    rejected = result.asset_materializations_for_node("clean")[0].metadata["rejected_rows"].value
    assert int(rejects["rows"].sum()) == rejected


def step_failure(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1
    return failures[0].event_specific_data.error.to_string()


def _write_log(path: Path, rows: list[str], header: str = "user_id,item_id,event_type,timestamp") -> None:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def test_bad_input_fails_with_a_clear_error_and_keeps_the_last_good_tables(tmp_path: Path, settings: Settings) -> None:
    log = tmp_path / "events.csv"
    _write_log(log, [f"u{i % 7},i{i % 11},view,{1704067200 + i}" for i in range(200)])
    s = get_settings(storage_uri=settings.storage_uri, source="event_log", event_log={"paths": [str(log)]})
    assert run(s).success
    store = Storage.from_settings(s)
    good = {name: store.read_table(f"{name}.parquet") for name in ("raw_events", "interactions", "items")}
    stamps = {name: os.path.getmtime(store.path(f"{name}.parquet")) for name in good}

    def failure_message(text: str) -> str:
        log.write_text(text)
        result = run(s)
        assert not result.success
        return step_failure(result)

    # a required column is missing
    msg = failure_message("user_id,item_id,timestamp\nu1,i1,1704067200\n")
    assert str(log) in msg and "'event_type'" in msg and "missing" in msg
    # a column of the wrong type for the whole file
    msg = failure_message("user_id,item_id,event_type,timestamp\nu1,i1,view,soon\nu2,i2,view,later\n")
    assert str(log) in msg and "'timestamp'" in msg and "wrong type" in msg
    # a file that is not a log at all
    log.write_bytes(b"")
    msg = failure_message("")
    assert str(log) in msg and "empty" in msg
    # an unparseable Parquet file
    bad_parquet = tmp_path / "events.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not parquet")
    s2 = s.model_copy(update={"event_log": s.event_log.model_copy(update={"paths": [str(bad_parquet)]})})
    result = run(s2)
    assert not result.success
    msg = step_failure(result)
    assert str(bad_parquet) in msg and "Parquet" in msg

    for name, df in good.items():
        pd.testing.assert_frame_equal(store.read_table(f"{name}.parquet"), df)
        assert os.path.getmtime(store.path(f"{name}.parquet")) == stamps[name]
    assert not [p for p in os.listdir(store.root) if p.startswith(".tmp-")]


def test_taobao_through_the_graph(tmp_path: Path, taobao_path: Path) -> None:
    s = get_settings(env_file=ROOT / "docs" / "config" / "taobao.env", storage_uri=str(tmp_path / "taobao"))
    s.event_log.paths = [str(taobao_path)]
    result = run(s)
    assert result.success
    meta = result.asset_materializations_for_node("clean")[0].metadata
    by_reason = meta["rejected_by_reason"].value
    assert by_reason["malformed_row"] == 1 and by_reason["timestamp_out_of_range"] > 0
    store = Storage.from_settings(s)
    rejected = store.read_table("rejected_events.parquet")
    assert set(rejected["reason"]) == {r for r, n in by_reason.items() if n}
    items = store.read_table("items.parquet")
    assert items["categories"].notna().all()


@pytest.mark.integration
def test_pipeline_command_records_runs_in_the_dagster_instance(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_STORAGE_URI": str(tmp_path / "data"), "RECSYS_DAGSTER_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_assets", "pipeline", "--budget", "smoke", "--models", "Pop"],
        cwd=ROOT,
        env=env | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SUCCESS" in proc.stdout and "eda_report.html" in proc.stdout and "evaluation_report.html" in proc.stdout
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "home"))) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
        for key in ("interactions", "model_candidates", "evaluation_report", "champion_model"):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None
    # what the console reads of the run and the registry, with no sensor running
    store = Storage.from_uri(env["RECSYS_STORAGE_URI"])
    health = store.read_table("pipeline_health.parquet")
    assert health["run_id"].tolist() == [runs[0].run_id] and health["status"].tolist() == ["SUCCESS"]
    registry = store.read_table("model_registry.parquet")
    assert "champion" in set(registry["registered_as"]) and registry["aliases"].str.contains("champion").any()


@pytest.mark.integration
def test_dagster_dev_serves_the_asset_graph(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"DAGSTER_HOME": str(tmp_path), "RECSYS_STORAGE_URI": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    query = json.dumps({"query": "{ assetNodes { assetKey { path } groupName } }"}).encode()
    try:
        deadline = time.monotonic() + 120
        nodes = None
        while time.monotonic() < deadline and nodes is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"}
                )
                body = json.loads(urllib.request.urlopen(req, timeout=5).read())
                nodes = body["data"]["assetNodes"] or None
            except (OSError, KeyError, TypeError):
                time.sleep(1)
        assert nodes, "dagster dev did not serve the asset graph in time"
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert keys >= INGESTION_ASSETS
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
