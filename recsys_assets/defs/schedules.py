"""Schedules: the weekly retrain, drift or not; the daily ingestion (with `RECSYS_INGESTION__MODE=daily`)."""

import dagster as dg

from recsys_assets.contract.ingestion import IngestionConfig
from recsys_assets.defs import runs


def weekly_retrain_schedule(cron: str) -> dg.ScheduleDefinition:
    """`retrain_job` on `retrain_cron` (UTC); the cron is a setting, so the schedule is made per configuration."""
    return dg.ScheduleDefinition(
        name="weekly_retrain_schedule",
        job_name=runs.RETRAIN_JOB,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        tags={runs.TRIGGER_TAG: "schedule"},
        description="Retrains every week whether or not drift was seen.",
    )


def daily_ingestion_schedules(config: IngestionConfig, job_name: str) -> list[dg.ScheduleDefinition]:
    """The ingestion job every day at `ingestion.cron` (UTC), only with daily ingestion: each run reads the
    source files that arrived since the last one."""
    if config.mode != "daily":
        return []
    return [
        dg.ScheduleDefinition(
            name="daily_ingestion_schedule",
            job_name=job_name,
            cron_schedule=config.cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            tags={runs.TRIGGER_TAG: "schedule"},
            description="Ingests the day's new source files into the day partitions of `interactions`.",
        )
    ]
