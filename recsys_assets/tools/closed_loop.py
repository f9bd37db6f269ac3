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
import json
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
from recsys_assets.tools.services import free_port

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "loop-key"


def settings_env(settings: Settings) -> dict[str, str]:
    """The `RECSYS_*` variables that reproduce the loop's settings in another process."""
    keys = (
        "source",
        "storage_uri",
        "dagster_home",
        "events_dir",
        "drift_window_minutes",
        "drift_window_grace_seconds",
        "drift_sensor_seconds",
        "drift_min_rows",
        "drift_reference_windows",
        "min_ctr",
        "min_ndcg",
        "drift_threshold",
        "drift_share",
        "retrain_budget",
        "promotion_margin",
        "model_poll_seconds",
        "mlflow_tracking_uri",
    )
    env = {}
    for key in keys:
        value = getattr(settings, key)
        if value is not None:
            env[f"RECSYS_{key.upper()}"] = str(value)
    if settings.event_log is not None:
        env["RECSYS_EVENT_LOG"] = settings.event_log.model_dump_json()
    env["RECSYS_RETRAIN_MODELS"] = json.dumps(settings.retrain_models)
    env["RECSYS_DRIFT_FEATURES"] = json.dumps(settings.drift_features)
    env["RECSYS_RETRAIN_PROTOCOLS"] = json.dumps(settings.retrain_protocols)
    return env


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready at {url} after {timeout}s")


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
        from recsys_assets.tools.cli import _dagster_home

        home = _dagster_home(self.settings)
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
        _wait_http(f"{self.api_url}/ready", api, 90, "the API")
        _wait_http(f"http://127.0.0.1:{self.dagster_port}/server_info", self.procs[0], 180, "dagster dev")
        return self

    def _spawn(self, cmd: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        out = (self.logs / log).open("ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        from recsys_assets.tools.cli import stop_all

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


def _wait_window_start(minutes: int, margin: float = 1.0) -> dt.datetime:
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
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    store = Storage.from_settings(settings)
    minutes = settings.drift_window_minutes
    pointer = read_pointer(store)
    before = pointer["model_version"]
    reference, shifted = streams(store.read_table("interactions.parquet"), n_events, seed)

    _wait_window_start(minutes)
    post_events(services.api_url, reference, f"ref-{seed}")
    w1 = _wait_window_start(minutes)
    shift_at = post_events(services.api_url, shifted, f"shift-{seed}")
    timeline = Timeline(shift_at=shift_at, window=live.window_key(w1), champion_before=before)
    window_end = (pd.Timestamp(w1) + pd.Timedelta(minutes=minutes)).timestamp()
    timeline.window_closed = window_end - shift_at

    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(Path(settings.dagster_home).resolve()))) as instance:
        while time.monotonic() < deadline:
            _fill(timeline, instance, shift_at)
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
                    _fill(timeline, instance, shift_at)
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


def _fill(t: Timeline, instance, shift_at: float) -> None:
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
    for rec in instance.get_run_records(dg.RunsFilter(tags={runs.WINDOW_TAG: t.window, runs.TRIGGER_TAG: "drift"})):
        t.retrain_status = rec.dagster_run.status.value
        if rec.start_time:
            t.retrain_started = rec.start_time - shift_at
        if rec.end_time:
            t.retrain_ended = rec.end_time - shift_at
        promo = runs._promotion(instance, rec.dagster_run.run_id)
        if promo["promoted"] and np.isnan(t.promoted):
            event = instance.get_latest_materialization_event(dg.AssetKey(runs.CHAMPION_ASSET))
            t.promoted = (event.timestamp if event else time.time()) - shift_at
        t.reason = str(promo.get("reason", ""))
