"""Schedules: the weekly retrain, drift or not."""

import dagster as dg

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
