"""The whole loop through the replay, under `dagster dev` (daemon on). A sample of ml-100k's future is
replayed through the API (Redis, popularity arm at 50/50), with the Sci-Fi films held out of the
past; half-way they launch, with the films new in the future, and the stream shifts to them.
Nothing but the replay drives it: the live-events sensor makes the windows partitions, the shifted
window's drift report flags it, the drift sensor starts the retrain, the challenger is promoted and
the API serves it. The replay's counts must match the API's own log, and every click must be
reflected by the user's next list."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from recsys_assets.contract.storage import Storage
from recsys_assets.lib import live_windows as live
from recsys_assets.tools.replay.scenario import SimulateConfig, simulate

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1800)
def test_the_replayed_drift_retrains_and_the_new_champion_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))  # restored after the test
    cfg = SimulateConfig(
        dataset="ml-100k",
        workdir=tmp_path / "sim",
        budget="smoke",
        models=["Pop", "EASE"],
        duration=200.0,
        shift="newest-items",
        shift_at=0.5,
        hold_out_category="Sci-Fi",
        max_users=120,
        settle_seconds=600.0,
    )
    report = simulate(cfg)
    work = cfg.workdir
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in (work / "logs").iterdir()}
    timeline = report["timeline"]
    assert timeline is not None, logs

    # exact attribution: the API's log agrees with what the simulator served and posted, per arm
    assert report["consistent"], report["arms"]
    arms = {row["arm"]: row for row in report["arms"]}
    assert set(arms) == {"champion", "challenger"}
    for row in arms.values():
        assert row["counted_from"] == "event_log" and row["lists"] > 50 and row["clicked_lists"] > 0
        assert row["impressions"] == 10 * row["lists"]
        # freshness: a clicked item is gone from the user's very next list
        assert row["freshness_events"] > 0 and row["freshness_requests_max"] == 1
        assert row["freshness_unreflected"] == 0

    # the shift is detected, the daemon retrains, the new champion is promoted and served
    assert not math.isnan(timeline["drift_detected"]) and "new_item" in timeline["drifted_metrics"], timeline
    assert timeline["retrain_status"] == "SUCCESS", (timeline, logs)
    assert 0 < timeline["drift_detected"] < timeline["retrain_started"] < timeline["promoted"], timeline
    assert timeline["promoted"] <= timeline["served"], timeline
    assert timeline["champion_after"] and timeline["champion_after"] != timeline["champion_before"]

    store = Storage.from_uri(str(work / "data"))
    windows = live.stored_windows(store)
    assert timeline["window"] in windows and len(windows) >= 2
    drift = store.read_table("drift_results.parquet")
    assert drift.loc[drift["window"] == timeline["window"], "window_drifted"].all()
    runs = store.read_table("replay_runs.parquet")
    assert set(runs["arm"]) == {"champion", "challenger"} and runs["consistent"].all()
    phases = {(row["arm"], row["phase"]) for row in report["by_phase"]}
    assert ("champion", "before") in phases and ("champion", "during") in phases
    health = store.read_table("pipeline_health.parquet")
    assert {"live_window_job", "retrain_job"} <= set(health["job"])
    assert np.isfinite(health["duration_s"]).sum() >= 3
