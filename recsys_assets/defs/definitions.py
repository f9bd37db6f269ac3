"""The Dagster code location: binds one configuration to the assets, checks, jobs, schedules, sensors
and resources defined in the stage modules."""

from __future__ import annotations

import dagster as dg

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.defs import candidate_steps, evaluation, ingestion, monitoring, promotion, run_logs, training
from recsys_assets.defs.checks import CHECKS
from recsys_assets.defs.executors import build_executor
from recsys_assets.defs.jobs import INGESTION_JOB, LIVE_WINDOW_JOB, PIPELINE_JOB, TUNE_JOB, build_jobs
from recsys_assets.defs.resources import build_resources
from recsys_assets.defs.schedules import daily_ingestion_schedules, weekly_retrain_schedule
from recsys_assets.defs.sensors import build_sensors

# The job names stay importable from here, where the command line and the tests look for them.
__all__ = ["INGESTION_JOB", "LIVE_WINDOW_JOB", "PIPELINE_JOB", "TUNE_JOB", "build_definitions", "defs"]

ASSETS = dg.load_assets_from_modules([ingestion, monitoring, training, candidate_steps, evaluation, promotion])


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every asset, check, job, schedule, sensor and resource for one configuration; launched runs use the
    configured executor (`settings.executor`; `execute_in_process` always runs in this process)."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=build_jobs(settings),
        sensors=build_sensors(settings.drift_sensor_seconds),
        schedules=[
            weekly_retrain_schedule(settings.retrain_cron),
            *daily_ingestion_schedules(settings.ingestion, INGESTION_JOB),
        ],
        resources=build_resources(settings),
        executor=build_executor(settings),
        loggers=run_logs.run_loggers(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Entry point for `dagster dev -w workspace.yaml`; settings come from RECSYS_* variables."""
    return build_definitions(get_settings())
