"""The Dagster code location: assembles assets, checks, jobs and resources from the settings."""

from __future__ import annotations

import dagster as dg

from recsys_assets.assets.ingestion import build_ingestion_assets
from recsys_assets.assets.training import build_training_assets
from recsys_assets.checks.ingestion import build_ingestion_checks
from recsys_assets.resources import ParquetIOManager, StorageResource
from recsys_assets.settings import Settings, get_settings
from recsys_assets.tracking import MlflowTracking

PIPELINE_JOB = "pipeline_job"
INGESTION_JOB = "ingestion_job"
TUNE_JOB = "tune_job"


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every asset, check, job and resource for one configuration."""
    storage = StorageResource.from_settings(settings)
    training_assets, training_checks = build_training_assets(settings)
    assets = build_ingestion_assets(settings) + training_assets
    checks = build_ingestion_checks(settings) + training_checks
    pipeline_job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets("tuned_hyperparameters"),
        description="Materializes the whole asset graph once (all but the hyper-parameter search).",
    )
    tune_job = dg.define_asset_job(
        TUNE_JOB,
        selection=dg.AssetSelection.assets("tuned_hyperparameters"),
        description="The budgeted hyper-parameter search; its results feed the next `model_candidates`.",
    )
    ingestion_job = dg.define_asset_job(
        INGESTION_JOB,
        selection=dg.AssetSelection.groups("ingestion"),
        description="Materializes the ingestion assets only (sources to interaction matrix and EDA report).",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[pipeline_job, ingestion_job, tune_job],
        resources={
            "storage": storage,
            "io_manager": ParquetIOManager(storage=storage),
            "mlflow": MlflowTracking.from_settings(settings),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Entry point for `dagster dev -w workspace.yaml`; settings come from RECSYS_* variables."""
    return build_definitions(get_settings())
