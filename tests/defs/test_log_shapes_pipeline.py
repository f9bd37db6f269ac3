"""The whole pipeline (`recsys_assets.tools.pipeline`, as `python -m recsys_assets pipeline` runs it) on
every log shape of issue 15, with the smoke budget and the two popularity models: each ingests by
configuration alone and ends with a champion; a log whose rows are all rejected stops before training,
saying why. Fixtures: `tests.log_shapes` (small files written here)."""

from __future__ import annotations

import os
from html import escape as html_escape
from pathlib import Path

import pytest

from recsys_assets.contract.settings import get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.lib.evaluation import splits as S
from tests import log_shapes

CANDIDATES = {"budget": "smoke", "models": ["Pop"], "native_models": ["Popularity"]}
EXPECTED_PROTOCOLS = {"timestamp": {"random", "temporal"}, "sequence": {"random", "temporal"}, "none": {"random"}}


def _settings(tmp_path: Path, config: dict, monkeypatch: pytest.MonkeyPatch):
    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    return get_settings(
        storage_uri=str(tmp_path / "data"),
        dagster_home=str(tmp_path / "dagster"),
        source="event_log",
        event_log=config,
    )


@pytest.mark.integration
@pytest.mark.parametrize("name", [*sorted(log_shapes.INGESTED), "all_rejected"])
def test_the_pipeline_runs_on_each_log_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    from recsys_assets.tools.pipeline import run_pipeline

    shape, mode = log_shapes.INGESTED.get(name, (log_shapes.all_rejected(), ""))
    files = tmp_path / "log"
    files.mkdir()
    s = _settings(tmp_path, shape.write(files), monkeypatch)
    ok = run_pipeline(s, CANDIDATES)
    out = capsys.readouterr().out
    store = Storage.from_settings(s)
    if name == "all_rejected":
        # stops at cleaning, before any training, with the reasons in the message
        assert not ok and "step clean FAILED" in out and "no interaction left: 90 of 90 rows rejected" in out
        assert "bad_value" in out and f"{files}/ratings.csv line 2" in out
        assert "materialized model_candidates" not in out and not store.exists("evaluation_report.parquet")
        return
    assert ok, out[-4000:]
    assert "materialized champion_model" in out and "check interactions_have_time: passed" in out
    if mode == "none":  # said once, at ingestion, in the printed counts
        assert out.count("time: the log has no time") == 1 and "temporal protocol is skipped" in out
    if mode == "sequence":
        assert out.count("time: the log is ordered per user (`sequence_column`)") == 1
    inter = store.read_table("interactions.parquet")
    assert S.time_mode(inter) == mode
    report = store.read_table("evaluation_report.parquet")
    assert set(report["protocol"]) == EXPECTED_PROTOCOLS[mode]
    assert {"Pop", "Popularity"} <= set(report["model"])
    html = store.read_bytes("reports", "evaluation_report.html").decode()
    if mode != "timestamp":
        assert html_escape(S.method_of(S.TEMPORAL, mode)) in html
    pointer = store.read_bytes("artifacts", "CHAMPION.json")
    assert b"model_version" in pointer


@pytest.mark.integration
def test_the_search_runs_on_a_log_without_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """`make tune` on a log without time searches on the random split's validation part."""
    import json

    from recsys_assets.defs.definitions import INGESTION_JOB, TUNE_JOB, build_definitions
    from recsys_assets.defs.training import TUNED_PARAMS
    from recsys_assets.tools.pipeline import run_pipeline

    files = tmp_path / "log"
    files.mkdir()
    s = _settings(tmp_path, log_shapes.no_timestamps().write(files), monkeypatch)
    assert run_pipeline(s, job_name=INGESTION_JOB)
    result = (
        build_definitions(s)
        .resolve_job_def(TUNE_JOB)
        .execute_in_process(
            raise_on_error=False,
            run_config={"ops": {"tuned_hyperparameters": {"config": {"models": ["EASE"], "trials": 1}}}},
        )
    )
    assert result.success
    assert "searching on the random split's validation part" in capfd.readouterr().err
    assert set(json.loads(Storage.from_settings(s).read_bytes(*TUNED_PARAMS))) == {"EASE"}
