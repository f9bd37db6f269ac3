"""Starting and stopping the processes the tools run, and the Dagster instance folder they share.

The demo's services, the closed loop's `dagster dev` and API, the replay's Redis and the load
generator's API all start here: each in its own process group with its output in a log file, and
each group stopped as a whole. `prepare_dagster_home` writes the instance `make pipeline` and
`make demo` use; `settings_env` hands the settings to another process as `RECSYS_*` variables.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from recsys_assets.contract.settings import Settings

if TYPE_CHECKING:
    import dagster as dg

# The project folder: the services run from it (`workspace.yaml`, `console/app.py`).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 300.0  # `dagster dev` loads the code location (torch, RecBole) before it answers


# ---------------------------------------------------------------------------------------------
# Ports and readiness
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Return once 127.0.0.1:`port` accepts connections; fail early if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def listening(host: str, port: int) -> bool:
    """Whether something accepts connections on `host:port` now."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, http.client.HTTPException):  # refused, reset, or not HTTP yet
        return False


def wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Return once `url` answers 200; fail if `proc` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if http_ok(url):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready at {url} after {timeout}s")


@dataclass
class Service:
    """One process `make demo` starts: what it runs, where a user finds it, and how to tell it is up."""

    name: str
    cmd: list[str]
    url: str
    env: dict[str, str] = field(default_factory=dict)  # the whole environment of the process
    health: str = ""  # answers 200 once up; a redis:// URL: its port accepts connections
    log: str = ""  # file name under the logs folder

    def up(self) -> bool:
        if self.health.startswith("redis://"):
            parsed = urlparse(self.health)
            return listening(parsed.hostname or "127.0.0.1", parsed.port or 6379)
        return http_ok(self.health)


def tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file ("" if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(
    services: list[Service], procs: list[subprocess.Popen], logs: Path, timeout: float = READY_TIMEOUT
) -> bool:
    """Wait until every service answers its health URL; False (with the log's tail) if one exits or is late."""
    started = time.monotonic()
    pending = list(range(len(services)))
    while pending:
        for i in list(pending):
            svc, proc = services[i], procs[i]
            if proc.poll() is not None:
                print(f"{svc.name} exited with {proc.returncode}; the end of {logs / svc.log}:")
                print(tail(logs / svc.log))
                return False
            if svc.up():
                pending.remove(i)
                print(f"  {svc.name} is up ({time.monotonic() - started:.0f} s)", flush=True)
        if pending and time.monotonic() - started > timeout:
            for i in pending:
                print(f"{services[i].name} not up after {timeout:.0f} s; the end of {logs / services[i].log}:")
                print(tail(logs / services[i].log))
            return False
        time.sleep(1)
    return True


# ---------------------------------------------------------------------------------------------
# Processes: started in their own group, stopped as a group
# ---------------------------------------------------------------------------------------------


def spawn(
    cmd: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None, header: bool = False
) -> subprocess.Popen:
    """Start `cmd` from the project folder in a new process group (a signal to the group reaches what it
    starts too), its output appended to `log` (discarded without one); `header`: a line with the time
    and the command first."""
    if log is None:
        return subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    with log.open("ab") as out:
        if header:
            out.write(f"--- {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC: {' '.join(cmd)}\n".encode())
            out.flush()
        return subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_all(procs: Sequence[subprocess.Popen], timeout: float = 20, sig: int = signal.SIGINT) -> None:
    """`sig` to each process group (SIGINT: `dagster dev` ignores SIGTERM from a script), then SIGKILL what
    is left of a group at the deadline: its leader, or what the leader left behind (a code server, a run)."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        while group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_alive(p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (the leader counts until it is waited for)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def interrupt_on_sigterm():
    """SIGTERM stops a foreground command the way Ctrl-C does, and so does SIGINT even when it was started
    with it ignored (a script's background job inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt); returns the SIGTERM handler it replaced (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return signal.signal(signal.SIGTERM, interrupt)


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """A second Ctrl-C (or SIGTERM) must not cut a shutdown short and leave services running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Redis, and the API of a replay
# ---------------------------------------------------------------------------------------------


def redis_command(port: int) -> list[str]:
    """A `redis-server` on 127.0.0.1:`port` without persistence (live state of one run only)."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def start_redis(log: Path | None = None) -> tuple[subprocess.Popen | None, str]:
    """A fresh Redis on a free port and its URL; (None, "") without `redis-server` on the PATH."""
    if shutil.which("redis-server") is None:
        return None, ""
    port = free_port()
    return spawn(redis_command(port), env=None, log=log), f"redis://127.0.0.1:{port}/0"


# The candidate a replay's API serves to half of the users (the A/B split), without a rate limit.
POPULARITY_ARM = "candidates/Popularity"
REPLAY_API_ENV = {
    "RECSYS_AB_CHALLENGER_SHARE": "0.5",
    "RECSYS_AB_CHALLENGER_PATH": POPULARITY_ARM,
    "RECSYS_RATE_LIMIT_PER_MINUTE": "0",
}


# ---------------------------------------------------------------------------------------------
# The Dagster instance, and the settings of another process
# ---------------------------------------------------------------------------------------------

# The instance `make demo` and `make pipeline` use. Runs the daemon launches (sensors, schedule, the
# UI) wait in its queue: training runs one at a time, live windows one at a time and in order (a
# window's drift reference is the window before it), the two beside each other.
INSTANCE_MARKER = "# Dagster instance written by `python -m recsys_assets`"
INSTANCE_YAML = f"""{INSTANCE_MARKER} (edit freely: remove this line to keep your edits)
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: recsys/exclusive
        value: training
        limit: 1
      - key: recsys/exclusive
        value: live_windows
        limit: 1
telemetry:
  enabled: false
"""


def instance_yaml(settings: Settings) -> str:
    """The instance configuration; with Blob storage, step logs go to Blob too."""
    import yaml

    from recsys_assets.defs.compute_logs import compute_logs_config

    text = INSTANCE_YAML
    section = compute_logs_config(settings)
    if section is not None:
        text += yaml.safe_dump({"compute_logs": section}, sort_keys=False)
    if settings.log_format == "json":
        # Dagster's own system lines (a step's subprocess starting, which it logs before the run's loggers
        # exist) go to its text console logger at DEBUG: at INFO, every line of a run is the JSON logger's
        text += yaml.safe_dump({"python_logs": {"python_log_level": "INFO"}}, sort_keys=False)
    return text


def prepare_dagster_home(settings: Settings) -> Path:
    """The settings' Dagster home, made if missing, with its `dagster.yaml` (unless the user edited it);
    `DAGSTER_HOME` of this process points at it."""
    home = Path(settings.dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or config.read_text().startswith(INSTANCE_MARKER):
        config.write_text(instance_yaml(settings))
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def open_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent Dagster instance of the settings' home (the one `dagster dev` of the tools uses)."""
    import dagster as dg

    prepare_dagster_home(settings)
    return dg.DagsterInstance.get()


# The settings another process (the services, `dagster dev`) needs to run the same loop.
SETTINGS_ENV_KEYS = (
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
    "log_format",
)


def settings_env(settings: Settings) -> dict[str, str]:
    """The `RECSYS_*` variables that reproduce the settings of the loop in another process."""
    env = {}
    for key in SETTINGS_ENV_KEYS:
        value = getattr(settings, key)
        if value is not None:
            env[f"RECSYS_{key.upper()}"] = str(value)
    if settings.event_log is not None:
        env["RECSYS_EVENT_LOG"] = settings.event_log.model_dump_json()
    env["RECSYS_RETRAIN_MODELS"] = json.dumps(settings.retrain_models)
    env["RECSYS_DRIFT_FEATURES"] = json.dumps(settings.drift_features)
    env["RECSYS_RETRAIN_PROTOCOLS"] = json.dumps(settings.retrain_protocols)
    env["RECSYS_CANARY"] = settings.canary.model_dump_json()
    return env


def worker_pids(master_pid: int) -> list[int]:
    """The live worker processes of a `python -m serving` master: forked from it (same command line), or
    spawned by multiprocessing (uvicorn's own supervisor, `spawn_main`); not its resource tracker."""
    import psutil  # the dev extra's: only the chaos run and the fault tests count workers

    master = psutil.Process(master_pid)
    own = master.cmdline()
    pids = []
    for child in master.children():
        # a killed worker stays a zombie until its master reaps it
        with contextlib.suppress(psutil.Error):
            cmd = child.cmdline()
            if child.status() != psutil.STATUS_ZOMBIE and (cmd == own or "spawn_main" in " ".join(cmd)):
                pids.append(child.pid)
    return pids
