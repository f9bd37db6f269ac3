"""Sensors and schedules that close the loop; all start running with the Dagster daemon.

- `live_events_sensor`: finds event-log segments that grew, adds a `live_events` partition for each
  window that is over, and requests `live_window_job` for it (live events, then its drift report).
- `drift_retrain_sensor`: reads each new `drift_report` materialization; when it says `retrain`,
  requests `retrain_job` with `run_key` `drift:<window>`, so one drifted window makes one run.
  While a retrain is queued or running, a new verdict is noted and left to that run.
- `weekly_retrain_schedule`: `retrain_job` on `retrain_cron`, drift or not.
- `pipeline_failure_sensor` / `pipeline_success_sensor`: after every run, rewrite the
  `pipeline_health` and `retrain_runs` tables the console reads; a failure is also logged with its
  step and message.
"""

import datetime as dt
import json

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.defs.monitoring import DRIFT_REPORT, LIVE_WINDOWS
from recsys_assets.lib import live_windows as live


def build_sensors(
    settings: Settings, live_window_job: UnresolvedAssetJobDefinition, retrain_job: UnresolvedAssetJobDefinition
) -> tuple[list[dg.SensorDefinition], list[dg.ScheduleDefinition]]:
    minutes = settings.drift_window_minutes
    interval = settings.drift_sensor_seconds

    @dg.sensor(
        job=live_window_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Turns the API's event-log segments into `live_events` partitions, one per finished window.",
    )
    def live_events_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
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

    @dg.sensor(
        job=retrain_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests a retrain when a window's drift report says `retrain` (drift detected, or "
        "online CTR / the champion's NDCG@10 below its floor).",
    )
    def drift_retrain_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
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
            requests.append(dg.RunRequest(run_key=f"drift:{key}", tags=window_tags(key, minutes, "drift")))
        return dg.SensorResult(run_requests=requests, cursor=records.cursor if records.records else context.cursor)

    def _store() -> Storage:
        return Storage.from_settings(settings)

    @dg.run_failure_sensor(
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval,
        description="Records every failed run (step and message) in `pipeline_health` and `retrain_runs`.",
    )
    def pipeline_failure_sensor(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        message = context.failure_event.message or ""
        context.log.warning(f"run {run.run_id} of {run.job_name} failed: {message}")
        health, _ = runs.record(context.instance, _store())
        context.log.info(f"pipeline success rate (last 20 runs): {runs.success_rate(health):.1%}")

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval,
        description="Refreshes `pipeline_health` and `retrain_runs` after every successful run.",
    )
    def pipeline_success_sensor(context: dg.RunStatusSensorContext) -> None:
        health, _ = runs.record(context.instance, _store())
        context.log.info(f"pipeline success rate (last 20 runs): {runs.success_rate(health):.1%}")

    weekly_retrain_schedule = dg.ScheduleDefinition(
        name="weekly_retrain_schedule",
        job=retrain_job,
        cron_schedule=settings.retrain_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        tags={runs.TRIGGER_TAG: "schedule"},
        description="Retrains every week whether or not drift was seen.",
    )
    sensors = [live_events_sensor, drift_retrain_sensor, pipeline_failure_sensor, pipeline_success_sensor]
    return sensors, [weekly_retrain_schedule]


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
