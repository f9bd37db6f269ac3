"""The log lines of the pipeline's runs in the project's `log_format`: with `json`, every job's `console`
logger writes one JSON object per line (`recsys_assets.contract.logs`) wherever the run executes: in
`python -m recsys_assets pipeline`, and in the run processes `dagster dev` and the daemon launch (the
jobs' own run config selects the logger, so a run requested by a sensor or a schedule, or launched
from the UI without config, gets it too). With `text`, Dagster's own coloured console logger."""

from __future__ import annotations

import logging
import sys
from typing import Any

import dagster as dg

from recsys_assets.contract.logs import JsonFormatter, RequestIdFilter
from recsys_assets.contract.settings import Settings

# The run config every job gets with `log_format=json`: selects the `console` logger, which
# `Definitions(loggers=...)` binds to `json_console_logger`. Without a `loggers` entry in the run
# config, Dagster falls back to its coloured console logger whatever the job's loggers are.
JSON_RUN_CONFIG: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


class _DagsterFields(logging.Filter):
    """Dagster's record metadata as a few flat fields (run, step, event type) and its own message, instead of
    the whole event object and the message with the job, run and step prefixed."""

    def filter(self, record: logging.LogRecord) -> bool:
        meta = record.__dict__.pop("dagster_meta", None)
        if isinstance(meta, dict):
            event = meta.get("dagster_event")
            record.run_id = meta.get("run_id")
            record.job_name = meta.get("job_name")
            record.step_key = meta.get("step_key")
            record.event = getattr(event, "event_type_value", None)
            if meta.get("orig_message") is not None:
                record.msg, record.args = meta["orig_message"], ()
        return True


def json_console_logger() -> dg.LoggerDefinition:
    """A Dagster logger writing one JSON object per line on stderr (recsys_assets.contract.logs)."""

    @dg.logger(
        config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
        description="One JSON object per line on stderr, as the rest of the project logs with log_format=json.",
    )
    def json_console(init_context: dg.InitLoggerContext) -> logging.Logger:
        logger = logging.Logger("dagster", level=init_context.logger_config["log_level"].upper())
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(_DagsterFields())
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
        return logger

    return json_console


def run_loggers(settings: Settings) -> dict[str, dg.LoggerDefinition]:
    """The code location's loggers: the JSON console with `log_format=json`, else Dagster's default."""
    return {"console": json_console_logger()} if settings.log_format == "json" else {}


def job_config(settings: Settings, config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A job's run config with the logger selection of `log_format=json` added (None: no config)."""
    if settings.log_format != "json":
        return config
    return {**(config or {}), **JSON_RUN_CONFIG}
