"""What the load generator loads: `redis-server` and API processes on free ports of 127.0.0.1, and the
CPU and memory they use."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from recsys_assets.tools.loadgen.openloop import check_local
from recsys_assets.tools.loadgen.workload import API_KEY
from recsys_assets.tools.services import free_port, redis_command, spawn, stop_all, wait_for_port


def progress(text: str) -> None:
    """A line of progress on stderr (the figures go to stdout)."""
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); an answer cut off mid-way (a worker killed while it answered) raises `ConnectionError`,
    an `OSError` like every other failure to get an answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except http.client.HTTPException as exc:
        raise ConnectionError(f"GET {url}: the answer was cut off ({exc!r})") from exc


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is not None and proc.poll() is None:
        stop_all([proc], timeout=timeout, sig=signal.SIGTERM)


class RedisProcess:
    """A `redis-server` without persistence on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        if not shutil.which("redis-server"):
            raise SystemExit("redis-server not found (Debian: apt-get install redis-server)")
        self.proc = spawn(redis_command(self.port))
        wait_for_port(self.port, 30, self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)


class ApiProcess:
    """`python -m serving` (what `make serve` runs) with the bench's settings, logging to a file."""

    def __init__(self, env: dict[str, str], workers: int, log_path: Path) -> None:
        self.port = free_port()
        # the bench's own settings only: an exported RECSYS_* would make runs differ silently
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        self.env |= env | {"RECSYS_API_HOST": "127.0.0.1", "RECSYS_API_PORT": str(self.port)}
        self.env["RECSYS_API_WORKERS"] = str(workers)
        self.workers = workers
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ApiProcess:
        self.proc = spawn([sys.executable, "-m", "serving"], self.env, self.log_path)
        wait_for_port(self.port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        # every worker loads the model; /ready answers 200 from each once it is loaded
        ready = 0
        while ready < 4 * self.workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"API on {self.url} not ready; see {self.log_path}")
            try:
                ready = ready + 1 if http_get(f"{self.url}/ready", timeout=2)[0] == 200 else 0
            except OSError:
                ready = 0
            time.sleep(0.1)
        return self

    def processes(self) -> list[Any]:
        """psutil handles of the server: the `python -m serving` process and its workers."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def cpu_seconds(procs: Sequence[Any]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(Exception):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss_bytes(procs: Sequence[Any]) -> dict[str, int]:
    """Resident memory per process, named by role: the server process, its workers, helpers."""
    out = {}
    for n, p in enumerate(procs):
        with contextlib.suppress(Exception):
            cmd = " ".join(p.cmdline())
            # the rest are the master's children: its workers (forked, or spawned) and a resource tracker
            role = "tracker" if "resource_tracker" in cmd else "worker"
            out[f"{role}-{p.pid}" if n else f"main-{p.pid}"] = p.memory_info().rss
    return out


class CpuMeter:
    """CPU used from its creation to `read()`, in cores: by the API's processes, Redis, this process (the
    generator), finished child processes (wrk), and everything else on the machine, which competes."""

    def __init__(self, stack: Stack) -> None:
        import psutil

        self._psutil = psutil
        self.servers, self.redis = stack.server_processes(), stack.redis_processes()
        self.t0 = time.monotonic()
        self.api0, self.redis0 = cpu_seconds(self.servers), cpu_seconds(self.redis)
        self.times0, self.machine0 = os.times(), psutil.cpu_times()

    @staticmethod
    def _busy(t: Any) -> float:
        return t.user + t.nice + t.system + t.irq + t.softirq

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        t, machine = os.times(), self._psutil.cpu_times()
        used = {
            "api": cpu_seconds(self.servers) - self.api0,
            "redis": cpu_seconds(self.redis) - self.redis0,
            "generator": (t.user + t.system) - (self.times0.user + self.times0.system),
            "wrk": (t.children_user + t.children_system) - (self.times0.children_user + self.times0.children_system),
        }
        busy = self._busy(machine) - self._busy(self.machine0)
        out = {f"{k}_cpu_cores": round(v / wall, 2) for k, v in used.items() if v > 0 or k != "wrk"}
        out["other_cpu_cores"] = round(max(0.0, busy - sum(used.values())) / wall, 2)
        out["steal_cpu_cores"] = round((machine.steal - self.machine0.steal) / wall, 2)
        return out


def await_quiet(wait: float, below: float) -> None:
    """Wait up to `wait` seconds for the machine to use less than `below` cores (2-second samples):
    on a shared machine, a figure taken while something else runs measures that too."""
    import psutil

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        t0 = psutil.cpu_times()
        time.sleep(2.0)
        t1 = psutil.cpu_times()
        busy = (CpuMeter._busy(t1) - CpuMeter._busy(t0)) / 2.0
        if busy < below:
            return
        progress(f"machine busy ({busy:.2f} cores); waiting")


@dataclasses.dataclass
class Stack:
    """Redis and one or more API processes sharing it, the storage and one events folder."""

    redis: RedisProcess | None
    apis: list[ApiProcess]
    events_dir: Path
    external_url: str | None = None

    @property
    def url(self) -> str:
        return self.external_url or self.apis[0].url

    def server_processes(self) -> list[Any]:
        return [p for api in self.apis for p in api.processes()]

    def redis_processes(self) -> list[Any]:
        import psutil

        if self.redis is None or self.redis.proc is None:
            return []
        try:
            return [psutil.Process(self.redis.proc.pid)]
        except psutil.NoSuchProcess:  # stopped by a soak's `redis_restart` fault
            return []


@contextlib.contextmanager
def stack(
    storage: Path,
    work: Path,
    workers: int = 2,
    instances: int = 1,
    cache_ttl: int | None = None,
    extra_env: dict[str, str] | None = None,
    url: str | None = None,
    keep_events: bool = False,
) -> Iterator[Stack]:
    """Start Redis and `instances` API processes of `workers` workers each; stop them on exit, and
    remove their event-log segments unless `keep_events` (a soak writes hundreds of MB).

    With `url`, nothing is started: the stack is that running API (on 127.0.0.1).
    """
    events_dir = work / f"events-{uuid.uuid4().hex[:6]}"
    if url is not None:
        yield Stack(redis=None, apis=[], events_dir=events_dir, external_url=check_local(url))
        return
    redis = RedisProcess().start()
    env = {
        "RECSYS_STORAGE_URI": str(storage),
        "RECSYS_EVENTS_DIR": str(events_dir),
        "RECSYS_REDIS_URL": redis.url,
        "RECSYS_API_KEYS": f"{API_KEY}:events",
        "RECSYS_RATE_LIMIT_PER_MINUTE": "0",
        **({"RECSYS_CACHE_TTL_SECONDS": str(cache_ttl)} if cache_ttl is not None else {}),
        **(extra_env or {}),
    }
    apis: list[ApiProcess] = []
    try:
        for n in range(instances):
            apis.append(ApiProcess(env, workers, work / f"api-{workers}w-{n}-{events_dir.name}.log").start())
        yield Stack(redis=redis, apis=apis, events_dir=events_dir)
    finally:
        for api in apis:
            api.stop()
        redis.stop()
        if not keep_events:
            shutil.rmtree(events_dir, ignore_errors=True)


def cache_hit_ratio(url: str) -> float | None:
    """hit / (hit + miss) of the list cache, from `/metrics` (all workers in multiprocess mode)."""
    status, body = http_get(f"{url}/metrics")
    if status != 200:
        return None
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^recsys_cache_requests_total\{result="(\w+)"\} (\S+)$', body.decode(), re.M)
    }
    looked = counts.get("hit", 0.0) + counts.get("miss", 0.0)
    return round(counts.get("hit", 0.0) / looked, 3) if looked else None
