"""`make demo`: the demo's settings and services, every service coming up on its URL and stopping on
Ctrl-C, and `demo --ci` running the whole loop (cut, train on the past, serve, replay) and exiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

from recsys_assets.contract.settings import EventLogSource, Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.lib import live_windows as live
from recsys_assets.tools import demo as demo_tool
from tests.conftest import ROOT, free_port

PAST = EventLogSource(paths=["/nowhere/past/events.csv"], timestamp_unit="s")


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        _env_file=None, storage_uri=str(tmp_path / "data"), dagster_home=str(tmp_path / "home"), **overrides
    )  # type: ignore[call-arg]


def _env(tmp_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The environment of a demo on free ports under `tmp_path`, with no RECSYS_* variable of the caller's."""
    ports = {name: free_port() for name in ("dagster", "mlflow", "api", "console", "redis")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    # Redis is started by the demo since none listens on its port
    env |= {
        "RECSYS_STORAGE_URI": str(tmp_path / "data"),
        "RECSYS_DAGSTER_HOME": str(tmp_path / "home"),
        "RECSYS_DAGSTER_PORT": str(ports["dagster"]),
        "RECSYS_MLFLOW_UI_PORT": str(ports["mlflow"]),
        "RECSYS_API_PORT": str(ports["api"]),
        "RECSYS_CONSOLE_PORT": str(ports["console"]),
        "RECSYS_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
    }
    return env, ports


# ---------------------------------------------------------------------------------------------
# Settings, services, earlier replays (no process started)
# ---------------------------------------------------------------------------------------------


def test_demo_settings_train_on_the_past_with_one_minute_windows_unless_set(tmp_path: Path) -> None:
    demo = demo_tool.demo_settings(_settings(tmp_path), PAST, {"retrain_budget": "smoke", "retrain_models": ["EASE"]})
    assert demo.source == "event_log" and demo.event_log == PAST
    assert demo.drift_window_minutes == 1 and demo.drift_sensor_seconds == 10
    assert demo.retrain_budget == "smoke" and demo.retrain_models == ["EASE"]
    assert Path(demo.storage_uri).is_absolute() and Path(demo.dagster_home).is_absolute()

    chosen = demo_tool.demo_settings(_settings(tmp_path, drift_window_minutes=15), PAST)
    assert chosen.drift_window_minutes == 15 and chosen.retrain_budget == "standard"


def test_demo_services_pass_the_settings_and_open_the_ab_split_for_the_replay(tmp_path: Path) -> None:
    api_port, redis_port = free_port(), free_port()
    settings = demo_tool.demo_settings(
        _settings(tmp_path, api_port=api_port, redis_url=f"redis://127.0.0.1:{redis_port}/0"), PAST
    )
    services = {svc.name: svc for svc in demo_tool.demo_services(settings, replay=True)}
    api = services["Recommendation API"]
    assert api.env["RECSYS_AB_CHALLENGER_SHARE"] == "0.5"
    assert api.env["RECSYS_AB_CHALLENGER_PATH"] == "candidates/Popularity"
    assert api.env["RECSYS_RATE_LIMIT_PER_MINUTE"] == "0"
    assert api.env["RECSYS_API_KEYS"] == demo_tool.DEMO_API_KEY
    # the API asks the demo's MLflow UI for the `champion` alias (a move there is served within a poll)
    assert api.env["RECSYS_REGISTRY_URL"] == services["MLflow UI"].url
    for svc in services.values():
        assert svc.env["RECSYS_SOURCE"] == "event_log", svc.name
        assert EventLogSource.model_validate_json(svc.env["RECSYS_EVENT_LOG"]) == PAST
        assert svc.env["RECSYS_DRIFT_WINDOW_MINUTES"] == "1"
        assert svc.env["RECSYS_API_URL"] == f"http://127.0.0.1:{api_port}"
        assert svc.env["RECSYS_STORAGE_URI"] == settings.storage_uri
    assert "RECSYS_AB_CHALLENGER_SHARE" not in services["Console"].env
    if "Redis (cache and live state)" in services:
        assert services["Console"].env["RECSYS_REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/0"

    plain = {svc.name: svc for svc in demo_tool.demo_services(settings)}
    assert "RECSYS_AB_CHALLENGER_SHARE" not in plain["Recommendation API"].env


def test_earlier_replays_and_a_champion_trained_on_the_future_are_set_aside(tmp_path: Path) -> None:
    settings = demo_tool.demo_settings(_settings(tmp_path), PAST)
    store = Storage.from_settings(settings)
    cut = "1998-03-07T02:21:09+00:00"
    pointer = {"model_version": "EASE-1", "data_until": "2026-11-27T10:00:00+00:00"}
    store.write_text(json.dumps(pointer), "artifacts", "CHAMPION.json")
    store.write_table(pd.DataFrame({"user_id": ["1"]}), live.LIVE_EVENTS, "2026-11-27T1000.parquet")
    events = settings.events_path()
    events.mkdir(parents=True)
    (events / "events-20261127T100000-host-1-0001-abcdef.csv").write_text("user_id\n1\n")
    work = demo_tool.replay_workdir(settings)

    demo_tool.set_aside_earlier_replays(settings, work, cut)
    assert not store.exists("artifacts", "CHAMPION.json")
    assert live.stored_windows(store) == [] and live.segments(events) == []
    (aside,) = (work / "earlier").iterdir()
    assert json.loads((aside / "CHAMPION.json").read_text()) == pointer
    assert (aside / live.LIVE_EVENTS / "2026-11-27T1000.parquet").is_file()
    assert [p.name for p in (aside / "events").iterdir()] == ["events-20261127T100000-host-1-0001-abcdef.csv"]

    # a champion trained on the past stays
    store.write_text(
        json.dumps({"model_version": "EASE-2", "data_until": "1998-03-07T02:00:00+00:00"}), "artifacts", "CHAMPION.json"
    )
    demo_tool.set_aside_earlier_replays(settings, work, cut)
    assert store.exists("artifacts", "CHAMPION.json")


# ---------------------------------------------------------------------------------------------
# The services, and the whole demo
# ---------------------------------------------------------------------------------------------


class _Descendants(threading.Thread):
    """Every process below `pid` seen while it runs, sampled twice a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}

    def run(self) -> None:
        while self.root.is_running() and self.root.status() != psutil.STATUS_ZOMBIE:
            try:
                for child in self.root.children(recursive=True):
                    self.seen.setdefault((child.pid, child.create_time()), child)
            except psutil.Error:
                pass
            time.sleep(0.5)

    def alive(self) -> list[psutil.Process]:
        out = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out


@pytest.mark.integration
def test_demo_serves_every_ui_and_stops_cleanly(tmp_path: Path) -> None:
    env, ports = _env(tmp_path)
    code = (
        "from recsys_assets.tools.demo import serve; "
        "from recsys_assets.contract.settings import get_settings; serve(get_settings())"
    )
    # started the way a script's background job is, with SIGINT ignored: Ctrl-C must still stop it
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        urls = [
            f"http://127.0.0.1:{ports['dagster']}/server_info",
            f"http://127.0.0.1:{ports['mlflow']}/health",
            f"http://127.0.0.1:{ports['api']}/health",
            f"http://127.0.0.1:{ports['console']}/_stcore/health",
        ]
        deadline = time.monotonic() + 120
        pending = set(urls)
        while pending and time.monotonic() < deadline:
            for url in list(pending):
                try:
                    if urllib.request.urlopen(url, timeout=2).status == 200:
                        pending.discard(url)
                except OSError:
                    pass
            time.sleep(1)
        assert not pending, f"not serving: {pending}"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    out = proc.stdout.read()
    for name in ("dagster", "mlflow", "api", "console"):
        assert f"http://127.0.0.1:{ports[name]}" in out
    assert f"redis://127.0.0.1:{ports['redis']}" in out and "demo-key" in out
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.integration
def test_demo_ci_trains_on_the_past_replays_the_future_and_exits(tmp_path: Path) -> None:
    env, ports = _env(tmp_path)
    cmd = [
        *(sys.executable, "-m", "recsys_assets", "demo", "--ci"),
        *("--budget", "smoke", "--models", "Pop,EASE", "--replay-seconds", "30"),
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    watch = _Descendants(proc.pid)
    watch.start()
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
    watch.join(timeout=5)
    tail = "\n".join(line for line in out.splitlines() if " - dagster - " not in line)[-4000:]
    assert proc.returncode == 0, tail
    print(f"demo --ci took {time.monotonic() - started:.0f} s")

    for name in ("dagster", "mlflow", "api", "console"):
        assert f"http://127.0.0.1:{ports[name]}" in out, name
    assert "event log agrees with the simulator" in out

    data = tmp_path / "data"
    split = json.loads((data / "replay" / "split.json").read_text())
    champion = json.loads((data / "artifacts" / "CHAMPION.json").read_text())
    assert pd.Timestamp(champion["data_until"]) < pd.Timestamp(split["cut"])  # trained on the past only

    runs = pd.read_parquet(data / "replay_runs.parquet").set_index("arm")
    assert {"champion", "challenger"} <= set(runs.index)
    for arm in ("champion", "challenger"):
        assert runs.loc[arm, "lists"] > 0 and runs.loc[arm, "clicks"] > 0, runs
        assert runs.loc[arm, "counted_from"] == "event_log" and bool(runs.loc[arm, "consistent"])
    assert runs.loc["challenger", "model_versions"].startswith("Popularity")

    windows = list((data / live.LIVE_EVENTS).glob("*.parquet"))
    segments = live.segments(data / "events")
    assert windows or segments

    assert watch.seen, "no service was started"
    time.sleep(1)
    assert not watch.alive(), [(p.pid, p.cmdline()) for p in watch.alive()]
