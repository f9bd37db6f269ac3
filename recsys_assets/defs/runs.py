"""What Dagster and MLflow know, written as tables the console reads (it imports neither).

- `pipeline_health`: one row per recent run (job, status, created, start, end, duration, what
  triggered it, the failure message). The success rate over the last runs is the pipeline's KPI
  (goal > 95%); the newest row is the console's "last pipeline run".
- `retrain_runs`: one row per run of the retrain job: trigger (`drift`, `schedule`, `manual`), the
  drift window that triggered it, outcome, whether a new champion was promoted, and why not.
- `model_registry`: every registered model version with its run's metrics and whether it was
  registered as champion or challenger (the console's registry history and previous champion).
- `reject_counts` and `reports/eda_summary.json`: the cleaning run's rejected rows per reason and the
  EDA report's key numbers, which otherwise live only in asset metadata.

The run-status sensors rewrite the first two after every run ends (`record(instance, store)`; the
command line's in-process run calls it too); the assets that produce the others call their writers.
Names and paths are in `recsys_assets.contract.events`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd
from dagster import DagsterEventType

from recsys_assets.contract.events import (
    EDA_SUMMARY,
    MODEL_REGISTRY,
    PIPELINE_HEALTH,
    REJECT_COUNTS,
    RETRAIN_RUNS,
)
from recsys_assets.contract.storage import Storage

if TYPE_CHECKING:
    from recsys_assets.lib.tracking import MlflowTracking

RETRAIN_JOB = "retrain_job"
PROMOTION_CHECK = "challenger_beats_baseline_and_champion"
CHAMPION_ASSET = "champion_model"
HISTORY = 200

# Run tags the sensors and schedules set (the Dagster UI shows them on every run).
TRIGGER_TAG = "recsys/trigger"
WINDOW_START_TAG = "recsys/window_start"
WINDOW_END_TAG = "recsys/window_end"
WINDOW_TAG = "recsys/window"

ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _ts(seconds: float | None) -> pd.Timestamp:
    return pd.Timestamp(seconds, unit="s", tz="UTC") if seconds else pd.NaT


def _trigger(tags: dict[str, str]) -> str:
    if TRIGGER_TAG in tags:
        return tags[TRIGGER_TAG]
    if "dagster/schedule_name" in tags:
        return "schedule"
    if "dagster/sensor_name" in tags:
        return "sensor"
    return "manual"


def _failure(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first step failure's message of a run (or the run failure's)."""
    for record in instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}):
        event = record.dagster_event
        if event is None:
            continue
        data = event.event_specific_data
        error = getattr(data, "error", None)
        # the user's exception, not Dagster's wrapper around it
        while error is not None and getattr(error, "cause", None) is not None:
            error = error.cause
        message = getattr(error, "message", None) or event.message or ""
        step = f"{event.step_key}: " if event.step_key else ""
        return (step + message.strip().splitlines()[0])[:300] if message.strip() else step.rstrip(": ")
    return ""


def pipeline_health(instance: dg.DagsterInstance, limit: int = HISTORY) -> pd.DataFrame:
    """The latest `limit` runs, newest first."""
    rows = []
    for rec in instance.get_run_records(limit=limit):
        run = rec.dagster_run
        tags = dict(run.tags)
        start, end = _ts(rec.start_time), _ts(rec.end_time)
        rows.append(
            {
                "run_id": run.run_id,
                "job": run.job_name,
                "status": run.status.value,
                "partition": tags.get("dagster/partition", ""),
                "trigger": _trigger(tags),
                "created_at": pd.Timestamp(rec.create_timestamp).tz_convert("UTC"),
                "start_time": start,
                "end_time": end,
                "duration_s": (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else float("nan"),
                "failure": _failure(instance, run.run_id) if run.status == dg.DagsterRunStatus.FAILURE else "",
            }
        )
    columns = [
        *("run_id", "job", "status", "partition", "trigger", "created_at", "start_time", "end_time"),
        *("duration_s", "failure"),
    ]
    return pd.DataFrame(rows, columns=columns)


def _promotion(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    """Whether a retrain promoted a new champion, which, and the promotion check's numbers."""
    out: dict[str, Any] = {"promoted": False, "champion_version": "", "reason": ""}
    records = instance.all_logs(
        run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}
    )
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            ev = event.event_specific_data
            if getattr(ev, "check_name", "") != PROMOTION_CHECK:
                continue
            md = {k: getattr(v, "value", v) for k, v in ev.metadata.items()}
            out["challenger"] = str(md.get("challenger", ""))
            out["challenger_ndcg@10"] = float(md.get("challenger_ndcg@10", float("nan")))
            out["champion_ndcg@10"] = float(md.get("current_champion_ndcg@10", float("nan")))
            if not ev.passed:
                out["reason"] = str(md.get("verdict", "the challenger did not pass the promotion check"))
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            mat = record.asset_materialization
            if mat is not None and mat.asset_key == dg.AssetKey(CHAMPION_ASSET):
                md = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
                if md.get("canary"):  # served to the canary share; `canary_sensor` decides the promotion
                    out["reason"] = f"canary opened for {md.get('model_version', '')}: promotion awaits users"
                else:
                    out["promoted"] = True
                    out["champion_version"] = str(md.get("model_version", ""))
    return out


def retrain_runs(instance: dg.DagsterInstance, limit: int = HISTORY) -> pd.DataFrame:
    """Every recent run of the retrain job, newest first."""
    rows = []
    for rec in instance.get_run_records(filters=dg.RunsFilter(job_name=RETRAIN_JOB), limit=limit):
        run = rec.dagster_run
        tags = dict(run.tags)
        start, end = _ts(rec.start_time), _ts(rec.end_time)
        row: dict[str, Any] = {
            "run_id": run.run_id,
            "status": run.status.value,
            "trigger": _trigger(tags),
            "window": tags.get(WINDOW_TAG, ""),
            "window_start": pd.Timestamp(tags[WINDOW_START_TAG]) if WINDOW_START_TAG in tags else pd.NaT,
            "window_end": pd.Timestamp(tags[WINDOW_END_TAG]) if WINDOW_END_TAG in tags else pd.NaT,
            "triggered_at": pd.Timestamp(rec.create_timestamp).tz_convert("UTC"),
            "started_at": start,
            "ended_at": end,
            "duration_s": (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else float("nan"),
        }
        row.update(_promotion(instance, run.run_id))
        if run.status == dg.DagsterRunStatus.FAILURE and not row["reason"]:
            row["reason"] = _failure(instance, run.run_id)
        rows.append(row)
    columns = [
        "run_id", "status", "trigger", "window", "window_start", "window_end", "triggered_at", "started_at",
        "ended_at", "duration_s", "promoted", "champion_version", "challenger", "challenger_ndcg@10",
        "champion_ndcg@10", "reason",
    ]  # fmt: skip
    df = pd.DataFrame(rows)
    for col in columns:
        if col not in df:
            df[col] = pd.Series(dtype="object")
    return df[columns]


def success_rate(health: pd.DataFrame, last: int = 20) -> float:
    """Share of successful runs among the last `last` ended runs (NaN when none ended)."""
    ended = health[health["status"].isin([s.value for s in ENDED])].head(last)
    return float((ended["status"] == dg.DagsterRunStatus.SUCCESS.value).mean()) if len(ended) else float("nan")


def record(instance: dg.DagsterInstance, store: Storage) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rewrite `pipeline_health` and `retrain_runs` from the run history."""
    health, retrains = pipeline_health(instance), retrain_runs(instance)
    store.write_table(health, f"{PIPELINE_HEALTH}.parquet")
    store.write_table(retrains, f"{RETRAIN_RUNS}.parquet")
    return health, retrains


def model_registry(tracking: MlflowTracking) -> pd.DataFrame:
    """Every registered version (`MlflowTracking.champion_history`), oldest first, with its run's name
    and `registered_as`: `champion` or `challenger`, as the promotion named the run."""
    history = tracking.champion_history()
    client = tracking.client()
    names: dict[str, str | None] = {}
    for run_id in history["run_id"].dropna().unique():
        try:
            names[run_id] = client.get_run(run_id).info.run_name
        except Exception:  # a deleted run: the version stays listed
            names[run_id] = None
    history["run_name"] = history["run_id"].map(names)
    # the promotion names each run "<model> (champion)" or "<model> (challenger)"
    history["registered_as"] = history["run_name"].fillna("").str.extract(r"\((champion|challenger)\)$")[0]
    return history


def write_model_registry(store: Storage, tracking: MlflowTracking) -> pd.DataFrame:
    """Rewrite `model_registry` from the MLflow registry (after the champion asset registered)."""
    history = model_registry(tracking)
    store.write_table(history, f"{MODEL_REGISTRY}.parquet")
    return history


def write_eda_summary(store: Storage, summary: Mapping[str, Any]) -> None:
    """The EDA report's key numbers (`eda_summary`) as JSON beside the report."""
    store.write_text(json.dumps(dict(summary), indent=2, default=str), *EDA_SUMMARY)


def write_reject_counts(store: Storage, counts: Mapping[str, int]) -> None:
    """Rows the cleaning run rejected, per reason (`reason`, `rows`), every reason it counted."""
    frame = pd.DataFrame({"reason": pd.Series(list(counts), dtype="string"), "rows": list(counts.values())})
    store.write_table(frame.astype({"rows": "int64"}), f"{REJECT_COUNTS}.parquet")


def active_retrain(instance: dg.DagsterInstance) -> str | None:
    """The id of a queued or running retrain, if any."""
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=RETRAIN_JOB, statuses=ACTIVE), limit=1)
    return records[0].dagster_run.run_id if records else None
