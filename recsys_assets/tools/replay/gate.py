"""The canary gate on replayed traffic: `python -m recsys_assets.tools.replay gate`.

A scenario is a champion and a challenger (two artifact folders under the work folder's storage, each
registered in its MLflow registry once). Each run of a scenario, per seed:

1. the champion alias goes to the scenario's champion, and a canary of the challenger opens at `share` of
   the users (`lib/canary.start_canary`, salted with the scenario and seed: each seed is another split);
2. a fresh Redis and API process serve the future of the prepared data set, replayed as fast as the API
   answers (`simulator.run_replay`, one real event per visit, as in `replay run`);
3. every `look_seconds` the gate takes a look (`lib/canary.step`, what `canary_sensor` runs in a
   deployment): the canary is promoted, withdrawn or left running, then the holdout watched the same way;
4. the run reports what the gate decided, when (seconds, and lists of each arm) and each model's list CTR.

The *realised* winner is measured apart: one replay of the same future per model with every user on it
(`reference`), so the gate's verdict is judged against what each model does on all the traffic.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from recsys_assets.contract import attribution
from recsys_assets.contract.artifact import MANIFEST
from recsys_assets.contract.canary import CanaryConfig
from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.lib import canary as gate
from recsys_assets.lib import champion as registry
from recsys_assets.lib.tracking import MlflowTracking
from recsys_assets.tools import services as svcs

API_KEY = "gate-key"


@dataclass
class GateRun:
    """What one replay of a scenario showed."""

    scenario: str
    seed: int
    champion: str
    challenger: str
    canary_verdict: str = "open at the end"
    canary_seconds: float | None = None
    canary_lists: int | None = None  # the canary's own lists when it was decided
    champion_lists: int | None = None
    canary_ctr: float | None = None
    champion_ctr: float | None = None
    holdout_verdict: str = ""
    final_champion: str = ""
    lists: int = 0
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)  # `_by_model`


def _versions(settings: Settings, tracking: MlflowTracking, folders: list[str]) -> dict[str, str]:
    """The registry version of each artifact folder (`artifacts/<model_version>`): the version registered with
    that model version (the promotion registers every artifact it publishes), else registered here."""
    from recsys_assets.contract.artifact import read_from_storage, save_artifact

    store = Storage.from_settings(settings)
    history = tracking.champion_history()
    known = {
        str(mv): str(v) for mv, v in zip(history.get("model_version", []), history.get("version", []), strict=True)
    }
    versions = {}
    for folder in folders:
        art = read_from_storage(store, *folder.split("/"))
        if art.model_version in known:
            versions[folder] = known[art.model_version]
            continue
        row = {"model": art.model_name, "metric": "ndcg", "k": 10, "protocol": "temporal", "slice": "all", "value": 0}
        run_id = tracking.log_training_run(
            f"{art.model_name} (gate replay)",
            {"model_version": art.model_version},
            pd.DataFrame([row]),
            art.dataset_fingerprint,
        )
        with tempfile.TemporaryDirectory() as tmp:
            save_artifact(art, tmp)
            versions[folder] = tracking.register_artifact(tmp, run_id, "challenger")
    return versions


class _Api:
    """A fresh Redis and one API process on the work folder's storage, writing to `events_dir`."""

    def __init__(self, env_file: Path, events_dir: Path, logs: Path) -> None:
        self.port = svcs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        logs.mkdir(parents=True, exist_ok=True)
        self.redis, redis_url = svcs.start_redis(logs / "redis.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env |= {
            "RECSYS_ENV_FILE": str(env_file),
            "RECSYS_API_KEYS": f"{API_KEY}:events",
            "RECSYS_RATE_LIMIT_PER_MINUTE": "0",
            "RECSYS_REDIS_URL": redis_url,
            "RECSYS_API_PORT": str(self.port),
            "RECSYS_EVENTS_DIR": str(events_dir),
            "RECSYS_MODEL_POLL_SECONDS": "0.5",
            "OMP_NUM_THREADS": "1",
        }
        self.proc = svcs.spawn([sys.executable, "-m", "serving"], env, logs / "api.log")
        svcs.wait_http(f"{self.url}/ready", self.proc, 120, "the API")

    def model(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/v1/model", timeout=5).json()

    def stop(self) -> None:
        svcs.stop_all([p for p in (self.proc, self.redis) if p is not None])


def _wait_split(api: _Api, role: str | None, within: float = 20.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if api.model().get("challenger_role") == role:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the API did not open the {role} split within {within}s: {api.model()}")


def _by_model(events_dir: Path, since: str) -> dict[str, dict[str, float]]:
    """Each model version's lists, list CTR and clicks per list in the run's log."""
    lists = gate.lists_since(events_dir, since)
    table = attribution.kpis_by(lists, "model_version") if len(lists) else pd.DataFrame()
    return {
        str(r.model_version): {
            "lists": int(r.lists),
            "ctr": round(float(r.ctr), 5),
            "clicks_per_list": round(float(r.clicked_impressions / r.lists), 5),
        }
        for r in table.itertuples()
    }


def _replay(workdir: Path, api_url: str, events_dir: Path, seed: int, max_seconds: float):
    from recsys_assets.tools.replay.data import read_events
    from recsys_assets.tools.replay.simulator import ReplayConfig, run_replay

    config = ReplayConfig(
        api_url=api_url,
        api_key=API_KEY,
        events=read_events(workdir / "future" / "events.csv"),
        dataset="gate",
        seed=seed,
        max_seconds=max_seconds,
        events_dir=events_dir,
        progress=False,
    )
    return run_replay(config)


@dataclass
class GateConfig:
    workdir: Path
    scenarios: dict[str, tuple[str, str]]  # name -> (champion folder, challenger folder)
    seeds: list[int]
    canary: CanaryConfig
    look_seconds: float = 2.0
    max_seconds: float = 900.0
    reference: bool = True
    out: Path | None = None


def run_one(cfg: GateConfig, settings: Settings, versions: dict[str, str], name: str, seed: int) -> GateRun:
    """One replay of scenario `name` with the gate looking every `look_seconds`."""
    champion, challenger = cfg.scenarios[name]
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    store = Storage.from_settings(settings)
    registry.promote(tracking, store, versions[champion], "replay gate", f"scenario {name} starts", registry.PROMOTE)
    gate.close_split(store, "ended", gate.read_state(store))
    run_dir = cfg.workdir / "gate" / f"{name}-{seed}"
    events_dir = run_dir / "events"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    events_dir.mkdir(parents=True)
    state = gate.start_canary(tracking, store, cfg.canary, versions[challenger], f"replay {name}", f"{name}-{seed}")
    result = GateRun(name, seed, champion, challenger)
    api = _Api(cfg.workdir / "replay.env", events_dir, run_dir / "logs")
    try:
        _wait_split(api, "canary")
        started = time.monotonic()
        worker = threading.Thread(
            target=_replay, args=(cfg.workdir, api.url, events_dir, seed, cfg.max_seconds), daemon=True
        )
        worker.start()
        while True:
            finished = not worker.is_alive()
            outcome = gate.step(tracking, store, cfg.canary, events_dir)
            if outcome is not None and outcome.verdict != "continue":
                _note(result, outcome, time.monotonic() - started)
            if finished or gate.read_state(store) is None:
                break  # the replay is over, or nothing is open any more (withdrawn, or the holdout decided)
            worker.join(cfg.look_seconds)
        worker.join()  # the rest of the future, served by the champion alone
    finally:
        api.stop()
    result.final_champion = str((tracking.alias_version("champion") or {}).get("tags", {}).get("recsys.model_version"))
    result.by_model = _by_model(events_dir, state.started_at)
    result.lists = sum(int(v["lists"]) for v in result.by_model.values())
    gate.close_split(store, "ended", gate.read_state(store))
    return result


def _note(result: GateRun, outcome: gate.Outcome, seconds: float) -> None:
    if result.canary_seconds is None:  # the canary's verdict
        ctr = outcome.decisions["ctr"]
        result.canary_verdict = outcome.verdict
        result.canary_seconds = round(seconds, 1)
        result.canary_lists, result.champion_lists = ctr.challenger_lists, ctr.champion_lists
        result.canary_ctr, result.champion_ctr = round(ctr.challenger_ctr, 5), round(ctr.champion_ctr, 5)
    else:
        result.holdout_verdict = outcome.verdict


def reference(cfg: GateConfig, settings: Settings, versions: dict[str, str], folder: str) -> dict[str, Any]:
    """The model of `folder` on every user of the replay (no canary): its realised list CTR."""
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    store = Storage.from_settings(settings)
    registry.promote(tracking, store, versions[folder], "replay gate", "reference run", registry.PROMOTE)
    gate.close_split(store, "ended", gate.read_state(store))
    run_dir = cfg.workdir / "gate" / f"reference-{folder.replace('/', '_')}"
    events_dir = run_dir / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    since = pd.Timestamp.now(tz="UTC").isoformat()
    api = _Api(cfg.workdir / "replay.env", events_dir, run_dir / "logs")
    try:
        _replay(cfg.workdir, api.url, events_dir, 42, cfg.max_seconds)
    finally:
        api.stop()
    by_model = _by_model(events_dir, since)
    return {"folder": folder, "lists": sum(int(v["lists"]) for v in by_model.values()), "by_model": by_model}


def run(cfg: GateConfig) -> dict[str, Any]:
    """Every scenario x seed, and the reference runs; the summary (also written to `out`)."""
    env_file = cfg.workdir / "replay.env"
    if not env_file.is_file() or not (cfg.workdir / "future" / "events.csv").is_file():
        raise ValueError(f"{cfg.workdir} has no replay.env or future/events.csv: run `replay prepare` there first")
    settings = get_settings(env_file=env_file)
    folders = sorted({f for pair in cfg.scenarios.values() for f in pair})
    store = Storage.from_settings(settings)
    missing = [f for f in folders if not store.exists(*f.split("/"), MANIFEST)]
    if missing:
        raise ValueError(
            f"no serving artifact at {missing} under {settings.storage_uri}: name folders such as "
            "artifacts/<model version> (the pipeline's promotions) or candidates/<model>"
        )
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    versions = _versions(settings, tracking, folders)
    report: dict[str, Any] = {"canary": cfg.canary.model_dump(), "versions": versions, "runs": [], "reference": {}}
    out = cfg.out or cfg.workdir / "gate" / "gate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.reference:
        for folder in folders:
            report["reference"][folder] = reference(cfg, settings, versions, folder)
            print(json.dumps(report["reference"][folder]), flush=True)
            out.write_text(json.dumps(report, indent=2, default=str))
    for name in cfg.scenarios:
        for seed in cfg.seeds:
            row = asdict(run_one(cfg, settings, versions, name, seed))
            report["runs"].append(row)
            print(json.dumps(row, default=str), flush=True)
            out.write_text(json.dumps(report, indent=2, default=str))
    return report
