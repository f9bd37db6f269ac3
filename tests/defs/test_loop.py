"""The feedback loop: live windows from the API's log, the sensors, the retrain and promotion.

Unit tests drive the sensors with `build_sensor_context`; the integration test runs the real thing on a
persistent Dagster instance (temporary DAGSTER_HOME) with the API as a process: events posted to the
API become partitions, a shifted window is flagged by its drift report, the drift sensor requests one
retrain, the retrain promotes a new champion and the API serves it; a window like its reference
requests nothing; a worse challenger leaves the champion in place.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import pandas as pd
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._core.test_utils import create_run_for_test

from recsys_assets.contract.artifact import read_pointer
from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.defs.definitions import LIVE_WINDOW_JOB, PIPELINE_JOB, build_definitions
from recsys_assets.defs.monitoring import DRIFT_REPORT, LIVE_WINDOWS
from recsys_assets.lib import drift
from recsys_assets.lib import live_windows as live
from recsys_assets.lib.ingest import readers
from serving.eventlog import LOG_COLUMNS, encode_rows
from tests.api_support import ApiProcess

MINUTES = 5
NOW = dt.datetime(2026, 11, 27, 12, 7, 30, tzinfo=dt.UTC)


def write_segment(directory: Path, name: str, rows: list[tuple]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"events-{name}.csv"
    new = not path.exists()
    with path.open("ab") as fh:
        if new:
            fh.write(encode_rows([LOG_COLUMNS]))
        fh.write(encode_rows(rows))
    return path


def row(user: str, item: str, ts: dt.datetime, event_type: str = "view") -> tuple:
    return (user, item, event_type, ts.isoformat(), *[None] * (len(LOG_COLUMNS) - 4))


# ---------------------------------------------------------------------------------------------
# Windows and the live-events sensor
# ---------------------------------------------------------------------------------------------


def test_scan_requests_finished_windows_once_and_again_on_late_rows(tmp_path: Path) -> None:
    d = tmp_path / "events"
    write_segment(d, "a", [row("u1", "i1", NOW - dt.timedelta(minutes=6)), row("u2", "i2", NOW)])
    first = live.scan(d, live.ScanState(), NOW, MINUTES, grace_seconds=5)
    assert first.ready == ["2026-11-27T12:00"] and first.state.pending == ["2026-11-27T12:05"]
    # nothing new: nothing to do
    again = live.scan(d, first.state, NOW, MINUTES, grace_seconds=5)
    assert again.ready == [] and again.changed == []
    # the open window ends; a late row lands in the finished one
    later = NOW + dt.timedelta(minutes=5)
    write_segment(d, "a", [row("u3", "i3", NOW - dt.timedelta(minutes=7))])
    third = live.scan(d, again.state, later, MINUTES, grace_seconds=5)
    assert third.ready == ["2026-11-27T12:00", "2026-11-27T12:05"]
    assert third.signature != first.signature
    rows = live.read_window(d, "2026-11-27T12:00", MINUTES)
    assert sorted(rows["user_id"]) == ["u1", "u3"]


def test_a_torn_last_line_stays_in_its_window_and_is_rejected_by_cleaning(tmp_path: Path, settings: Settings) -> None:
    d = tmp_path / "events"
    path = write_segment(d, "a", [row("u1", "i1", NOW - dt.timedelta(minutes=6))])
    with path.open("ab") as fh:
        fh.write(b'u2,i2,view,"2026-11-27T12:0')  # a write cut by a crash
    rows = live.read_window(d, "2026-11-27T12:00", MINUTES)
    assert len(rows) == 2 and rows["raw_line"].notna().sum() == 1
    from recsys_assets.lib.ingest.cleaning import clean_events

    result = clean_events(rows[list(readers.RAW_COLUMNS)], settings.cleaning())
    assert len(result.interactions) == 1 and result.reject_counts["malformed_row"] == 1


def test_a_segment_written_before_the_policy_columns_still_reads(tmp_path: Path) -> None:
    # an API upgraded mid-window: its old process's segment has the 9 columns of before, the new one 11
    d = tmp_path / "events"
    old = LOG_COLUMNS[: LOG_COLUMNS.index("policy")]
    d.mkdir()
    when = (NOW - dt.timedelta(minutes=6)).isoformat()
    (d / "events-old.csv").write_bytes(encode_rows([old]) + encode_rows([("u1", "i1", "view", when, *[None] * 5)]))
    write_segment(d, "new", [row("u2", "i2", NOW - dt.timedelta(minutes=6))])
    scanned = live.scan(d, live.ScanState(), NOW, MINUTES, grace_seconds=5)
    assert scanned.ready == ["2026-11-27T12:00"]
    rows = live.read_window(d, "2026-11-27T12:00", MINUTES)
    assert sorted(rows["user_id"]) == ["u1", "u2"] and rows["policy"].isna().all()


def loop_settings(settings: Settings, tmp_path: Path, **extra) -> Settings:
    return settings.model_copy(
        update={"events_dir": str(tmp_path / "events"), "drift_window_minutes": MINUTES, **extra}
    )


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorEvaluationContext:
    """A sensor tick's context with the resource the sensors read, the settings (the daemon gives them every
    resource of the code location)."""
    resources = {"settings": (defs.resources or {})["settings"]}
    return dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)


def test_live_events_sensor_adds_partitions_and_requests_runs(tmp_path: Path, settings: Settings) -> None:
    s = loop_settings(settings, tmp_path, drift_window_grace_seconds=0)
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3 * MINUTES)
    write_segment(tmp_path / "events", "a", [row("u1", "i1", recent), row("u2", "i1", recent)])
    defs = build_definitions(s)
    sensor = defs.get_sensor_def("live_events_sensor")
    with dg.instance_for_test() as instance:
        result = sensor(tick(defs, instance))
        key = live.window_key(pd.Timestamp(recent).floor(f"{MINUTES}min"))
        assert [r.partition_key for r in result.run_requests] == [key]
        assert result.run_requests[0].run_key.startswith(f"live:{key}:")
        assert result.run_requests[0].tags[runs.TRIGGER_TAG] == "new_events"
        assert result.dynamic_partitions_requests[0].partition_keys == [key]
        # the next tick with the same cursor has nothing to do
        nothing = sensor(tick(defs, instance, result.cursor))
        assert isinstance(nothing, dg.SkipReason)


def test_drift_retrain_sensor_one_run_per_drifted_window(tmp_path: Path, settings: Settings) -> None:
    s = loop_settings(settings, tmp_path)
    defs = build_definitions(s)
    sensor = defs.get_sensor_def("drift_retrain_sensor")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LIVE_WINDOWS.name, ["2026-11-27T12:00", "2026-11-27T12:05"])
        for key, retrain in (("2026-11-27T12:00", False), ("2026-11-27T12:05", True)):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(DRIFT_REPORT, partition=key, metadata={"retrain": retrain, "reasons": "x"})
            )
        result = sensor(tick(defs, instance))
        assert [r.run_key for r in result.run_requests] == ["drift:2026-11-27T12:05"]
        tags = result.run_requests[0].tags
        assert tags[runs.TRIGGER_TAG] == "drift" and tags[runs.WINDOW_TAG] == "2026-11-27T12:05"
        assert tags[runs.WINDOW_END_TAG] == "2026-11-27T12:10:00+00:00"
        # a new tick sees no new verdict
        again = sensor(tick(defs, instance, result.cursor))
        assert not again.run_requests
        # while a retrain runs, a further drifted window is left to it
        create_run_for_test(instance, job_name=runs.RETRAIN_JOB, status=dg.DagsterRunStatus.STARTED)
        instance.add_dynamic_partitions(LIVE_WINDOWS.name, ["2026-11-27T12:10"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization(DRIFT_REPORT, partition="2026-11-27T12:10", metadata={"retrain": True})
        )
        busy = sensor(tick(defs, instance, again.cursor))
        assert not busy.run_requests


def test_weekly_schedule_and_sensors_start_with_the_daemon(settings: Settings) -> None:
    defs = build_definitions(settings)
    schedule = defs.get_schedule_def("weekly_retrain_schedule")
    assert schedule.cron_schedule == settings.retrain_cron and schedule.job_name == runs.RETRAIN_JOB
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    names = {"live_events_sensor", "drift_retrain_sensor", "pipeline_failure_sensor", "pipeline_success_sensor"}
    names |= {"champion_alias_sensor", "canary_sensor"}
    for name in names:
        assert defs.get_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_pipeline_health_counts_runs_and_failures(tmp_path: Path) -> None:
    @dg.op
    def ok() -> None:
        pass

    @dg.op
    def boom() -> None:
        raise ValueError("storage unreachable")

    @dg.job
    def good_job() -> None:
        ok()

    @dg.job
    def bad_job() -> None:
        boom()

    with dg.instance_for_test() as instance:
        for _ in range(3):
            assert good_job.execute_in_process(instance=instance).success
        assert not bad_job.execute_in_process(instance=instance, raise_on_error=False).success
        store = Storage.from_uri(str(tmp_path / "data"))
        health, retrains = runs.record(instance, store)
    assert len(health) == 4 and runs.success_rate(health) == 0.75
    failed = health[health["status"] == "FAILURE"].iloc[0]
    assert failed["job"] == "bad_job" and "storage unreachable" in failed["failure"]
    assert (health["duration_s"] >= 0).all()
    # newest first, as the console's "last pipeline run" takes it
    assert health["created_at"].is_monotonic_decreasing and health["created_at"].notna().all()
    assert retrains.empty and store.exists("pipeline_health.parquet") and store.exists("retrain_runs.parquet")


# ---------------------------------------------------------------------------------------------
# The loop on a real instance, with the API as a process
# ---------------------------------------------------------------------------------------------


def _events(frame: pd.DataFrame, start: dt.datetime, prefix: str) -> list[dict]:
    step = (MINUTES * 60 - 30) / max(1, len(frame))
    return [
        {
            "user_id": str(r.user_id),
            "item_id": str(r.item_id),
            "event_type": "rating",
            "value": float(r.value),
            "timestamp": (start + dt.timedelta(seconds=10 + i * step)).isoformat(),
            "event_id": f"{prefix}-{i}",
        }
        for i, r in enumerate(frame.itertuples())
    ]


def _post(api: ApiProcess, events: list[dict]) -> None:
    for i in range(0, len(events), 500):
        resp = httpx.post(f"{api.url}/v1/events", json=events[i : i + 500], headers={"X-API-Key": "k"}, timeout=30)
        assert resp.status_code == 202, resp.text


def _materialize_windows(defs: dg.Definitions, instance: dg.DagsterInstance, cursors: dict) -> list[str]:
    """One tick of the live-events sensor (its cursor kept in `cursors`, with each window's `no_drift`
    check evaluation), then the runs it requests."""
    sensor = defs.get_sensor_def("live_events_sensor")
    result = sensor(tick(defs, instance, cursors.get("live")))
    assert not isinstance(result, dg.SkipReason), result
    cursors["live"] = result.cursor
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(LIVE_WINDOWS.name, list(request.partition_keys))
    job = defs.resolve_job_def(LIVE_WINDOW_JOB)
    for request in result.run_requests:
        outcome = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
        assert outcome.success
        for ev in outcome.get_asset_check_evaluations():
            cursors[f"check:{request.partition_key}"] = ev
    return [r.partition_key for r in result.run_requests]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory):
    """A champion trained by the pipeline on MovieLens-100k, an instance and the API serving it."""
    tmp = tmp_path_factory.mktemp("loop")
    settings = get_settings(
        storage_uri=str(tmp / "data"),
        dagster_home=str(tmp / "dagster"),
        events_dir=str(tmp / "events"),
        drift_window_minutes=MINUTES,
        drift_window_grace_seconds=0,
        retrain_models=["Pop", "EASE"],
        retrain_budget="smoke",
        drift_min_rows=100,
    )
    defs = build_definitions(settings)
    (tmp / "dagster").mkdir()
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp / "dagster"))) as instance:
        job = defs.resolve_job_def(PIPELINE_JOB)
        config = {"budget": "smoke", "models": ["Pop", "EASE"], "protocols": ["temporal"]}
        assert job.execute_in_process(
            instance=instance, run_config={"ops": {"model_candidates": {"config": config}}}
        ).success
        env = {
            "RECSYS_STORAGE_URI": settings.storage_uri,
            "RECSYS_EVENTS_DIR": settings.events_dir,
            "RECSYS_API_KEYS": "k",
            "RECSYS_REDIS_URL": "",
            "RECSYS_MODEL_POLL_SECONDS": "0.5",
            "RECSYS_CACHE_TTL_SECONDS": "0",
        }
        api = ApiProcess(env, tmp / "api.log").start()
        try:
            yield settings, defs, instance, api
        finally:
            api.stop()


def _served_version(api: ApiProcess) -> str:
    """The champion the API serves (after a promotion the previous one keeps a holdout share of users, so a
    given user's list may come from either)."""
    resp = httpx.get(f"{api.url}/v1/users/1/recommendations?k=5", timeout=10)
    assert resp.status_code == 200, resp.text
    ready = httpx.get(f"{api.url}/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    return ready.json()["model_version"]


@pytest.mark.integration
def test_drift_retrains_and_the_api_serves_the_new_champion(loop) -> None:
    settings, defs, instance, api = loop
    store = Storage.from_settings(settings)
    before = read_pointer(store)
    assert _served_version(api) == before["model_version"]
    inter = store.read_table("interactions.parquet")
    rng = np.random.default_rng(0)
    # two windows drawn alike from the recent log (the reference and a quiet window), then a new
    # population on the long tail of the catalogue
    recent = inter.tail(20_000)
    pool = recent.sample(1200, random_state=1)
    quiet_a, quiet_b = pool.iloc[:600], pool.iloc[600:]
    counts = inter["item_id"].value_counts()
    tail = counts[counts <= 5].index.to_numpy()
    shifted = pd.DataFrame(
        {
            "user_id": [f"newcomer-{i % 150}" for i in range(600)],
            "item_id": rng.choice(tail, 600),
            "value": rng.integers(3, 6, 600).astype(float),
        }
    )
    base = pd.Timestamp(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=4 * MINUTES)).floor(f"{MINUTES}min")
    starts = [(base + pd.Timedelta(minutes=MINUTES * i)).to_pydatetime() for i in range(3)]
    _post(api, _events(quiet_a, starts[0], "a") + _events(quiet_b, starts[1], "b"))
    cursors: dict = {}

    # no drift: the quiet window against its reference requests nothing
    windows = _materialize_windows(defs, instance, cursors)
    assert windows == [live.window_key(s) for s in starts[:2]]
    retrain_sensor = defs.get_sensor_def("drift_retrain_sensor")
    quiet = retrain_sensor(tick(defs, instance))
    assert not quiet.run_requests
    results = store.read_table("drift_results.parquet")
    assert set(results["window"]) == set(windows)
    assert not results["window_drifted"].any()

    # the shift: flagged, one retrain requested for its window
    _post(api, _events(shifted, starts[2], "c"))
    assert _materialize_windows(defs, instance, cursors) == [live.window_key(starts[2])]
    report = instance.get_latest_materialization_event(dg.AssetKey(DRIFT_REPORT)).asset_materialization
    assert report.partition == live.window_key(starts[2]) and report.metadata["drifted"].value is True
    drifted = set(report.metadata["drifted_metrics"].value)
    assert {"new_user", "user_history"} & drifted and "item_popularity" in drifted
    # the verdict is also the `no_drift` check's, with every score in its metadata
    check = cursors[f"check:{report.partition}"]
    assert check.check_name == "no_drift" and not check.passed
    scores = check.metadata["scores"].value
    assert max(scores["new_user"], scores["user_history"]) >= settings.drift_threshold
    assert all(cursors[f"check:{w}"].passed for w in windows)
    page = store.read_bytes("drift", live.file_key(report.partition), "report.html").decode()
    # Evidently's renderer is stored once beside the windows' reports, not in each
    (renderer,) = drift.renderer_scripts()
    assert f'src="../lib/{renderer}"' in page and len(page) < 1_000_000
    assert len(store.read_bytes("drift", "lib", renderer)) > 1_000_000
    request = retrain_sensor(tick(defs, instance, quiet.cursor))
    assert [r.run_key for r in request.run_requests] == [f"drift:{live.window_key(starts[2])}"]

    # the retrain: live events in the interactions, a new champion, served after hot reload
    retrain = defs.resolve_job_def(runs.RETRAIN_JOB)
    result = retrain.execute_in_process(instance=instance, tags=request.run_requests[0].tags, raise_on_error=False)
    assert result.success, [
        (e.message, getattr(e.event_specific_data, "error", None), getattr(e.event_specific_data, "metadata", None))
        for e in result.all_events
        if e.event_type_value in ("STEP_FAILURE", "ASSET_CHECK_EVALUATION")
    ]
    after = read_pointer(store)
    assert after["model_version"] != before["model_version"]
    interactions = store.read_table("interactions.parquet")
    assert interactions["event_id"].astype(str).str.startswith("c-").sum() == 600
    deadline = time.monotonic() + 30
    while _served_version(api) != after["model_version"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _served_version(api) == after["model_version"]
    retrains = runs.record(instance, store)[1]
    last = retrains.iloc[0]
    assert last["trigger"] == "drift" and last["window"] == live.window_key(starts[2])
    assert bool(last["promoted"]) and last["champion_version"] == after["model_version"]


@pytest.mark.integration
def test_a_worse_retrain_leaves_the_champion_serving(loop) -> None:
    settings, defs, instance, api = loop
    store = Storage.from_settings(settings)
    before = read_pointer(store)
    retrain = defs.resolve_job_def(runs.RETRAIN_JOB)
    # popularity only: loses to the serving champion
    config = {"budget": "smoke", "models": ["Pop"], "native_models": [], "protocols": ["temporal"]}
    result = retrain.execute_in_process(
        instance=instance,
        run_config={"ops": {"model_candidates": {"config": config}}},
        tags={runs.TRIGGER_TAG: "manual"},
        raise_on_error=False,
    )
    checks = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.asset_check_key.name == runs.PROMOTION_CHECK
    ]
    assert len(checks) == 1 and not checks[0].passed
    assert "<" in checks[0].metadata["verdict"].value
    assert read_pointer(store) == before and _served_version(api) == before["model_version"]
    last = runs.record(instance, store)[1].iloc[0]
    assert not bool(last["promoted"]) and "<" in last["reason"]
    pointer = json.loads(store.read_bytes("artifacts", "CHAMPION.json"))
    assert pointer["model_version"] == before["model_version"]


@pytest.mark.integration
def test_live_windows_go_to_blob(tmp_path: Path, azurite: str) -> None:
    s = get_settings(
        storage_uri="abfs://recsys/loop",
        azure_connection_string=azurite,
        events_dir=str(tmp_path / "events"),
        drift_window_minutes=MINUTES,
    )
    write_segment(tmp_path / "events", "a", [row("u1", "1", NOW - dt.timedelta(minutes=6)), row("u2", "2", NOW)])
    defs = build_definitions(s)
    key = "2026-11-27T12:00"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LIVE_WINDOWS.name, [key])
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=instance, partition_key=key, asset_selection=[dg.AssetKey(live.LIVE_EVENTS)]
        )
        assert result.success
    store = Storage.from_settings(s)
    assert store.uri(live.LIVE_EVENTS).startswith("abfs://")
    assert live.stored_windows(store) == [key]
    rows = live.read_live_events(store)
    assert list(rows["user_id"]) == ["u1"] and list(rows.columns) == list(readers.RAW_COLUMNS)


def test_live_rows_take_the_unit_of_a_log_in_unix_seconds(tmp_path: Path, settings: Settings) -> None:
    store = Storage.from_uri(str(tmp_path / "data"))
    frame = readers.empty(live.LIVE_COLUMNS).astype("string")
    frame.loc[0] = pd.Series({"user_id": "u", "item_id": "i", "event_type": "view", "timestamp": NOW.isoformat()})
    store.write_table(frame, live.LIVE_EVENTS, "2026-11-27T1205.parquet")
    seconds = live.read_live_events(store, unit="s")
    assert float(seconds["timestamp"].iloc[0]) == NOW.timestamp()
    from recsys_assets.lib.ingest.cleaning import clean_events

    # cleaned with the source's unit, the live row is kept, not rejected as unparseable
    assert len(clean_events(seconds, settings.cleaning(), unit="s").interactions) == 1
    assert live.read_live_events(store)["timestamp"].iloc[0] == NOW.isoformat()


def test_failure_sensor_records_a_failed_run(settings: Settings) -> None:
    @dg.op
    def boom() -> None:
        raise OSError("blob timeout")

    @dg.job
    def flaky_job() -> None:
        boom()

    defs = build_definitions(settings)
    sensor = defs.get_sensor_def("pipeline_failure_sensor")
    with dg.instance_for_test() as instance:
        result = flaky_job.execute_in_process(instance=instance, raise_on_error=False)
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"settings": settings},
        ).for_run_failure()
        sensor(context)
    health = Storage.from_settings(settings).read_table("pipeline_health.parquet")
    row = health.iloc[0]
    assert row["job"] == "flaky_job" and row["status"] == "FAILURE" and "blob timeout" in row["failure"]


def test_steps_that_touch_storage_retry_with_backoff(settings: Settings) -> None:
    defs = build_definitions(settings)
    for key in ("raw_events", "interactions", "eda_report", "live_events", "drift_report", "champion_model"):
        policy = defs.get_assets_def(key).op.retry_policy
        assert policy is not None and policy.max_retries == 3, key
        assert policy.backoff == dg.Backoff.EXPONENTIAL, key
    # bad input is not retried: the step fails at once (its Failure says allow_retries=False)
    candidates = defs.get_assets_def("model_candidates").node_def  # a graph: one step per model
    assert all(op.retry_policy is None for op in candidates.iterate_op_defs())


def test_the_instance_runs_training_and_live_windows_one_at_a_time(tmp_path: Path, settings: Settings) -> None:
    from recsys_assets.tools.services import instance_yaml

    (tmp_path / "dagster.yaml").write_text(instance_yaml(settings))
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {(lim["value"], lim["limit"]) for lim in limits} == {("training", 1), ("live_windows", 1)}
    defs = build_definitions(settings)
    assert defs.resolve_job_def(LIVE_WINDOW_JOB).tags["recsys/exclusive"] == "live_windows"
    assert defs.resolve_job_def(runs.RETRAIN_JOB).tags["recsys/exclusive"] == "training"
