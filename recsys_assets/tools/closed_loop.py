"""The loop running by itself: `dagster dev` (webserver + daemon) and the API as processes, a shifted
event stream posted to the API, and the timeline from the first shifted event to the new champion
serving.

`python -m recsys_assets.tools.benchmarks loop` measures it (docs/benchmarks.md); `tests/test_closed_loop.py`
runs the same scenario with the smoke budget. The steps are all the daemon's: the live-events sensor
turns each finished window into a partition and its run, the drift report flags the shifted window,
the drift sensor requests the retrain, the blocking check lets the challenger through, the champion is
refitted and published, and the API hot-reloads it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from recsys_assets.contract.artifact import read_pointer
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.defs.monitoring import DRIFT_REPORT
from recsys_assets.lib import live_windows as live
from recsys_assets.tools.services import (
    free_port,
    open_instance,
    prepare_dagster_home,
    settings_env,
    spawn,
    stop_all,
    wait_http,
)

API_KEY = "loop-key"


@dataclass
class LoopServices:
    """`dagster dev` and the API, each in its own process group, logging under `logs`."""

    settings: Settings
    logs: Path
    api_env: dict[str, str] = field(default_factory=dict)
    dagster_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> LoopServices:
        home = prepare_dagster_home(self.settings)
        self.logs.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env = base | settings_env(self.settings) | {"DAGSTER_HOME": str(home)}
        dagster = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"]
        self._spawn([*dagster, "-p", str(self.dagster_port)], env, "dagster.log")
        api_env = (
            env
            | {
                "RECSYS_API_PORT": str(self.api_port),
                "RECSYS_API_KEYS": API_KEY,
                "RECSYS_REDIS_URL": os.environ.get("RECSYS_REDIS_URL", ""),
            }
            | self.api_env
        )
        api = self._spawn([sys.executable, "-m", "serving"], api_env, "api.log")
        wait_http(f"{self.api_url}/ready", api, 90, "the API")
        wait_http(f"http://127.0.0.1:{self.dagster_port}/server_info", self.procs[0], 180, "dagster dev")
        return self

    def _spawn(self, cmd: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        proc = spawn(cmd, env, self.logs / log)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        stop_all(self.procs, timeout=30)
        self.procs.clear()

    @contextlib.contextmanager
    def running(self) -> Iterator[LoopServices]:
        try:
            yield self.start()
        finally:
            self.stop()


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


def streams(inter: pd.DataFrame, n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference stream like the recent log (its users and items, resampled) and a shifted one: a new
    population of users on the long tail of the catalogue. Columns user_id, item_id, value."""
    rng = np.random.default_rng(seed)
    reference = inter.tail(20_000).sample(n, random_state=seed)[["user_id", "item_id", "value"]]
    counts = inter["item_id"].value_counts()
    tail = counts[counts <= max(5, int(counts.quantile(0.3)))].index.to_numpy()
    shifted = pd.DataFrame(
        {
            "user_id": [f"newcomer-{seed}-{i % max(1, n // 4)}" for i in range(n)],
            "item_id": rng.choice(tail, n),
            "value": rng.integers(3, 6, n).astype(float),
        }
    )
    return reference.reset_index(drop=True), shifted


def post_events(api_url: str, frame: pd.DataFrame, prefix: str, event_type: str = "rating") -> float:
    """Post the stream now (timestamps = arrival), in batches; returns when the first was acknowledged."""
    first = 0.0
    for i in range(0, len(frame), 200):
        chunk = frame.iloc[i : i + 200]
        body = [
            {
                "user_id": str(r.user_id),
                "item_id": str(r.item_id),
                "event_type": event_type,
                "value": float(r.value) if event_type == "rating" else None,
                "event_id": f"{prefix}-{i + j}",
            }
            for j, r in enumerate(chunk.itertuples())
        ]
        resp = httpx.post(f"{api_url}/v1/events", json=body, headers={"X-API-Key": API_KEY}, timeout=30)
        resp.raise_for_status()
        first = first or time.time()
    return first


def _served(api_url: str) -> str:
    """The champion version the API serves (`/ready`: asking for a list would log impressions)."""
    resp = httpx.get(f"{api_url}/ready", timeout=10)
    resp.raise_for_status()
    return str(resp.json()["model_version"])


def wait_window_start(minutes: int, margin: float = 1.0) -> dt.datetime:
    """Sleep until a new window starts; returns its start."""
    now = pd.Timestamp.now(tz="UTC")
    start = now.floor(f"{minutes}min") + pd.Timedelta(minutes=minutes)
    time.sleep(max(0.0, (start - now).total_seconds() + margin))
    return start.to_pydatetime()


# ---------------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------------


@dataclass
class Timeline:
    """Seconds from the first shifted event acknowledged by the API (`shift_at`, unix seconds)."""

    shift_at: float
    window: str = ""
    window_closed: float = float("nan")
    window_run_started: float = float("nan")
    drift_detected: float = float("nan")
    retrain_started: float = float("nan")
    retrain_ended: float = float("nan")
    promoted: float = float("nan")
    served: float = float("nan")
    drifted_metrics: list[str] = field(default_factory=list)
    champion_before: str = ""
    champion_after: str = ""
    retrain_status: str = ""
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def run_drift_scenario(
    settings: Settings, services: LoopServices, n_events: int = 1500, timeout: float = 1800, seed: int = 0
) -> Timeline:
    """Post a reference window, then a shifted one, and wait until the API serves a new champion."""
    store = Storage.from_settings(settings)
    minutes = settings.drift_window_minutes
    pointer = read_pointer(store)
    before = pointer["model_version"]
    reference, shifted = streams(store.read_table("interactions.parquet"), n_events, seed)

    wait_window_start(minutes)
    post_events(services.api_url, reference, f"ref-{seed}")
    w1 = wait_window_start(minutes)
    shift_at = post_events(services.api_url, shifted, f"shift-{seed}")
    timeline = Timeline(shift_at=shift_at, window=live.window_key(w1), champion_before=before)
    window_end = (pd.Timestamp(w1) + pd.Timedelta(minutes=minutes)).timestamp()
    timeline.window_closed = window_end - shift_at

    deadline = time.monotonic() + timeout
    with open_instance(settings) as instance:
        while time.monotonic() < deadline:
            fill_timeline(timeline, instance, shift_at)
            try:
                served = _served(services.api_url)
            except httpx.HTTPError:
                served = before
            if served != before:
                timeline.served = time.time() - shift_at
                timeline.champion_after = served
                # the run ends once its last steps (MLflow registry, logs) are done
                until = time.monotonic() + 120
                while timeline.retrain_status not in ("SUCCESS", "FAILURE") and time.monotonic() < until:
                    time.sleep(2)
                    fill_timeline(timeline, instance, shift_at)
                return timeline
            if timeline.retrain_status in ("FAILURE", "CANCELED"):
                return timeline  # refused or failed: the champion stays; `reason` says why
            if timeline.retrain_status == "SUCCESS" and time.time() - shift_at - timeline.retrain_ended > 60:
                return timeline  # promoted, yet the API did not reload it within a minute
            time.sleep(2)
    return timeline


def find_drifted_window(instance, after: float) -> str:
    """The first window ending after `after` (unix seconds) whose drift report said `retrain`, or ""."""
    import dagster as dg

    result = instance.fetch_materializations(dg.AssetKey(DRIFT_REPORT), limit=1000, ascending=True)
    for record in result.records:
        mat = record.asset_materialization
        if mat is None or not mat.partition or not getattr(mat.metadata.get("retrain"), "value", False):
            continue
        end = pd.Timestamp(getattr(mat.metadata.get("window_end"), "value", "") or "NaT")
        if pd.notna(end) and end.timestamp() > after:
            return mat.partition
    return ""


def fill_timeline(t: Timeline, instance, shift_at: float) -> None:
    """Fill in what happened so far, from the instance's records: the drifted window (the first after
    `shift_at` unless `t.window` is set), its run, its drift verdict, and the retrain it triggered."""
    import dagster as dg

    if not t.window:
        t.window = find_drifted_window(instance, shift_at)
        if not t.window:
            return

    for rec in instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": t.window}), limit=5):
        if rec.start_time and np.isnan(t.window_run_started):
            t.window_run_started = rec.start_time - shift_at
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey(DRIFT_REPORT), asset_partitions=[t.window]), limit=1
    ).records
    if records and np.isnan(t.drift_detected):
        mat = records[0].asset_materialization
        if mat is not None and getattr(mat.metadata.get("retrain"), "value", False):
            t.drift_detected = records[0].timestamp - shift_at
            t.drifted_metrics = list(getattr(mat.metadata.get("drifted_metrics"), "value", []) or [])
    retrains = runs.retrain_runs(instance)
    retrains = retrains[(retrains["window"] == t.window) & (retrains["trigger"] == "drift")]
    for row in retrains.to_dict(orient="records"):
        t.retrain_status = row["status"]
        if pd.notna(row["started_at"]):
            t.retrain_started = row["started_at"].timestamp() - shift_at
        if pd.notna(row["ended_at"]):
            t.retrain_ended = row["ended_at"].timestamp() - shift_at
        if row["promoted"] and np.isnan(t.promoted):
            event = instance.get_latest_materialization_event(dg.AssetKey(runs.CHAMPION_ASSET))
            t.promoted = (event.timestamp if event else time.time()) - shift_at
        t.reason = str(row["reason"] or "")
