"""The Dagster code location: assembles assets, checks, jobs and resources from the settings."""

from __future__ import annotations

import dagster as dg

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.defs.checks import build_ingestion_checks
from recsys_assets.defs.ingestion import build_ingestion_assets
from recsys_assets.defs.monitoring import DRIFT_REPORT, LIVE_EVENTS, LIVE_WINDOWS, build_monitoring_assets
from recsys_assets.defs.resources import MlflowResource, ParquetIOManager, StorageResource
from recsys_assets.defs.runs import RETRAIN_JOB
from recsys_assets.defs.sensors import build_sensors
from recsys_assets.defs.training import build_training_assets

PIPELINE_JOB = "pipeline_job"
INGESTION_JOB = "ingestion_job"
TUNE_JOB = "tune_job"
LIVE_WINDOW_JOB = "live_window_job"
# Training jobs never run side by side (torch takes every core): `recsys_assets.tools.cli` limits runs
# with this tag to one at a time in the instance's run queue.
EXCLUSIVE_TAG = {"recsys/exclusive": "training"}


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every asset, check, job and resource for one configuration."""
    storage = StorageResource.from_settings(settings)
    training_assets, training_checks = build_training_assets(settings)
    assets = build_ingestion_assets(settings) + training_assets + build_monitoring_assets(settings)
    checks = build_ingestion_checks(settings) + training_checks
    batch = dg.AssetSelection.all() - dg.AssetSelection.assets("tuned_hyperparameters", LIVE_EVENTS, DRIFT_REPORT)
    pipeline_job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=batch,
        tags=EXCLUSIVE_TAG,
        description="Materializes the whole asset graph once (all but the hyper-parameter search and the live "
        "windows); `interactions` include every stored live window.",
    )
    retrain_job = dg.define_asset_job(
        RETRAIN_JOB,
        selection=batch,
        tags=EXCLUSIVE_TAG,
        config={
            "ops": {
                "model_candidates": {
                    "config": {
                        "models": settings.retrain_models,
                        "protocols": settings.retrain_protocols,
                        "budget": settings.retrain_budget,
                    }
                }
            }
        },
        description="Rebuilds interactions with the live windows, trains and evaluates the retrain candidates "
        "(`retrain_models`), and promotes the challenger past the blocking check; the API hot-reloads it. "
        "Requested by the drift sensor and the weekly schedule.",
    )
    live_window_job = dg.define_asset_job(
        LIVE_WINDOW_JOB,
        selection=dg.AssetSelection.assets(LIVE_EVENTS, DRIFT_REPORT),
        partitions_def=LIVE_WINDOWS,
        tags={"recsys/exclusive": "live_windows"},
        description="Stores one window of the API's event log and its drift report.",
    )
    sensors, schedules = build_sensors(settings, live_window_job, retrain_job)
    tune_job = dg.define_asset_job(
        TUNE_JOB,
        selection=dg.AssetSelection.assets("tuned_hyperparameters"),
        tags=EXCLUSIVE_TAG,
        description="The budgeted hyper-parameter search; its results feed the next `model_candidates`.",
    )
    ingestion_job = dg.define_asset_job(
        INGESTION_JOB,
        selection=dg.AssetSelection.groups("ingestion") - dg.AssetSelection.assets(LIVE_EVENTS),
        description="Materializes the ingestion assets only (sources to interaction matrix and EDA report).",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[pipeline_job, ingestion_job, tune_job, retrain_job, live_window_job],
        sensors=sensors,
        schedules=schedules,
        resources={
            "storage": storage,
            "io_manager": ParquetIOManager(storage=storage),
            "mlflow": MlflowResource.from_settings(settings),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Entry point for `dagster dev -w workspace.yaml`; settings come from RECSYS_* variables."""
    return build_definitions(get_settings())
