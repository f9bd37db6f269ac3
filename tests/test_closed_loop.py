"""The loop by itself under `dagster dev` (daemon on): events posted to the API become partitions, the
shifted window's drift report flags it, the daemon's sensor starts the retrain, the challenger is
promoted and the API serves it, with no call from the test but posting events."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from recsys_assets import closed_loop, live
from recsys_assets.cli import run_pipeline
from recsys_assets.settings import get_settings
from recsys_assets.storage import Storage

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1800)
def test_the_loop_runs_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))  # restored after the test
    settings = get_settings(
        storage_uri=str(tmp_path / "data"),
        dagster_home=str(tmp_path / "dagster"),
        events_dir=str(tmp_path / "events"),
        drift_window_minutes=1,
        drift_window_grace_seconds=3,
        drift_sensor_seconds=5,
        drift_min_rows=100,
        retrain_models=["Pop", "EASE"],
        retrain_budget="smoke",
        model_poll_seconds=1,
    )
    assert run_pipeline(settings, {"budget": "smoke", "models": ["Pop", "EASE"], "protocols": ["temporal"]})
    services = closed_loop.LoopServices(settings, tmp_path / "logs")
    store = Storage.from_settings(settings)
    with services.running():
        timeline = closed_loop.run_drift_scenario(settings, services, n_events=500, timeout=900)
        # the run-status sensor records the finished retrain on its next tick
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if store.exists("retrain_runs.parquet"):
                rows = store.read_table("retrain_runs.parquet")
                if (rows["window"] == timeline.window).any() and rows["status"].iloc[0] == "SUCCESS":
                    break
            time.sleep(2)
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in (tmp_path / "logs").iterdir()}
    assert timeline.champion_after and timeline.champion_after != timeline.champion_before, (timeline, logs)
    assert not math.isnan(timeline.drift_detected) and timeline.drifted_metrics
    assert timeline.retrain_status == "SUCCESS" and 0 < timeline.drift_detected < timeline.retrain_started
    assert timeline.retrain_started < timeline.promoted < timeline.served

    windows = live.stored_windows(store)
    assert timeline.window in windows and len(windows) >= 2
    drift = store.read_table("drift_results.parquet")
    assert drift.loc[drift["window"] == timeline.window, "window_drifted"].all()
    retrains = store.read_table("retrain_runs.parquet")
    row = retrains[retrains["window"] == timeline.window].iloc[0]
    assert row["trigger"] == "drift" and bool(row["promoted"]) and row["champion_version"] == timeline.champion_after
    health = store.read_table("pipeline_health.parquet")
    assert {"live_window_job", "retrain_job"} <= set(health["job"])
    assert np.isfinite(health["duration_s"]).sum() >= 3
