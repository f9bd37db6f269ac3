"""The pipeline command's run log as JSON lines (log_format=json): Dagster's records flattened to the run,
the step and the event type, with the step's own message."""

from __future__ import annotations

import io
import json
import logging
import types

import dagster as dg

from recsys_assets.contract.logs import JsonFormatter
from recsys_assets.defs.run_logs import _DagsterFields, json_console_logger


def test_dagster_records_become_flat_json_lines() -> None:
    record = logging.LogRecord("dagster", logging.INFO, __file__, 1, "pipeline_job - abc - clean - 10 rows", (), None)
    record.dagster_meta = {
        "run_id": "abc",
        "job_name": "pipeline_job",
        "step_key": "clean",
        "dagster_event": types.SimpleNamespace(event_type_value="STEP_START"),
        "orig_message": "10 rows",
    }
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_DagsterFields())
    handler.handle(record)
    line = json.loads(stream.getvalue())
    assert {k: line[k] for k in ("message", "run_id", "job_name", "step_key", "event", "logger")} == {
        "message": "10 rows",
        "run_id": "abc",
        "job_name": "pipeline_job",
        "step_key": "clean",
        "event": "STEP_START",
        "logger": "dagster",
    }
    assert "dagster_meta" not in line


def test_the_json_logger_runs_a_job(capfd) -> None:
    @dg.op
    def hello(context) -> None:  # unannotated: dagster refuses a string annotation
        context.log.info("hello from the op")

    @dg.job(logger_defs={"console": json_console_logger()})
    def hello_job() -> None:
        hello()

    assert hello_job.execute_in_process(run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}}).success
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    mine = [x for x in lines if x["message"] == "hello from the op"]
    assert mine and mine[0]["step_key"] == "hello" and mine[0]["job_name"] == "hello_job"
    assert all(set(x) >= {"ts", "level", "logger", "message", "request_id", "run_id"} for x in lines)
