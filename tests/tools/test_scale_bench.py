"""The scale benchmark's stage table: each step, and each candidate inside `model_candidates`, from the run's log."""

from __future__ import annotations

from recsys_assets.tools.scale_bench import _stages


def test_stages_split_the_candidates_step_by_candidate_and_keep_skips_with_their_reason() -> None:
    def row(t: float, step: str, event: str | None, message: str = "") -> dict:
        return {"t": t, "step": step, "event": event, "message": message}

    log = [
        row(0, "interactions", "STEP_START"),
        row(5, "interactions", "STEP_SUCCESS"),
        row(6, "model_candidates", "STEP_START"),
        row(7, "model_candidates", None, "skipping EASE on the random split: EASE refused: 100,000 items > ..."),
        row(8, "model_candidates", None, "[2/4] training ALS on the random split"),
        row(20, "model_candidates", None, "[3/4] training Hybrid on the random split"),
        row(30, "model_candidates", "STEP_FAILURE", "MemoryError"),
    ]
    stages = {s["stage"].strip(): s for s in _stages(log, end=40)}
    assert stages["interactions"]["stop"] - stages["interactions"]["start"] == 5
    assert stages["EASE (random)"]["status"].startswith("skipped: EASE refused")
    assert (stages["ALS (random)"]["start"], stages["ALS (random)"]["stop"]) == (8, 20)
    assert stages["Hybrid (random)"]["stop"] == 30 and stages["Hybrid (random)"]["status"] == "FAILED: MemoryError"
    assert stages["model_candidates"]["status"] == "FAILED: MemoryError"


def test_candidates_of_steps_side_by_side_keep_their_own_times() -> None:
    def row(t: float, step: str, event: str | None, message: str = "") -> dict:
        return {"t": t, "step": step, "event": event, "message": message}

    a, b = "model_candidates.candidate[ALS]", "model_candidates.candidate[Content]"
    log = [
        row(0, a, "STEP_START"),
        row(1, b, "STEP_START"),
        row(2, a, None, "[1/2] training ALS on the random split"),
        row(3, b, None, "[2/2] training Content on the random split"),
        row(10, a, None, "[1/2] training ALS on the temporal split"),
        row(12, b, "STEP_SUCCESS"),
        row(15, a, "STEP_SUCCESS"),
    ]
    stages = {s["stage"].strip(): s for s in _stages(log, end=20)}
    assert (stages["ALS (random)"]["start"], stages["ALS (random)"]["stop"]) == (2, 10)
    assert (stages["Content (random)"]["start"], stages["Content (random)"]["stop"]) == (3, 12)
    assert (stages["ALS (temporal)"]["start"], stages["ALS (temporal)"]["stop"]) == (10, 15)


def test_a_stopped_run_still_reports_the_steps_it_finished_from_its_instance(tmp_path) -> None:
    import dagster as dg

    from recsys_assets.tools.scale_bench import _open_instance, _read_timeline

    @dg.op
    def ingest() -> int:
        return 1

    @dg.job
    def pipeline() -> None:
        ingest()

    timeline = tmp_path / "timeline.json"  # never written: the child was stopped before its end
    assert _read_timeline(timeline) == {"success": False, "log": []}
    with _open_instance(timeline) as instance:
        assert pipeline.execute_in_process(instance=instance).success
    doc = _read_timeline(timeline)
    assert doc["success"] is False  # no timeline: the run did not end
    done = [r for r in doc["log"] if r["step"] == "ingest" and r["event"] in ("STEP_START", "STEP_SUCCESS")]
    assert [r["event"] for r in done] == ["STEP_START", "STEP_SUCCESS"]
    stages = {s["stage"]: s for s in _stages(doc["log"], end=done[-1]["t"] + 1)}
    assert stages["ingest"]["stop"] == done[-1]["t"]
