"""`log_format=json` reaches the runs Dagster launches itself (dagster dev, the daemon's sensors and
schedule, the UI): every job of the code location selects the JSON console logger in its own run config,
so a run started without any config logs JSON lines; with `text`, Dagster's own logger stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_assets.contract.settings import Settings
from recsys_assets.defs.definitions import INGESTION_JOB, LIVE_WINDOW_JOB, PIPELINE_JOB, TUNE_JOB, build_definitions
from recsys_assets.defs.run_logs import JSON_RUN_CONFIG
from recsys_assets.defs.runs import RETRAIN_JOB
from recsys_assets.tools.services import instance_yaml
from tests.conftest import ROOT

JOBS = (PIPELINE_JOB, INGESTION_JOB, TUNE_JOB, RETRAIN_JOB, LIVE_WINDOW_JOB)


def test_every_job_selects_the_json_logger_only_with_log_format_json(settings: Settings) -> None:
    json_defs = build_definitions(settings.model_copy(update={"log_format": "json"}))
    text_defs = build_definitions(settings)
    for job in map(json_defs.resolve_job_def, JOBS):
        assert job.loggers["console"].description.startswith("One JSON object per line"), job.name
        # a partitioned job's config is per partition: what a sensor's request for a window runs with
        config = job.run_config or job.partitioned_config.get_run_config_for_partition_key("20260101T0000")
        assert config["loggers"] == JSON_RUN_CONFIG["loggers"], job.name
    retrain = json_defs.resolve_job_def(RETRAIN_JOB)
    assert retrain.run_config["ops"]["model_candidates"]["config"]["budget"] == settings.retrain_budget
    for job in map(text_defs.resolve_job_def, JOBS):
        assert "loggers" not in (job.run_config or {}), job.name
        assert not (job.loggers["console"].description or "").startswith("One JSON object per line"), job.name


@pytest.mark.integration
def test_a_run_launched_without_config_logs_json_lines(tmp_path: Path) -> None:
    """`dagster job execute` loads the code location (workspace.yaml's module), as dagster dev and the daemon's
    run workers do, and runs the job with no run config, as a sensor's or the schedule's run request does;
    its steps run in subprocesses (the multiprocess executor), each setting up the run's loggers again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {
        "RECSYS_STORAGE_URI": str(tmp_path / "data"),
        "RECSYS_DAGSTER_HOME": str(tmp_path / "dagster"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "RECSYS_LOG_FORMAT": "json",
        "RECSYS_EXECUTOR": "multiprocess",
    }
    (tmp_path / "dagster").mkdir()
    # the instance the tools write for dagster dev and the daemon (`prepare_dagster_home`)
    json_settings = Settings(_env_file=None, log_format="json", dagster_home=str(tmp_path / "dagster"))  # type: ignore[call-arg]
    (tmp_path / "dagster" / "dagster.yaml").write_text(instance_yaml(json_settings))
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        "-m",
        "recsys_assets.defs.definitions",
        "-j",
        INGESTION_JOB,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_lines = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if " - dagster - " in line:  # Dagster's text console logger: must not print a run line
            pytest.fail(f"a run line in text: {line}")
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("run_id"):
                run_lines.append(record)
    # the steps' own lines (INFO; Dagster's event lines are DEBUG), each from its step's subprocess
    steps = {r["step_key"] for r in run_lines}
    assert {"raw_sources", "clean", "eda_report"} <= steps, run_lines
    assert all(r["job_name"] == INGESTION_JOB and r["level"] == "INFO" for r in run_lines)
    assert any("raw rows" in r["message"] for r in run_lines)
    assert all(set(r) >= {"ts", "level", "logger", "message", "request_id"} for r in run_lines)
