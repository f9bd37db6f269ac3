"""Daily ingestion through the Dagster graph (issue 16): `raw_sources` reads only the new day's file, `clean`
merges it into the day partitions, and the stored `interactions` table equals a full ingestion's."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import ingestion
from recsys_assets.defs.resources import build_resources
from tests.lib.test_daily_ingestion import same_rows, write_day


def ingest(settings: Settings) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [ingestion.raw_sources, ingestion.clean], resources=build_resources(settings), raise_on_error=False
    )


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.event_specific_data.error.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def test_daily_runs_store_what_a_full_run_stores(tmp_path: Path, settings: Settings) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    log = {"paths": [str(logs / "events-*.csv")], "timestamp_unit": "s"}
    common = {"source": "event_log", "event_log": log, "time_max": "2026-01-01T00:00:00Z"}
    daily_settings = get_settings(storage_uri=str(tmp_path / "daily"), ingestion={"mode": "daily"}, **common)
    for day in range(3):
        write_day(logs, day)
        result = ingest(daily_settings)
        assert result.success, failures(result)
        raw = result.output_for_node("raw_sources", "raw_events")
        assert set(raw["source_file"]) == {str(logs / f"events-{day:02d}.csv")}
        meta = result.asset_materializations_for_node("clean")[0].metadata
        assert meta["ingestion"].value == ("full re-ingest" if day == 0 else "daily")
        assert meta["days_written"].value == [f"2025-03-0{day + 1}"]
    full_settings = get_settings(storage_uri=str(tmp_path / "full"), **common)
    assert ingest(full_settings).success
    daily_table = Storage.from_settings(daily_settings).read_table("interactions.parquet")
    full_table = Storage.from_settings(full_settings).read_table("interactions.parquet")
    same_rows(daily_table, full_table)
    pd.testing.assert_frame_equal(daily_table, full_table)  # the same order too
    assert Storage.from_settings(daily_settings).list("interactions")[:3] == [
        "interactions/_manifest.json",
        "interactions/_rejected.parquet",
        "interactions/day=2025-03-01/part.parquet",
    ]

    # nothing new: nothing read, the same table
    result = ingest(daily_settings)
    assert result.success and len(result.output_for_node("raw_sources", "raw_events")) == 0
    same_rows(Storage.from_settings(daily_settings).read_table("interactions.parquet"), full_table)


def test_daily_mode_refuses_movielens_before_storing_anything(settings: Settings) -> None:
    s = settings.model_copy(update={"ingestion": settings.ingestion.model_copy(update={"mode": "daily"})})
    result = ingest(s)
    assert not result.success
    assert "RECSYS_INGESTION__MODE=full" in failures(result)[0]
    assert Storage.from_settings(s).list("interactions") == []


def test_the_daily_schedule_exists_with_daily_ingestion_only(settings: Settings) -> None:
    from recsys_assets.defs.definitions import INGESTION_JOB, build_definitions

    daily = settings.model_copy(update={"ingestion": settings.ingestion.model_copy(update={"mode": "daily"})})
    schedule = build_definitions(daily).resolve_schedule_def("daily_ingestion_schedule")
    assert schedule.job_name == INGESTION_JOB and schedule.cron_schedule == "30 0 * * *"
    # queued one at a time with the batch jobs, which write the same partitions
    assert build_definitions(daily).resolve_job_def(INGESTION_JOB).tags["recsys/exclusive"] == "training"
    names = [s.name for s in build_definitions(settings).schedules or []]
    assert names == ["weekly_retrain_schedule"]
