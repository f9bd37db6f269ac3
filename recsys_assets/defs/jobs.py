"""Jobs: the whole batch graph, ingestion only, the hyper-parameter search, the retrain (configured by the
settings' `retrain_*`), and one live window with its drift report."""

import functools

import dagster as dg

from recsys_assets.contract.settings import Settings
from recsys_assets.defs import run_logs
from recsys_assets.defs.ingestion import INGESTION
from recsys_assets.defs.monitoring import DRIFT_REPORT, LIVE_EVENTS, LIVE_WINDOWS
from recsys_assets.defs.runs import RETRAIN_JOB

PIPELINE_JOB = "pipeline_job"
INGESTION_JOB = "ingestion_job"
TUNE_JOB = "tune_job"
LIVE_WINDOW_JOB = "live_window_job"
# Training jobs never run side by side (torch takes every core): `tools.services.INSTANCE_YAML` limits runs
# with this tag to one at a time in the instance's run queue.
EXCLUSIVE_TAG = {"recsys/exclusive": "training"}

# Everything but the hyper-parameter search and the live windows.
BATCH = dg.AssetSelection.all() - dg.AssetSelection.assets("tuned_hyperparameters", LIVE_EVENTS, DRIFT_REPORT)


def build_jobs(settings: Settings) -> list:
    """Every job of one configuration (with `log_format=json`, each selects the JSON run logger)."""
    config = functools.partial(run_logs.job_config, settings)
    return [
        dg.define_asset_job(
            PIPELINE_JOB,
            selection=BATCH,
            tags=EXCLUSIVE_TAG,
            config=config(),
            description="Materializes the whole asset graph once (all but the hyper-parameter search and the live "
            "windows); `interactions` include every stored live window.",
        ),
        dg.define_asset_job(
            INGESTION_JOB,
            selection=dg.AssetSelection.groups(INGESTION) - dg.AssetSelection.assets(LIVE_EVENTS),
            # it writes what the batch jobs write (`interactions`, with daily ingestion its day partitions
            # and manifest): the instance's run queue runs it one at a time with them
            tags=EXCLUSIVE_TAG,
            config=config(),
            description="Materializes the ingestion assets only (sources to interaction matrix and EDA report).",
        ),
        dg.define_asset_job(
            TUNE_JOB,
            selection=dg.AssetSelection.assets("tuned_hyperparameters"),
            tags=EXCLUSIVE_TAG,
            config=config(),
            description="The budgeted hyper-parameter search; its results feed the next `model_candidates`.",
        ),
        retrain_job(settings),
        dg.define_asset_job(
            LIVE_WINDOW_JOB,
            selection=dg.AssetSelection.assets(LIVE_EVENTS, DRIFT_REPORT),
            partitions_def=LIVE_WINDOWS,
            tags={"recsys/exclusive": "live_windows"},
            config=config(),
            description="Stores one window of the API's event log and its drift report.",
        ),
    ]


# (the jobs' type, `UnresolvedAssetJobDefinition`, is not part of Dagster's public API: no annotations)
def retrain_job(settings: Settings):
    """The batch graph with the retrain's candidates: its run config comes from the settings."""
    return dg.define_asset_job(
        RETRAIN_JOB,
        selection=BATCH,
        tags=EXCLUSIVE_TAG,
        config=run_logs.job_config(
            settings,
            {
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
        ),
        description="Rebuilds interactions with the live windows, trains and evaluates the retrain candidates "
        "(`retrain_models`), and promotes the challenger past the blocking check; the API hot-reloads it. "
        "Requested by the drift sensor and the weekly schedule.",
    )
