"""The whole loop on a real data set, measured: `python -m recsys_assets.tools.replay simulate` (`make simulate`).

1. cut the data set in time (`data.prepare`) and train on the past with the pipeline;
2. start the API (champion, with half of the users on the popularity arm), Redis, and `dagster dev`
   with its daemon, so the live-events and drift sensors, the drift reports and the retrain all run
   by themselves;
3. replay the future through the API at a pace that fits `duration` seconds; with `shift`, from
   `shift_at` on the stream changes (the newest items launch, or new users arrive);
4. watch: the first drifted window after the shift, the retrain it triggers, the promotion, and the
   moment the API serves the new champion (then the phase `after` starts);
5. report CTR, conversion and hit rate per A/B arm and per phase (`before`, `during`, `after`), the
   timeline, and freshness; store them in `replay_runs` and `<workdir>/simulate.json`.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from recsys_assets.contract.artifact import CHAMPION_POINTER, read_pointer
from recsys_assets.contract.canary import CanaryConfig
from recsys_assets.tools import closed_loop
from recsys_assets.tools.pipeline import run_pipeline
from recsys_assets.tools.replay.data import Shift
from recsys_assets.tools.services import REPLAY_API_ENV, open_instance, start_redis, stop_all

INITIAL_CHAMPION = "initial_champion.json"  # the champion trained on the past, for `--no-train`
# A replay packs days of a data set into each one-minute window, so consecutive windows hold
# different users: on ml-100k's future, windows before any shift differ by up to 0.3 on ratings
# (Jensen-Shannon), 1.2 on user history, 0.44 on the share of new users and 0.31 on item
# popularity (Wasserstein, normed). A replay's verdict (`simulate`, the demo) rests on the catalogue
# and population signals at 0.35, half of them, against the two windows before (a steadier reference).
REPLAY_DRIFT: dict[str, Any] = {
    "drift_threshold": 0.35,
    "drift_share": 0.5,
    "drift_features": ["item_popularity", "new_item", "new_user"],
    "drift_reference_windows": 2,
}
# The replay's popularity arm holds the API's one challenger slot (`RECSYS_AB_CHALLENGER_PATH`), so the
# canary gate would have no arm to serve a canary or a holdout on: a retrain's winner is promoted at once.
# `replay gate` (`tools/replay/gate.py`) is the replay of the gate itself.
FIXED_ARM_GATE: dict[str, Any] = {"canary": CanaryConfig(share=0.0, holdout_share=0.0)}


@dataclass
class SimulateConfig:
    dataset: str = "ml-100k"
    workdir: Path = Path("/tmp/recsys-simulate")
    source: str | None = None
    future_fraction: float = 0.2
    budget: str = "standard"
    models: list[str] | None = None  # RecBole models of the first training and of retrains
    window_minutes: int = 1
    duration: float = 720.0  # wall seconds the replay is paced to
    # of which the shifted stream takes this many (None: the same pace throughout); a thin shifted
    # stream stretched this way leaves enough of it after the retrain to measure CTR's recovery
    shifted_seconds: float | None = None
    shift: Shift | None = "newest-items"
    shift_at: float = 0.5
    # a catalogue category held out of the past (`data.prepare`): with `newest-items`, it launches at the shift
    hold_out_category: str | None = None
    seed: int = 42
    max_users: int | None = None  # replay a seeded sample of the future's users
    concurrency: int = 4
    max_events_per_visit: int = 1
    include_seen: bool = False
    # the newest items' stream is thin (tens of events a minute on ml-100k): a verdict on few events
    drift_min_rows: int = 10
    train: bool = True  # False: reuse the trained past in `workdir`
    # after the replay, wait this long for the drift-triggered champion to be served (0: do not wait)
    settle_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # settings over the replay's (`REPLAY_DRIFT` included)


def _settings(cfg: SimulateConfig, env_file: Path):
    """The settings of the prepared work folder with the replay's: short windows, `REPLAY_DRIFT`."""
    from recsys_assets.contract.settings import get_settings

    work = cfg.workdir.resolve()
    base = get_settings(env_file=env_file)
    updates: dict[str, Any] = {
        "events_dir": str(work / "events"),
        "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "drift_window_minutes": cfg.window_minutes,
        "drift_window_grace_seconds": 3.0,
        "drift_sensor_seconds": 5,
        "drift_min_rows": cfg.drift_min_rows,
        **REPLAY_DRIFT,
        **FIXED_ARM_GATE,
        "model_poll_seconds": 1.0,
        "retrain_budget": cfg.budget,
        **cfg.extra,
    }
    if cfg.models:
        updates["retrain_models"] = list(cfg.models)
    return base.model_copy(update=updates)


class _Watcher(threading.Thread):
    """Polls the API's served champion; once the stream has shifted, marks the phase `after` when the
    champion changes from the one serving at the shift (a retrain that ends earlier moves `before`)."""

    def __init__(self, url: str, before: str, phases) -> None:
        super().__init__(daemon=True)
        self.url, self.before, self.phases = url, before, phases
        self.served_at: float | None = None
        self.version = before
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                version = httpx.get(f"{self.url}/ready", timeout=5).json().get("model_version")
            except (httpx.HTTPError, ValueError):
                continue
            if not version or self.served_at is not None:
                continue
            if self.phases.current == "before":
                self.before = version
            elif version != self.before:
                self.served_at, self.version = time.time(), version
                self.phases.mark("after")


def simulate(cfg: SimulateConfig) -> dict[str, Any]:
    """Cut (or reset), train on the past, serve with `dagster dev`, replay the future; the report."""
    from recsys_assets.contract.storage import Storage
    from recsys_assets.tools.replay.report import phase_rows, store_phases, store_runs, summary_text
    from recsys_assets.tools.replay.simulator import Phases, run_replay

    work = cfg.workdir.resolve()
    logs = work / "logs"
    summary = _cut(cfg, work) if cfg.train else _reset(work)
    logs.mkdir(parents=True, exist_ok=True)
    settings = _settings(cfg, work / "replay.env")
    started = time.perf_counter()
    if cfg.train:
        _train(cfg, settings, summary, work)
    train_seconds = time.perf_counter() - started
    store = Storage.from_settings(settings)
    if not cfg.train:
        _realign_alias(settings, store)
    before = read_pointer(store)["model_version"]

    replay = _replay_config(cfg, settings, work)
    speed, shift_speed = _pace(replay, cfg)
    redis, redis_url = start_redis(logs / "redis.log")
    services = closed_loop.LoopServices(settings, logs, api_env=REPLAY_API_ENV | {"RECSYS_REDIS_URL": redis_url})
    phases = Phases()
    try:
        with services.running():
            watcher = _Watcher(services.api_url, before, phases)
            watcher.start()
            print(f"replaying the future through {services.api_url} for about {cfg.duration:.0f} s ...", flush=True)
            replay.api_url, replay.phases = services.api_url, phases
            replay.speed, replay.shift_speed = speed, shift_speed
            # start with a window: a first window of a few seconds and users is no reference for the next
            closed_loop.wait_window_start(cfg.window_minutes, margin=0.5)
            result = run_replay(replay)
            shift_mark = next((m for m in phases.marks if m.name == "during"), None)
            timeline = None
            if shift_mark is not None:
                timeline = _follow_retrain(settings, store, watcher, shift_mark.at, cfg.settle_seconds)
            watcher.stop.set()
    finally:
        if redis is not None:
            stop_all([redis])
    store_runs(store, result.arms())
    store_phases(store, phase_rows(result, timeline.as_dict() if timeline is not None else None))
    print(summary_text(result))
    report = {
        "dataset": cfg.dataset,
        "split": {k: summary[k] for k in ("cut", "past_events", "future_events") if k in summary},
        "train_seconds": round(train_seconds, 1),
        "speed": round(speed, 1),
        "shift_speed": round(shift_speed, 1) if shift_speed else None,
        "arms": _records(result.arms()),
        "by_phase": _records(result.by_phase()),
        "timeline": timeline.as_dict() if timeline is not None else None,
        "consistent": not result.mismatches(),
    }
    (work / "simulate.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({"timeline": report["timeline"]}, indent=2, default=str))
    return report


def _cut(cfg: SimulateConfig, work: Path) -> dict[str, Any]:
    """A fresh work folder with the data set cut in time; the cut's summary."""
    from recsys_assets.tools.replay.data import load_dataset, prepare

    shutil.rmtree(work, ignore_errors=True)
    print(f"cutting {cfg.dataset} in time under {work} ...", flush=True)
    prep = prepare(
        load_dataset(cfg.dataset, cfg.source), work, cfg.future_fraction, hold_out_category=cfg.hold_out_category
    )
    return prep.summary


def _realign_alias(settings, store) -> None:
    """The registry's `champion` alias back on the first champion `_reset` restored, or the alias sensor
    would bring back the last run's retrained champion."""
    from recsys_assets.lib.tracking import CHAMPION, MlflowTracking

    version = (read_pointer(store) or {}).get("registry_version")
    if version:
        MlflowTracking.for_store(settings.mlflow_store()).set_alias(CHAMPION, str(version))


def _reset(work: Path) -> dict[str, Any]:
    """Back to the state right after training: the first champion, no live data, no runs."""
    summary = json.loads((work / "split.json").read_text())
    for folder in ("events", "logs", "dagster", "data/live_events", "data/drift"):
        shutil.rmtree(work / folder, ignore_errors=True)
    for name in ("drift_results", "retrain_runs", "pipeline_health", "replay_runs"):
        (work / "data" / f"{name}.parquet").unlink(missing_ok=True)
    shutil.copy(work / INITIAL_CHAMPION, work / "data" / Path(*CHAMPION_POINTER))
    return summary


def _train(cfg: SimulateConfig, settings, summary: dict[str, Any], work: Path) -> None:
    """Train on the past with the pipeline; keep its champion for `--no-train`."""
    candidates = {"budget": cfg.budget, "models": settings.retrain_models, "protocols": ["temporal"]}
    print(f"training on the past ({summary['past_events']:,} events) ...", flush=True)
    if not run_pipeline(settings, candidates):
        raise RuntimeError("training on the past failed")
    shutil.copy(work / "data" / Path(*CHAMPION_POINTER), work / INITIAL_CHAMPION)


def _replay_config(cfg: SimulateConfig, settings, work: Path):
    """The replay of the future (its API URL and pace are set once the API is up)."""
    from recsys_assets.tools.replay.data import read_events
    from recsys_assets.tools.replay.simulator import ReplayConfig

    future = read_events(work / "future" / "events.csv")
    past = pd.read_csv(work / "past" / "events.csv", usecols=["user_id", "item_id"], dtype=str)
    return ReplayConfig(
        api_url="",
        api_key=closed_loop.API_KEY,
        events=future,
        dataset=cfg.dataset,
        exclude_seen=not cfg.include_seen,
        seed=cfg.seed,
        max_users=cfg.max_users,
        max_seconds=cfg.duration + 120,
        concurrency=cfg.concurrency,
        max_events_per_visit=cfg.max_events_per_visit,
        shift=cfg.shift,
        shift_at=cfg.shift_at if cfg.shift else None,
        past_users=frozenset(past["user_id"]),
        past_items=frozenset(past["item_id"]),
        events_dir=settings.events_dir,
    )


def _follow_retrain(settings, store, watcher: _Watcher, shift_at: float, settle_seconds: float) -> closed_loop.Timeline:
    """The timeline from the shift on, after the replay: up to `settle_seconds` for the new champion to
    be served, then up to 2 minutes for its run's last steps (registry, logs), so the timeline is whole."""
    timeline = closed_loop.Timeline(shift_at=shift_at, champion_before=watcher.before)
    with open_instance(settings) as instance:
        deadline = time.monotonic() + settle_seconds
        while watcher.served_at is None and time.monotonic() < deadline:
            closed_loop.fill_timeline(timeline, instance, shift_at)
            if timeline.retrain_status in ("FAILURE", "CANCELED"):
                break
            time.sleep(2.0)
        until = time.monotonic() + (120 if watcher.served_at is not None else 0)
        closed_loop.fill_timeline(timeline, instance, shift_at)
        while timeline.retrain_status in ("STARTED", "STARTING", "QUEUED") and time.monotonic() < until:
            time.sleep(2.0)
            closed_loop.fill_timeline(timeline, instance, shift_at)
        # the run-status sensors record the ended retrain on their next tick (`retrain_runs`)
        until = time.monotonic() + (60 if timeline.retrain_status in ("SUCCESS", "FAILURE") else 0)
        while time.monotonic() < until and not _recorded(store, timeline.window):
            time.sleep(2.0)
    if watcher.served_at is not None:
        timeline.served = watcher.served_at - shift_at
        timeline.champion_after = watcher.version
    return timeline


def _pace(replay, cfg: SimulateConfig) -> tuple[float, float | None]:
    """Data seconds per wall second before the shift and, with `shifted_seconds`, after it: the replay
    takes `duration` wall seconds, the shifted stream `shifted_seconds` of them."""
    if cfg.duration <= 0:
        return 0.0, None
    visits, shift_ts = replay.plan()
    if not visits:
        return 0.0, None
    first, last = visits[0].start, visits[-1].start
    if shift_ts is None or not cfg.shifted_seconds:
        return max(last - first, 1.0) / cfg.duration, None
    if not 0 < cfg.shifted_seconds < cfg.duration:
        raise ValueError(f"shifted_seconds must be in (0, duration={cfg.duration}), got {cfg.shifted_seconds}")
    before = max(shift_ts - first, 1.0) / (cfg.duration - cfg.shifted_seconds)
    after = max(last - shift_ts, 1.0) / cfg.shifted_seconds
    return before, after


def _recorded(store, window: str) -> bool:
    if not store.exists("retrain_runs.parquet"):
        return False
    rows = store.read_table("retrain_runs.parquet")
    return bool((rows["window"] == window).any())


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = df.replace({np.nan: None}).to_dict(orient="records")
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()} for row in out]
