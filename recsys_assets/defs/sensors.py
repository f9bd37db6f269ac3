"""Sensors that close the loop; all start running with the Dagster daemon.

- `live_events_sensor`: finds event-log segments that grew, adds a `live_events` partition for each
  window that is over, and requests `live_window_job` for it (live events, then its drift report).
- `drift_retrain_sensor`: reads each new `drift_report` materialization; when it says `retrain`,
  requests `retrain_job` with `run_key` `drift:<window>`, so one drifted window makes one run.
  While a retrain is queued or running, a new verdict is noted and left to that run.
- `champion_alias_sensor`: when the MLflow registry's `champion` alias was moved outside the pipeline
  (the MLflow UI), rewrites `artifacts/CHAMPION.json`, the API's cache of it, and records the change.
- `canary_sensor`: looks at the open canary or holdout (`lib/canary.py`) in the API's event log, with the
  always-valid sequential test, and promotes, withdraws, rolls back or ends it; each verdict is recorded in
  `promotion_decisions`.
- `pipeline_failure_sensor` / `pipeline_success_sensor`: after every run, rewrite the
  `pipeline_health` and `retrain_runs` tables the console reads; a failure is also logged with its
  step and message.

The evaluation functions are plain top-level functions; `build_sensors` makes them sensors, because
how often they are evaluated (`drift_sensor_seconds`) is a setting.
"""

import datetime as dt
import json

import dagster as dg

from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.defs.jobs import LIVE_WINDOW_JOB, PIPELINE_JOB
from recsys_assets.defs.monitoring import DRIFT_REPORT, LIVE_WINDOWS
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.lib import canary as gate
from recsys_assets.lib import champion as registry
from recsys_assets.lib import live_windows as live


def live_events_sensor(
    context: dg.SensorEvaluationContext, settings: dg.ResourceParam[Settings]
) -> dg.SensorResult | dg.SkipReason:
    minutes = settings.drift_window_minutes
    directory = settings.events_path()
    state = live.ScanState.from_json(json.loads(context.cursor) if context.cursor else None)
    result = live.scan(directory, state, dt.datetime.now(dt.UTC), minutes, settings.drift_window_grace_seconds)
    cursor = json.dumps(result.state.to_json())
    if not result.ready:
        waiting = f"; waiting for {result.state.pending} to end" if result.state.pending else ""
        context.update_cursor(cursor)
        return dg.SkipReason(f"no finished window with new events in {directory}{waiting}")
    known = set(context.instance.get_dynamic_partitions(LIVE_WINDOWS.name))
    new = [k for k in result.ready if k not in known]
    requests = []
    for key in result.ready:
        requests.append(
            dg.RunRequest(
                partition_key=key,
                # late rows for a window already requested change the signature: one more run
                run_key=f"live:{key}:{result.signature}",
                tags=window_tags(key, minutes, "new_events"),
            )
        )
    context.log.info(f"windows {result.ready} ready ({len(new)} new); segments read: {result.changed}")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[LIVE_WINDOWS.build_add_request(new)] if new else [],
        cursor=cursor,
    )


def drift_retrain_sensor(context: dg.SensorEvaluationContext, settings: dg.ResourceParam[Settings]) -> dg.SensorResult:
    records = context.instance.fetch_materializations(
        dg.AssetKey(DRIFT_REPORT), limit=100, cursor=context.cursor or None, ascending=True
    )
    requests = []
    # one query a tick: a window that drifts while a retrain is queued or running is left to it
    active = runs.active_retrain(context.instance)
    for record in records.records:
        mat = record.asset_materialization
        if mat is None or not _value(mat.metadata.get("retrain")):
            continue
        key = mat.partition or ""
        if active is not None or requests:
            context.log.info(f"window {key} drifted; retrain {active or 'requested this tick'} already covers it")
            continue
        reasons = str(_value(mat.metadata.get("reasons")) or "")
        context.log.info(f"window {key} drifted: requesting a retrain\n{reasons}")
        requests.append(
            dg.RunRequest(run_key=f"drift:{key}", tags=window_tags(key, settings.drift_window_minutes, "drift"))
        )
    return dg.SensorResult(run_requests=requests, cursor=records.cursor if records.records else context.cursor)


def champion_alias_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource, mlflow: MlflowResource
) -> dg.SkipReason:
    for job in (PIPELINE_JOB, runs.RETRAIN_JOB):
        # a promotion in progress moves the alias and then writes the pointer and records the change itself
        if context.instance.get_run_records(filters=dg.RunsFilter(job_name=job, statuses=runs.ACTIVE), limit=1):
            return dg.SkipReason(f"a {job} run is in progress; its promotion updates the pointer")
    store = storage.get()
    change = registry.sync_champion(mlflow.tracker(), store)
    if change is None:
        return dg.SkipReason("the champion pointer matches the registry's `champion` alias")
    runs.write_model_registry(store, mlflow.tracker())  # its "aliases now" column
    context.log.info(f"the `champion` alias moved: {change}")
    return dg.SkipReason(f"pointer now at registry version {change['to_version']} ({change['to_model']})")


def canary_sensor(
    context: dg.SensorEvaluationContext,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.SkipReason:
    store = storage.get()
    if gate.read_state(store) is None:
        return dg.SkipReason("no canary or holdout is open")
    for job in (PIPELINE_JOB, runs.RETRAIN_JOB):
        # a promotion in progress may open another canary: its run decides first
        if context.instance.get_run_records(filters=dg.RunsFilter(job_name=job, statuses=runs.ACTIVE), limit=1):
            return dg.SkipReason(f"a {job} run is in progress; the gate looks again after it")
    outcome = gate.step(mlflow.tracker(), store, settings.canary, settings.events_path())
    if outcome is None:
        return dg.SkipReason("no canary or holdout is open")
    if outcome.verdict != "continue":
        runs.write_model_registry(store, mlflow.tracker())
        context.log.info(f"canary gate: {outcome.action}; {outcome.reason}")
    return dg.SkipReason(f"{outcome.verdict}: {outcome.action}; {outcome.reason}"[:1000])


def pipeline_failure_sensor(context: dg.RunFailureSensorContext, settings: dg.ResourceParam[Settings]) -> None:
    run = context.dagster_run
    message = context.failure_event.message or ""
    context.log.warning(f"run {run.run_id} of {run.job_name} failed: {message}")
    health, _ = runs.record(context.instance, Storage.from_settings(settings))
    context.log.info(f"pipeline success rate (last 20 runs): {runs.success_rate(health):.1%}")


def pipeline_success_sensor(context: dg.RunStatusSensorContext, settings: dg.ResourceParam[Settings]) -> None:
    health, _ = runs.record(context.instance, Storage.from_settings(settings))
    context.log.info(f"pipeline success rate (last 20 runs): {runs.success_rate(health):.1%}")


def build_sensors(interval: int) -> list[dg.SensorDefinition]:
    """The sensors, each evaluated every `interval` seconds, running from the daemon's start."""
    running = dg.DefaultSensorStatus.RUNNING
    return [
        dg.sensor(
            job_name=LIVE_WINDOW_JOB,
            minimum_interval_seconds=interval,
            default_status=running,
            description="Turns the API's event-log segments into `live_events` partitions, one per finished window.",
        )(live_events_sensor),
        dg.sensor(
            job_name=runs.RETRAIN_JOB,
            minimum_interval_seconds=interval,
            default_status=running,
            description="Requests a retrain when a window's drift report says `retrain` (drift detected, or "
            "online CTR / the champion's NDCG@10 below its floor).",
        )(drift_retrain_sensor),
        dg.sensor(
            minimum_interval_seconds=interval,
            default_status=running,
            description="Follows the MLflow registry's `champion` alias: when it was moved outside the pipeline "
            "(the MLflow UI), rewrites `artifacts/CHAMPION.json`, which the API serves from, and records the change.",
        )(champion_alias_sensor),
        dg.sensor(
            minimum_interval_seconds=interval,
            default_status=running,
            description="The canary gate: promotes a canary, withdraws it, or rolls back a new champion during "
            "its holdout, on an always-valid sequential test of both arms' CTR and conversion in the event log.",
        )(canary_sensor),
        dg.run_failure_sensor(
            minimum_interval_seconds=interval,
            default_status=running,
            description="Records every failed run (step and message) in `pipeline_health` and `retrain_runs`.",
        )(pipeline_failure_sensor),
        dg.run_status_sensor(
            run_status=dg.DagsterRunStatus.SUCCESS,
            minimum_interval_seconds=interval,
            default_status=running,
            description="Refreshes `pipeline_health` and `retrain_runs` after every successful run.",
        )(pipeline_success_sensor),
    ]


def window_tags(key: str, minutes: int, trigger: str) -> dict[str, str]:
    """The tags of a run about one window: what triggered it and the window's bounds."""
    start, end = live.window_bounds(key, minutes)
    return {
        runs.TRIGGER_TAG: trigger,
        runs.WINDOW_TAG: key,
        runs.WINDOW_START_TAG: start.isoformat(),
        runs.WINDOW_END_TAG: end.isoformat(),
    }


def _value(meta: object) -> object:
    return getattr(meta, "value", meta)
