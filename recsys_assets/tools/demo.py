"""`python -m recsys_assets demo` (`make demo`): the whole loop on MovieLens-100k.

It cuts the data set in time, trains on the past, starts every service, replays the future through
the API as live traffic, and serves until Ctrl-C (`--ci`: exits instead).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from recsys_assets.contract.settings import EventLogSource, Settings
from recsys_assets.tools import services as svcs
from recsys_assets.tools.pipeline import run_pipeline
from recsys_assets.tools.replay.scenario import FIXED_ARM_GATE, REPLAY_DRIFT
from recsys_assets.tools.services import Service

# The demo's API key when RECSYS_API_KEYS is unset (printed at start; local use only).
DEMO_API_KEY = "demo-key"
KEY_NOTE = f"API key for POST /v1/events: {DEMO_API_KEY} (header X-API-Key; set RECSYS_API_KEYS to choose your own)"
DEMO_DATASET = "ml-100k"
# A visit (one list) answers up to 3 of a user's ratings less than 30 min apart: a third of the lists
# of one visit per rating, so the replay keeps its pace beside the Dagster runs on a small machine.
DEMO_EVENTS_PER_VISIT = 3
# Live windows of a minute, so the Dagster UI shows `live_events` partitions and drift reports within
# the demo's minutes. A replayed minute holds days of ml-100k and different users, so the verdict takes
# the replay's drift settings (`replay.scenario.REPLAY_DRIFT`, as `replay simulate` does).
# Each applies unless set (RECSYS_DRIFT_WINDOW_MINUTES, ...).
# The popularity arm holds the challenger slot: the canary gate is off (`replay.scenario.FIXED_ARM_GATE`).
DEMO_LOOP_DEFAULTS: dict[str, object] = {
    "drift_window_minutes": 1,
    "drift_sensor_seconds": 10,
    **REPLAY_DRIFT,
    **FIXED_ARM_GATE,
}


def _api_base(settings: Settings) -> str:
    host = "127.0.0.1" if settings.api_host in ("", "0.0.0.0", "::") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def _redis(settings: Settings, fresh: bool) -> tuple[Service | None, str]:
    """A Redis to start, if any, and the URL every service uses. One is started where none listens; with
    `fresh` (a replay: live state left by an earlier one changes what is served) also when one does,
    on a free port. Without `redis-server`, the configured URL as it is."""
    redis = urlparse(settings.redis_url)
    host, port = redis.hostname or "127.0.0.1", redis.port or 6379
    if not shutil.which("redis-server") or host not in ("127.0.0.1", "localhost"):
        return None, settings.redis_url
    if svcs.listening(host, port):
        if not fresh:
            return None, settings.redis_url
        port = svcs.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    return Service("Redis (cache and live state)", svcs.redis_command(port), url, health=url, log="redis.log"), url


def demo_services(settings: Settings, replay: bool = False) -> list[Service]:
    """What `make demo` serves. Every process gets the settings as `RECSYS_*` variables (the source and
    event log included), the API's URL and the Redis in use; with `replay`, the API serves half of the
    users from the popularity arm, without a rate limit, on a fresh Redis."""
    py = sys.executable
    api_base = _api_base(settings)
    redis, redis_url = _redis(settings, fresh=replay)
    env = (
        dict(os.environ)
        | svcs.settings_env(settings)
        | {
            "DAGSTER_HOME": str(Path(settings.dagster_home).resolve()),
            "RECSYS_API_URL": api_base,
            "RECSYS_REDIS_URL": redis_url,
        }
    )
    api_env = env | ({} if settings.api_keys else {"RECSYS_API_KEYS": DEMO_API_KEY})
    if replay:
        api_env |= svcs.REPLAY_API_ENV
    dagster = f"http://127.0.0.1:{settings.dagster_port}"
    mlflow = f"http://127.0.0.1:{settings.mlflow_ui_port}"
    if settings.registry_url is None and not settings.mlflow_tracking_uri:
        # the API asks the demo's MLflow UI for the `champion` alias: a move there is served within a poll
        api_env["RECSYS_REGISTRY_URL"] = mlflow
    console = f"http://127.0.0.1:{settings.console_port}"
    services = [
        Service(
            "Dagster UI (webserver + daemon)",
            [py, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(settings.dagster_port)],
            dagster,
            env,
            f"{dagster}/server_info",
            "dagster.log",
        ),
        Service(
            "MLflow UI",
            [
                *(py, "-m", "mlflow", "ui", "--backend-store-uri", settings.mlflow_store().tracking_uri),
                *("-h", "127.0.0.1", "-p", str(settings.mlflow_ui_port)),
            ],
            mlflow,
            # its job workers would outlive the server otherwise
            env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            f"{mlflow}/health",
            "mlflow.log",
        ),
    ]
    if redis is not None:
        services.append(redis)
    services += [
        Service(
            "Recommendation API", [py, "-m", "serving"], f"{api_base}/docs", api_env, f"{api_base}/ready", "api.log"
        ),
        Service(
            "Console",
            [
                *(py, "-m", "streamlit", "run", "console/app.py", "--server.address", "127.0.0.1"),
                *("--server.headless", "true", "--browser.gatherUsageStats", "false"),
                *("--server.port", str(settings.console_port)),
            ],
            console,
            env,
            f"{console}/_stcore/health",
            "console.log",
        ),
    ]
    for svc in services:
        svc.env = svc.env or env
    return services


def _print_urls(services: list[Service], settings: Settings) -> None:
    for svc in services:
        print(f"  {svc.name}: {svc.url}")
    if not settings.api_keys:
        print(f"  {KEY_NOTE}")


@dataclass
class DemoReplay:
    """The held-out future of the cut, replayed through the API paced to `seconds` of wall time."""

    workdir: Path
    seconds: float

    def run(self, settings: Settings) -> bool:
        """Replay, store `replay_runs`, print the summary; False if no list was served or the API's
        log disagrees with what the replay counted."""
        from recsys_assets.contract.storage import Storage
        from recsys_assets.tools.replay.data import read_events
        from recsys_assets.tools.replay.report import store_runs, summary_text
        from recsys_assets.tools.replay.simulator import ReplayConfig, run_replay

        key = settings.events_api_key() if settings.api_keys else DEMO_API_KEY
        if key is None:
            print("RECSYS_API_KEYS has no key allowed to post events: the replay needs one (`key` or `key:events`)")
            return False
        future = read_events(self.workdir / "future" / "events.csv")
        span = (future["timestamp"].max() - future["timestamp"].min()).total_seconds()
        speed = span / self.seconds if self.seconds > 0 else 0.0
        print(
            f"\nreplaying the future ({len(future):,} ratings of {future['user_id'].nunique()} users, "
            f"{span / 86400:.0f} days) through {_api_base(settings)} in about {self.seconds:.0f} s "
            f"({speed / 3600:.0f} h of data a second); half of the users get the champion, half popularity ...",
            flush=True,
        )
        result = run_replay(
            ReplayConfig(
                api_url=_api_base(settings),
                api_key=key,
                events=future,
                dataset=DEMO_DATASET,
                max_seconds=self.seconds + 15,
                speed=speed,
                max_events_per_visit=DEMO_EVENTS_PER_VISIT,
                events_dir=settings.events_path(),
            )
        )
        path = store_runs(Storage.from_settings(settings), result.arms())
        print(summary_text(result))
        print(f"stored in {path} (the console's Online page)")
        if not len(result.lists):
            print("the replay was served no list")
            return False
        return not result.mismatches()


def serve(settings: Settings, replay: DemoReplay | None = None, ci: bool = False) -> int:
    """Start every demo service in its own process group; with `replay`, replay once they are up. Then
    serve until Ctrl-C (SIGTERM too), or with `ci` stop at once; every service is stopped either way."""
    home = svcs.prepare_dagster_home(settings)
    logs = home / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    services = demo_services(settings, replay=replay is not None)
    procs: list[subprocess.Popen] = []
    serving = False  # Ctrl-C is the normal end from here on
    on_term = svcs.interrupt_on_sigterm()
    try:
        for svc in services:
            procs.append(svcs.spawn(svc.cmd, svc.env, logs / svc.log, header=True))
            print(f"{svc.name}: {svc.url}", flush=True)
        if not settings.api_keys:
            print(KEY_NOTE)
        print(f"service logs: {logs}", flush=True)
        ok = True
        if replay is not None or ci:
            print("waiting for every service ...", flush=True)
            if not svcs.wait_ready(services, procs, logs):
                return 1
        if replay is not None:
            ok = replay.run(settings)
        exited = [(svc, p) for svc, p in zip(services, procs, strict=True) if p.poll() is not None]
        for svc, p in exited:
            print(f"{svc.name} exited with {p.returncode}; the end of {logs / svc.log}:\n{svcs.tail(logs / svc.log)}")
        if ci:
            return 0 if ok and not exited else 1
        if exited:
            return 1
        if replay is not None:
            print("\nserving:")
            _print_urls(services, settings)
        print("Ctrl-C stops everything.", flush=True)
        serving = True
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        for svc, p in zip(services, procs, strict=True):
            if p.poll() is not None:
                print(f"{svc.name} exited with {p.returncode}; stopping the others (log: {logs / svc.log})")
        return 1
    except KeyboardInterrupt:
        return 0 if serving else 130
    finally:
        with svcs.no_interrupts():
            if procs:
                print("\nstopping every service ...", flush=True)
            svcs.stop_all(procs)
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


def replay_workdir(settings: Settings) -> Path:
    """Where the demo cuts ml-100k: `<storage>/replay` (`<dagster_home>/replay` with Blob storage)."""
    base = Path(settings.dagster_home).resolve() if settings.is_azure else settings.local_root()
    return base / "replay"


def cut_dataset(work: Path) -> tuple[EventLogSource, dict]:
    """Cut ml-100k in time under `work` (the last 20% of ratings by time are the future), or reuse the
    cut already there; the event-log source of the past and the cut's summary."""
    from dotenv import dotenv_values

    from recsys_assets.tools.replay.data import ENV_FILE, load_dataset, prepare

    if (work / "split.json").is_file():  # written last, so the cut is complete
        source = EventLogSource.model_validate_json(dotenv_values(work / ENV_FILE).get("RECSYS_EVENT_LOG") or "{}")
        if all(Path(p).is_file() for p in source.paths) and (work / "future" / "events.csv").is_file():
            print(f"reusing the cut of {DEMO_DATASET} in {work}", flush=True)
            return source, json.loads((work / "split.json").read_text())
    print(f"cutting {DEMO_DATASET} in time under {work} ...", flush=True)
    prep = prepare(load_dataset(DEMO_DATASET), work)
    source = EventLogSource.model_validate_json(dotenv_values(prep.env_file)["RECSYS_EVENT_LOG"] or "{}")
    return source, prep.summary


def demo_settings(settings: Settings, source: EventLogSource, retrain: dict | None = None) -> Settings:
    """The demo's settings: the past as the source, absolute paths (the services run from the project
    folder), short live windows unless set, and `retrain` (`retrain_budget`, `retrain_models`)."""
    updates: dict[str, object] = {
        "source": "event_log",
        "event_log": source,
        "dagster_home": str(Path(settings.dagster_home).resolve()),
        **(retrain or {}),
    }
    if not settings.is_azure:
        updates["storage_uri"] = str(settings.local_root())
    if settings.events_dir:
        updates["events_dir"] = str(Path(settings.events_dir).resolve())
    for name, value in DEMO_LOOP_DEFAULTS.items():
        if name not in settings.model_fields_set:
            updates[name] = value
    return settings.model_copy(update=updates)


def set_aside_earlier_replays(settings: Settings, work: Path, cut: str) -> None:
    """Every replay plays the same future. An earlier one's live windows and event segments, or a
    champion trained on events from the cut on, would put it in training and in every user's history
    (items there are never served again, so no clicks): move them under `replay/earlier/<time>/`."""
    import pandas as pd

    from recsys_assets.contract.artifact import CHAMPION_POINTER, read_pointer
    from recsys_assets.contract.storage import Storage
    from recsys_assets.lib import live_windows as live

    store = Storage.from_settings(settings)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    aside = ("replay", "earlier", stamp)
    moved = []
    champion = read_pointer(store)
    if champion is not None:
        until = champion.get("data_until")
        if not until or pd.Timestamp(until) >= pd.Timestamp(cut):
            store.fs.makedirs(store.path(*aside), exist_ok=True)
            store.fs.mv(store.path(*CHAMPION_POINTER), store.path(*aside, CHAMPION_POINTER[-1]))
            moved.append(f"the champion {champion.get('model_version')} (trained on data until {until or '?'})")
    windows = live.stored_windows(store)
    if windows:
        store.fs.makedirs(store.path(*aside), exist_ok=True)
        store.fs.mv(store.path(live.LIVE_EVENTS), store.path(*aside, live.LIVE_EVENTS), recursive=True)
        moved.append(f"live windows: {len(windows)}")
    segments = live.segments(settings.events_path())
    if segments:
        target = work / "earlier" / stamp / "events"
        target.mkdir(parents=True, exist_ok=True)
        for path in segments:
            shutil.move(path, target / path.name)
        moved.append(f"event-log segments: {len(segments)} (to {target})")
    if moved:
        print(f"set aside under {store.uri(*aside)}: " + "; ".join(moved), flush=True)


def demo(
    settings: Settings,
    candidates: dict,
    replay_seconds: float = 180.0,
    ci: bool = False,
    retrain: dict | None = None,
) -> int:
    """Cut ml-100k in time, train on the past, serve, replay the future; then serve until Ctrl-C, or
    with `ci` stop everything and return 0 only if every step succeeded."""
    work = replay_workdir(settings)
    try:
        source, summary = cut_dataset(work)
        settings = demo_settings(settings, source, retrain)
        set_aside_earlier_replays(settings, work, str(summary["cut"]))
        print(
            f"training on the past: {summary['past_events']:,} ratings before {summary['cut']} "
            f"(the {summary['future_events']:,} from then on are replayed later) ...",
            flush=True,
        )
        if not run_pipeline(settings, candidates):
            return 1
    except KeyboardInterrupt:  # nothing is running yet
        print("\ninterrupted")
        return 130
    return serve(settings, DemoReplay(work, replay_seconds), ci=ci)
