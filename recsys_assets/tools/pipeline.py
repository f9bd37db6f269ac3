"""The pipeline run once in this process (`python -m recsys_assets pipeline|tune`, the demo's and the
replay's training on the past), in the persistent Dagster instance so its runs show in the Dagster UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_assets.contract.settings import Settings
from recsys_assets.tools.services import open_instance

PROMOTION_CHECK_STEP = "challenger_model_challenger_beats_baseline_and_champion"


def run_pipeline(settings: Settings, candidates: dict | None = None, job_name: str | None = None) -> bool:
    """Materialize every asset and run every check once; print where the results are. True on success,
    and when the only failure is the promotion check refusing the challenger (the champion stays)."""
    from recsys_assets.contract.storage import Storage
    from recsys_assets.defs import runs
    from recsys_assets.defs.definitions import INGESTION_JOB, PIPELINE_JOB, build_definitions

    defs = build_definitions(settings)
    job = defs.resolve_job_def(job_name or PIPELINE_JOB)
    with open_instance(settings) as instance:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={
                "loggers": {"console": {"config": {"log_level": "INFO"}}},
                "ops": {"model_candidates": {"config": candidates or {}}} if job_name in (None, PIPELINE_JOB) else {},
            },
        )
        # no run-status sensor sees an in-process run: record it as they do, for the console
        runs.record(instance, Storage.from_settings(settings))
    print()
    home = Path(settings.dagster_home).resolve()
    print(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'} (Dagster home {home})")
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            print(f"  materialized {event.asset_key.to_user_string()}")
            if event.asset_key.to_user_string() == "interactions":
                _print_counts(event.event_specific_data.materialization.metadata)
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            outcome = "passed" if ev.passed else "FAILED" if ev.severity.value == "ERROR" else "warning"
            print(f"  check {ev.asset_check_key.name}: {outcome}")
            if not ev.passed and ev.description:
                print(f"    {ev.description}")
        elif event.event_type_value == "STEP_FAILURE":
            print(f"  step {event.step_key} FAILED: {event.event_specific_data.error.message.strip()}")
    _print_locations(settings, training=job_name != INGESTION_JOB)
    failed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
    if failed == {PROMOTION_CHECK_STEP}:
        # a challenger that loses is an outcome, not an error: the champion keeps serving
        print("promotion refused by the blocking check: the current champion stays (see the check's metadata)")
        return True
    return bool(result.success)


def _print_counts(metadata: dict) -> None:
    """The row counts of the cleaning step: raw rows, interactions, rejects by reason, duplicates."""

    def value(key: str) -> Any:
        entry = metadata.get(key)
        return getattr(entry, "value", entry)

    by_reason = value("rejected_by_reason") or {}
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items(), key=lambda kv: -kv[1]) if n) or "none"
    print(
        f"    {value('raw_rows')} raw rows -> {value('rows')} interactions "
        f"({value('n_users')} users, {value('n_items')} items); {value('rejected_rows')} rejected ({reasons}); "
        f"{value('duplicates_dropped')} duplicates dropped"
    )
    if value("ingestion"):  # daily ingestion: what this run read and the days it wrote
        print(
            f"    {value('ingestion')} ({value('reason')}): {value('new_raw_rows')} new raw rows, "
            f"days written {', '.join(value('days_written')) or 'none'}"
        )
    from recsys_assets.defs.ingestion import TIME_MODE_NOTES

    if value("time_mode") in TIME_MODE_NOTES:
        print(f"    time: {TIME_MODE_NOTES[value('time_mode')]}")


def _print_locations(settings: Settings, training: bool = True) -> None:
    from recsys_assets.contract.storage import Storage

    store = Storage.from_settings(settings)
    print(f"tables under {store.uri()}")
    print(f"EDA report: {store.uri('reports', 'eda_report.html')}")
    if training:
        print(f"evaluation report: {store.uri('reports', 'evaluation_report.html')}")
        print(f"MLflow tracking: {settings.mlflow_store().tracking_uri}")
