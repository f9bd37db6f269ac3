"""Load benchmarks of the recommendation API: `python -m recsys_assets.tools.loadgen <command>`
(`make bench`, `make soak`).

Each command starts what users run (a `redis-server` and `python -m serving` with
`RECSYS_API_WORKERS` workers and rate limiting off) on free ports of 127.0.0.1, loads it, and stops
it. `--storage` names a storage folder holding a champion artifact; when it has none, the pipeline
makes one first (`python -m recsys_assets pipeline --budget smoke --models Pop,EASE,MultiVAE`, a
Hybrid over MovieLens-100k). `--url` targets an API already running on 127.0.0.1 instead.

The load is open-loop: requests are scheduled at a fixed arrival rate whatever the answers, and
each latency runs from the request's scheduled time, so a stalled server shows as latency rather
than as fewer requests (no coordinated omission). The mix: `--event-share` (10%) single click
events `POST /v1/events` with an API key, half of them answering a served list (its
`recommendation_id`, one of its items); the rest `GET /v1/users/{user_id}/recommendations?k=10`
for a user drawn from all of the artifact's users plus `--unknown-share` (5%) users it does not know.

Commands:

* `latency`: a fixed rate for a duration after a warm-up (200/s for 60 s): p50/p95/p99, throughput,
  errors; then the in-process p50 of the same users' lists (`Scorer.topk_one`, and the API's
  `recommend` without HTTP) on the same artifact, and the ratio of the API's p50 to it;
* `ramp`: fixed rates in steps (30 s each) until p95 reaches `--max-p95-ms` or a request fails;
  then `wrk` with a Lua script of the same mix, closed-loop, for the saturation throughput;
* `ingest`: batches (100, 500 events) from 4 clients for 20 s, each on a kept-alive connection (or a
  new connection per batch with `--connection-per-batch`): events acknowledged (202) per second, then
  the acknowledged events counted in the event-log segments;
* `soak`: a fixed rate for a long time (100/s, 30 min) with the resident memory of the API's
  processes sampled every 10 s: growth after the warm-up, errors, latency per minute;
* `scale`: for 1, 2, 4 workers a fixed rate and a `wrk` run; then an event posted to one API
  process and the next list from another, both on one Redis;
* `all`: latency, ramp, ingest (both connection modes) and scale, in that order.

Every command prints its figures as JSON (also written to `--out`) with the command line, the
machine, the date, and the CPU used during each run by the API's processes, Redis, the generator,
`wrk` and every other process; progress goes to stderr. On a shared machine, `--quiet-wait` waits for
it to be idle before each run and repeats a run that other processes disturbed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from recsys_assets.contract.artifact import CHAMPION_POINTER
from recsys_assets.tools.services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = Path(tempfile.gettempdir()) / "recsys-apibench-data"
API_KEY = "bench-events-key"
CHAMPION_COMMAND = ("recsys_assets", "pipeline", "--budget", "smoke", "--models", "Pop,EASE,MultiVAE")
GET, POST = 0, 1
KINDS = ("get_recommendations", "post_event")


# --- workload -----------------------------------------------------------------------------------


class _ServedItem(msgspec.Struct):
    item_id: str


class _Served(msgspec.Struct):
    recommendation_id: str
    user_id: str
    items: list[_ServedItem]


_SERVED = msgspec.json.Decoder(_Served)
_ENCODE = msgspec.json.Encoder()


@dataclasses.dataclass
class Workload:
    """The request mix: who asks for lists, which events are posted, with what key."""

    user_ids: list[str]
    item_ids: list[str]
    api_key: str = API_KEY
    event_share: float = 0.1
    unknown_share: float = 0.05
    unknown_users: int = 500
    answer_share: float = 0.5
    k: int = 10
    seed: int = 0
    tag: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.served: collections.deque[_Served] = collections.deque(maxlen=1000)
        self.n_events = 0

    def user(self) -> str:
        if self.rng.random() < self.unknown_share:
            return f"bench-new-{self.rng.randrange(self.unknown_users)}"
        return self.rng.choice(self.user_ids)

    def next_request(self) -> tuple[int, str, bytes | None, str | None]:
        """(kind, path, body, user of a list) of the next request."""
        if self.rng.random() >= self.event_share:
            user = self.user()
            return GET, f"/v1/users/{urllib.parse.quote(user, safe='')}/recommendations?k={self.k}", None, user
        self.n_events += 1
        event = {"event_type": "click", "event_id": f"bench-{self.tag}-{self.n_events}"}
        if self.served and self.rng.random() < self.answer_share:
            shown = self.rng.choice(self.served)
            event |= {"user_id": shown.user_id, "recommendation_id": shown.recommendation_id}
            event["item_id"] = self.rng.choice(shown.items).item_id if shown.items else self.rng.choice(self.item_ids)
        else:
            event |= {"user_id": self.user(), "item_id": self.rng.choice(self.item_ids)}
        return POST, "/v1/events", _ENCODE.encode(event), None

    def note_served(self, body: bytes) -> None:
        """Keep a served list for later events to answer; raises on a body that is not a list."""
        self.served.append(_SERVED.decode(body))

    def event_batch(self, n: int, prefix: str) -> bytes:
        """A batch of `n` view/click events with ids `<prefix>-<i>`."""
        rng = self.rng
        return _ENCODE.encode(
            [
                {
                    "user_id": rng.choice(self.user_ids),
                    "item_id": rng.choice(self.item_ids),
                    "event_type": "click" if rng.random() < 0.3 else "view",
                    "event_id": f"{prefix}-{i}",
                }
                for i in range(n)
            ]
        )


# --- the open-loop load generator ----------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    kind: int
    scheduled: float  # seconds since the start of the schedule
    latency: float  # seconds from the scheduled time to the whole answer read
    lag: float  # seconds from the scheduled time to the generator starting the request
    status: int  # 0: no answer
    error: str | None
    user: str | None  # whose list (GET)


@dataclasses.dataclass
class LoadRun:
    """The samples of one open-loop run, and the window they are summarised over."""

    rate: float
    warmup: float
    duration: float
    samples: list[Sample]
    generator_cpu_seconds: float
    wall_seconds: float

    def measured(self) -> list[Sample]:
        return [s for s in self.samples if self.warmup <= s.scheduled < self.warmup + self.duration]

    def summary(self) -> dict[str, Any]:
        """Percentiles (ms) overall and per kind, throughput, errors, and how late the generator sent."""
        window = self.measured()
        ends = [s.scheduled + s.latency for s in window if s.error is None]
        span = max(ends) - self.warmup if ends else float("nan")
        errors = collections.Counter(s.error for s in window if s.error is not None)
        out: dict[str, Any] = {
            "offered_rps": self.rate,
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "requests": len(window),
            "ok": len(ends),
            "errors": sum(errors.values()),
            "error_kinds": dict(errors.most_common(5)),
            "errors_in_warmup": sum(s.error is not None for s in self.samples if s.scheduled < self.warmup),
            # completions over the time from the window's start to its last answer: below the offered
            # rate when answers fall behind
            "throughput_rps": round(len(ends) / span, 1) if ends else 0.0,
            **latency_stats([s.latency for s in window]),
            "send_lag_ms_p99": round(_pct([s.lag for s in window], 99) * 1e3, 2),
            "generator_cpu_cores": round(self.generator_cpu_seconds / self.wall_seconds, 2),
        }
        for kind, name in enumerate(KINDS):
            part = [s.latency for s in window if s.kind == kind]
            out[name] = {"requests": len(part), **latency_stats(part)}
        return out

    def per_interval(self, seconds: float = 60.0) -> list[dict[str, Any]]:
        """The summary's percentiles per interval of the schedule (the soak's minutes)."""
        rows = []
        for lo in np.arange(self.warmup, self.warmup + self.duration, seconds):
            part = [s for s in self.samples if lo <= s.scheduled < lo + seconds]
            if part:
                errs = sum(s.error is not None for s in part)
                rows.append({"from_s": float(lo), "requests": len(part), "errors": errs, **latency_stats(part)})
        return rows


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def latency_stats(values: Sequence[float] | Sequence[Sample]) -> dict[str, float]:
    if values and isinstance(values[0], Sample):
        values = [s.latency for s in values]  # type: ignore[union-attr]
    arr = np.asarray(values, dtype=np.float64) * 1e3
    if not len(arr):
        return {}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(arr.max()), 2),
    }


def _check_local(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if not local:
        raise SystemExit(f"refusing to load {url}: the benchmarks only target 127.0.0.1")
    return url.rstrip("/")


async def open_loop(
    url: str,
    workload: Workload,
    rate: float,
    duration: float,
    warmup: float = 0.0,
    timeout: float = 10.0,
    connections: int = 256,
    on_tick: Callable[[float], None] | None = None,
) -> LoadRun:
    """Send `rate` requests per second for `warmup + duration` seconds, whatever the answers.

    A request waits for a free connection (at most `connections`) after its scheduled time, and that
    wait counts in its latency. `on_tick(elapsed)` is called about once a second (the soak's sampler).
    """
    import aiohttp
    import psutil

    url = _check_local(url)
    samples: list[Sample] = []
    pending: set[asyncio.Task[None]] = set()
    key_headers = {"X-API-Key": workload.api_key, "Content-Type": "application/json"}
    me = psutil.Process()
    cpu0, wall0 = sum(me.cpu_times()[:2]), time.monotonic()

    async def one(
        session: aiohttp.ClientSession, kind: int, path: str, body: bytes | None, user: str | None, at: float
    ) -> None:
        sent = time.perf_counter()
        status, error = 0, None
        try:
            if kind == GET:
                async with session.get(path) as resp:
                    status, data = resp.status, await resp.read()
                if status == 200:
                    try:
                        workload.note_served(data)
                    except msgspec.DecodeError:
                        error = "bad body"
            else:
                async with session.post(path, data=body, headers=key_headers) as resp:
                    status, data = resp.status, await resp.read()
            if error is None and status != (200 if kind == GET else 202):
                error = f"HTTP {status}"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        done = time.perf_counter()
        samples.append(Sample(kind, at - start, done - at, sent - at, status, error, user))

    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(url, connector=connector, timeout=client_timeout) as session:
        total = round(rate * (warmup + duration))
        # perf_counter, not loop.time(): uvloop's clock has millisecond steps
        start = time.perf_counter() + 0.05
        next_tick = 1.0
        for i in range(total):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            kind, path, body, user = workload.next_request()
            task = asyncio.create_task(one(session, kind, path, body, user, at))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if on_tick is not None and at - start >= next_tick:
                next_tick += 1.0
                on_tick(at - start)
        if pending:
            await asyncio.wait(list(pending))
    samples.sort(key=lambda s: s.scheduled)
    return LoadRun(
        rate=rate,
        warmup=warmup,
        duration=duration,
        samples=samples,
        generator_cpu_seconds=sum(me.cpu_times()[:2]) - cpu0,
        wall_seconds=time.monotonic() - wall0,
    )


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (a lighter generator), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --- the stack: redis-server and the API as processes ---------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
        cmd = ["redis-server", "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
        if self.proc is not None:
            self._log.close()
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
            role = "worker" if "spawn_main" in cmd else "tracker" if "resource_tracker" in cmd else "server"
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
        _progress(f"machine busy ({busy:.2f} cores); waiting")


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
        return [psutil.Process(self.redis.proc.pid)]


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
        yield Stack(redis=None, apis=[], events_dir=events_dir, external_url=_check_local(url))
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


# --- data -------------------------------------------------------------------------------------------


def ensure_champion(storage: Path) -> None:
    """Make a champion artifact under `storage` with the pipeline (smoke budget) unless there is one."""
    if (storage / Path(*CHAMPION_POINTER)).is_file():
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {
        "RECSYS_STORAGE_URI": str(storage),
        "RECSYS_DAGSTER_HOME": f"{storage}.dagster",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
    }
    print(f"no champion under {storage}: running python -m {' '.join(CHAMPION_COMMAND)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", *CHAMPION_COMMAND], cwd=ROOT, env=env, check=True)


def load_champion(storage: Path) -> Any:
    """The champion artifact of `storage` as the API loads it (`serving.model.LoadedModel`)."""
    from recsys_assets.contract.artifact import read_from_storage, read_pointer
    from recsys_assets.contract.storage import Storage
    from serving.model import LoadedModel

    store = Storage.from_uri(str(storage))
    parts = tuple(read_pointer(store)["path"])
    return LoadedModel.build(read_from_storage(store, *parts), "/".join(parts))


def in_process_p50(model: Any, user_ids: Sequence[str], k: int = 10) -> dict[str, Any]:
    """Median time of one user's list without HTTP: `Scorer.topk_one` alone, and the API's
    `build_history` + `recommend` (reasons included), each path in its own loop, three rounds."""
    from threadpoolctl import threadpool_limits

    from recsys_assets.contract.settings import Settings

    weights = Settings(_env_file=None).event_weights  # type: ignore[call-arg]
    t_topk: list[float] = []
    t_recommend: list[float] = []
    # the BLAS threads of an API worker (`python -m serving` sets one)
    with threadpool_limits(_blas_threads()):
        _time_lists(model, user_ids, k, weights, t_topk, t_recommend)
    return {
        "users": len(user_ids),
        "blas_threads": _blas_threads(),
        "topk_one_p50_ms": round(statistics.median(t_topk) * 1e3, 3),
        "recommend_p50_ms": round(statistics.median(t_recommend) * 1e3, 3),
    }


def _blas_threads() -> int:
    from serving.__main__ import BLAS_THREADS_ENV

    given = next((os.environ[n] for n in BLAS_THREADS_ENV if os.environ.get(n)), "1")
    return int(given)


def _time_lists(
    model: Any, user_ids: Sequence[str], k: int, weights: dict[str, float], t_topk: list, t_recommend: list
) -> None:
    from serving.recommend import build_history, recommend

    scorer, history = model.artifact.scorer, model.artifact.history
    for _ in range(3):
        for user_id in user_ids:
            u = model.user_index.get(user_id, -1)
            t0 = time.perf_counter()
            lo, hi = (history.indptr[u], history.indptr[u + 1]) if u >= 0 else (0, 0)
            idx, w = history.indices[lo:hi], history.data[lo:hi]
            scorer.topk_one(idx, w, k, user=u, exclude=idx)
            t_topk.append(time.perf_counter() - t0)
        for user_id in user_ids:
            t0 = time.perf_counter()
            recommend(model, build_history(model, user_id, [], weights), k, None, True)
            t_recommend.append(time.perf_counter() - t0)


def count_logged(events_dir: Path, prefix: str) -> tuple[int, int]:
    """(rows, distinct ids) of events whose id starts with `prefix`, over every segment."""
    rows, ids = 0, set()
    for path in sorted(events_dir.glob("events-*.csv")):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row["event_id"].startswith(prefix):
                    rows += 1
                    ids.add(row["event_id"])
    return rows, len(ids)


# --- commands ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    storage: Path
    work: Path
    model: Any

    def workload(self, **kw: Any) -> Workload:
        a = self.args
        return Workload(
            user_ids=self.model.artifact.user_ids.tolist(),
            item_ids=self.model.artifact.item_ids.tolist(),
            api_key=a.api_key,
            event_share=a.event_share,
            unknown_share=a.unknown_share,
            k=a.k,
            seed=a.seed,
            **kw,
        )

    def stack(self, workers: int | None = None, **kw: Any) -> contextlib.AbstractContextManager[Stack]:
        a = self.args
        return stack(
            self.storage,
            self.work,
            workers=workers or a.workers,
            cache_ttl=a.cache_ttl,
            url=a.url,
            extra_env=dict(kv.split("=", 1) for kv in a.api_env),
            keep_events=a.keep_events,
            **kw,
        )


def measure(ctx: Context, st: Stack, rate: float, duration: float, warmup: float) -> tuple[dict[str, Any], LoadRun]:
    """One open-loop run with the CPU the server, Redis, the generator and the rest used during it.

    With `--quiet-wait`, a run during which other processes used `--quiet-below` cores or more is
    repeated (up to `--noisy-retries` times): it measured them as much as the API.
    """
    a = ctx.args
    for attempt in range(a.noisy_retries + 1):
        await_quiet(a.quiet_wait, a.quiet_below)
        meter = CpuMeter(st)
        run = run_async(open_loop(st.url, ctx.workload(), rate, duration, warmup, a.timeout, a.connections))
        out = run.summary() | meter.read() | {"noisy_retries": attempt}
        if not a.quiet_wait or out["other_cpu_cores"] < a.quiet_below or attempt == a.noisy_retries:
            break
        _progress(f"{rate}/s: other processes used {out['other_cpu_cores']} cores; measuring again")
    out["cache_hit_ratio"] = cache_hit_ratio(st.url)
    return out, run


def cmd_latency(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    with ctx.stack() as st:
        result, run = measure(ctx, st, a.rate, a.duration, a.warmup)
        users = [s.user for s in run.measured() if s.user is not None][: a.inprocess_users]
    inproc = in_process_p50(ctx.model, users, a.k)
    get_p50 = result["get_recommendations"]["p50_ms"]
    result["in_process"] = inproc | {
        "api_get_p50_over_topk_one_p50": round(get_p50 / inproc["topk_one_p50_ms"], 1),
        "api_get_p50_over_recommend_p50": round(get_p50 / inproc["recommend_p50_ms"], 1),
    }
    result["goal"] = _goal(result, a.goal_p95_ms, a.goal_p99_ms)
    return result


def _goal(result: dict[str, Any], p95: float, p99: float) -> dict[str, Any]:
    return {
        "p95_ms_max": p95,
        "p99_ms_max": p99,
        "met": bool(result["errors"] == 0 and result["p95_ms"] <= p95 and result["p99_ms"] <= p99),
    }


def cmd_ramp(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    steps: list[dict[str, Any]] = []
    with ctx.stack() as st:
        for n, rate in enumerate(a.rates):
            # the first step warms the cache and the connections for all later steps
            step, _ = measure(ctx, st, rate, a.step_duration, a.warmup if n == 0 else a.step_warmup)
            steps.append(step)
            _progress(f"ramp {rate}/s: p95 {step['p95_ms']} ms, {step['errors']} errors")
            if step["p95_ms"] >= a.max_p95_ms or step["errors"]:
                break
        sustained = [s["offered_rps"] for s in steps if s["p95_ms"] < a.max_p95_ms and not s["errors"]]
        wrk = run_wrk(ctx, st) if not a.no_wrk else None
    return {
        "max_p95_ms": a.max_p95_ms,
        "highest_sustained_rps": max(sustained) if sustained else None,
        "steps": steps,
        "wrk": wrk,
    }


def _progress(text: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


WRK_LUA = """-- the benchmark's mix for wrk, closed-loop: {get_pct}% GET recommendations, the rest POST /v1/events
local users = {{{users}}}
local items = {{{items}}}
local event_share = {event_share}
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  math.randomseed(1000 + tid)
end
function request()
  if math.random() < event_share then
    counter = counter + 1
    local body = string.format(
      '{{"user_id":"%s","item_id":"%s","event_type":"click","event_id":"wrk-{tag}-%d-%d"}}',
      users[math.random(#users)], items[math.random(#items)], tid, counter)
    return wrk.format("POST", "/v1/events",
      {{["Content-Type"] = "application/json", ["X-API-Key"] = "{key}"}}, body)
  end
  return wrk.format("GET", "/v1/users/" .. users[math.random(#users)] .. "/recommendations?k={k}")
end
"""


def _unit_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[m.group(2)]


def run_wrk(ctx: Context, st: Stack) -> dict[str, Any] | None:
    """Closed-loop saturation cross-check: `wrk` with the same mix, for `--wrk-duration` seconds."""
    a = ctx.args
    if not shutil.which("wrk"):
        return {"skipped": "wrk not installed"}
    wl = ctx.workload()
    users = [*wl.user_ids, *(f"bench-new-{i}" for i in range(int(len(wl.user_ids) * a.unknown_share)))]
    script = ctx.work / f"mix-{wl.tag}.lua"
    script.write_text(
        WRK_LUA.format(
            get_pct=round(100 * (1 - a.event_share)),
            users=",".join(json.dumps(urllib.parse.quote(u, safe="")) for u in users),
            items=",".join(json.dumps(i) for i in wl.item_ids),
            event_share=a.event_share,
            tag=wl.tag,
            key=a.api_key,
            k=a.k,
        )
    )
    cmd = [
        "wrk",
        f"-t{a.wrk_threads}",
        f"-c{a.wrk_connections}",
        f"-d{a.wrk_duration}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        st.url,
    ]
    await_quiet(a.quiet_wait, a.quiet_below)
    meter = CpuMeter(st)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.wrk_duration + 60).stdout
    cpu = meter.read()
    cpu.pop("generator_cpu_cores", None)
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "command": " ".join([*cmd[:-3], "mix.lua", cmd[-1]]),
        "requests": int(total.group(1)) if total else None,
        "requests_per_s": float(rps.group(1)) if rps else None,
        **{f"p{q}_ms": round(_unit_ms(v), 2) for q, v in pct.items()},
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
        **cpu,
    }


def cmd_ingest(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    runs = []
    with ctx.stack() as st:
        for batch in a.batch_sizes:
            await_quiet(a.quiet_wait, a.quiet_below)
            meter, rss0 = CpuMeter(st), sum(rss_bytes(st.server_processes()).values())
            runs.append(
                run_async(
                    _ingest(st, ctx.workload(), batch, a.clients, a.ingest_duration, a.timeout, a.connection_per_batch)
                )
            )
            # what the workers keep per accepted event (their in-process live state, for Redis outages)
            rss_growth = sum(rss_bytes(st.server_processes()).values()) - rss0
            runs[-1] |= meter.read() | {"api_rss_growth_mb": round(rss_growth / 2**20, 1)}
            _progress(f"ingest batch {batch}: {runs[-1]['acknowledged_events_per_s']} events/s")
        if st.external_url is None:
            for run in runs:
                rows, distinct = count_logged(st.events_dir, run.pop("prefix"))
                run |= {"rows_in_segments": rows, "distinct_ids_in_segments": distinct}
                run["all_acknowledged_stored_once"] = rows == distinct == run["acknowledged_events"]
    return {"goal_events_per_s": a.goal_events_per_s, "runs": runs}


async def _ingest(
    st: Stack, wl: Workload, batch: int, clients: int, duration: float, timeout: float, reconnect: bool = False
) -> dict[str, Any]:
    """`clients` clients posting batches back to back for `duration` seconds (closed loop), each on
    one kept-alive connection, or with `reconnect` on a new connection per batch.

    A worker accepts every connection waiting when it wakes, so a few connections opened together
    usually land on one worker; new connections go to whichever worker is free.
    """
    import aiohttp

    prefix = f"ing-{wl.tag}-{batch}"
    acked, failed, latencies = 0, collections.Counter(), []
    headers = {"X-API-Key": wl.api_key, "Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration

    async def client(c: int, session: aiohttp.ClientSession) -> None:
        nonlocal acked
        n = 0
        while loop.time() < stop_at:
            body = wl.event_batch(batch, f"{prefix}-{c}-{n}")
            n += 1
            t0 = time.perf_counter()
            try:
                async with session.post("/v1/events", data=body, headers=headers) as resp:
                    answer = await resp.read()
                if resp.status == 202:
                    acked += json.loads(answer)["accepted"]
                    latencies.append(time.perf_counter() - t0)
                else:
                    failed[f"HTTP {resp.status}"] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                failed[type(exc).__name__] += 1

    t0 = loop.time()
    timeout_cfg = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(force_close=reconnect)
    async with aiohttp.ClientSession(st.url, timeout=timeout_cfg, connector=connector) as session:
        await asyncio.gather(*(client(c, session) for c in range(clients)))
    wall = loop.time() - t0
    return {
        "batch": batch,
        "clients": clients,
        "connection_per_batch": reconnect,
        "duration_s": round(wall, 1),
        "acknowledged_events": acked,
        "acknowledged_events_per_s": round(acked / wall),
        "failed_requests": sum(failed.values()),
        "failure_kinds": dict(failed),
        "batch_latency": latency_stats(latencies),
        "prefix": prefix,
    }


def cmd_soak(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    series: list[dict[str, Any]] = []
    with ctx.stack() as st:
        last = [-1e9]

        def sample(elapsed: float) -> None:
            if elapsed - last[0] < a.sample_every:
                return
            last[0] = elapsed
            rss = rss_bytes(st.server_processes())
            series.append(
                {
                    "t_s": round(elapsed, 1),
                    "api_rss_mb": round(sum(rss.values()) / 2**20, 1),
                    "per_process_mb": {str(pid): round(v / 2**20, 1) for pid, v in rss.items()},
                    "redis_rss_mb": round(sum(rss_bytes(st.redis_processes()).values()) / 2**20, 1),
                }
            )
            if len(series) % max(1, int(60 / a.sample_every)) == 0:
                _progress(f"soak {elapsed:.0f}s: API RSS {series[-1]['api_rss_mb']} MB")

        meter = CpuMeter(st)
        run = run_async(
            open_loop(st.url, ctx.workload(), a.rate, a.duration, a.warmup, a.timeout, a.connections, on_tick=sample)
        )
        sample(a.warmup + a.duration + a.sample_every)  # one last sample after the load
        result = run.summary() | meter.read() | {"cache_hit_ratio": cache_hit_ratio(st.url)}
    after = [s for s in series if s["t_s"] >= a.warmup]
    if after:
        base, end = after[0]["api_rss_mb"], after[-1]["api_rss_mb"]
        peak = max(s["api_rss_mb"] for s in after)
        growth = (end - base) / base * 100
        per_pid = {
            pid: round((after[-1]["per_process_mb"].get(pid, mb) - mb) / mb * 100, 2)
            for pid, mb in after[0]["per_process_mb"].items()
        }
        result["memory"] = {
            "rss_mb_after_warmup": base,
            "rss_mb_end": end,
            "rss_mb_peak": peak,
            "growth_pct": round(growth, 2),
            "growth_pct_per_process": per_pid,
            "redis_rss_mb": [after[0]["redis_rss_mb"], after[-1]["redis_rss_mb"]],
            "goal_growth_pct_max": a.max_growth_pct,
            "met": bool(growth < a.max_growth_pct and result["errors"] == 0),
        }
    result["per_minute"] = run.per_interval(60.0)
    result["rss_series"] = [{k: v for k, v in s.items() if k != "per_process_mb"} for s in series]
    return result


def cmd_scale(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    if a.url:
        raise SystemExit("scale starts its own servers; it does not take --url")
    rows = []
    for workers in a.worker_counts:
        with ctx.stack(workers=workers) as st:
            fixed, _ = measure(ctx, st, a.scale_rate, a.step_duration, a.warmup)
            wrk = run_wrk(ctx, st) if not a.no_wrk else None
        rows.append({"workers": workers, "fixed_rate": fixed, "wrk": wrk})
        _progress(f"scale {workers} worker(s): p95 {fixed['p95_ms']} ms, wrk {wrk and wrk['requests_per_s']}/s")
    with ctx.stack(workers=max(2, a.workers), instances=2) as st:
        across = run_async(_reflection(st.apis[0].url, st.apis[1].url, a.reflect_trials, ctx.args.api_key))
        within = run_async(_reflection(st.apis[0].url, st.apis[0].url, a.reflect_trials, ctx.args.api_key))
    return {
        "rate_rps": a.scale_rate,
        "rows": rows,
        "event_reflected": {"other_process": across, "same_port_new_connections": within},
    }


async def _reflection(post_url: str, get_url: str, trials: int, api_key: str) -> dict[str, Any]:
    """A new user clicks the top item of their cold-start list on `post_url`; the next list from
    `get_url` (a new connection each time, so any worker may answer) must leave that item out."""
    import aiohttp

    reflected, elapsed = 0, []
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    tag = uuid.uuid4().hex[:8]
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        for n in range(trials):
            user = f"bench-reflect-{tag}-{n}"
            async with session.get(f"{get_url}/v1/users/{user}/recommendations?k=10") as resp:
                first = _SERVED.decode(await resp.read()).items[0].item_id
            event = {"user_id": user, "item_id": first, "event_type": "click", "event_id": f"{user}-1"}
            async with session.post(f"{post_url}/v1/events", data=_ENCODE.encode(event), headers=headers) as resp:
                await resp.read()
                assert resp.status == 202, resp.status
            t0 = time.perf_counter()
            async with session.get(f"{get_url}/v1/users/{user}/recommendations?k=10") as resp:
                after = _SERVED.decode(await resp.read())
            elapsed.append(time.perf_counter() - t0)
            reflected += all(it.item_id != first for it in after.items)
    return {"trials": trials, "reflected_on_next_request": reflected, "next_request": latency_stats(elapsed)}


def cmd_all(ctx: Context) -> dict[str, Any]:
    out = {}
    for name, fn in (("latency", cmd_latency), ("ramp", cmd_ramp), ("ingest", cmd_ingest), ("scale", cmd_scale)):
        _progress(f"{name}...")
        out[name] = fn(ctx)
        if name == "ingest" and not ctx.args.connection_per_batch:
            # kept-alive connections opened together land on one worker; new ones spread
            ctx.args.connection_per_batch = True
            out["ingest_connection_per_batch"] = fn(ctx)
            ctx.args.connection_per_batch = False
    return out


COMMANDS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "latency": cmd_latency,
    "ramp": cmd_ramp,
    "ingest": cmd_ingest,
    "soak": cmd_soak,
    "scale": cmd_scale,
    "all": cmd_all,
}

# per command: (rate, duration, warm-up) defaults
TIMING = {"soak": (100.0, 1800.0, 120.0), "latency": (200.0, 60.0, 10.0)}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m recsys_assets.tools.loadgen",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="storage folder with (or for) a champion")
    p.add_argument("--work", type=Path, help="folder for logs, events and results (default: a new temp folder)")
    p.add_argument("--out", type=Path, help="write the JSON here (default: <work>/<command>.json)")
    p.add_argument("--url", help="load this running API (127.0.0.1) instead of starting one")
    p.add_argument("--api-key", default=API_KEY, help="events key (with --url: one the server accepts)")
    p.add_argument("--workers", type=int, default=2, help="API worker processes")
    p.add_argument("--cache-ttl", type=int, help="RECSYS_CACHE_TTL_SECONDS of the API (default: the setting's)")
    p.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE", help="extra API environment")
    p.add_argument("--keep-events", action="store_true", help="keep the event-log segments in the work folder")
    p.add_argument("--rate", type=float, help="requests/s (latency: 200, soak: 100)")
    p.add_argument("--duration", type=float, help="measured seconds (latency: 60, soak: 1800)")
    p.add_argument("--warmup", type=float, help="seconds of load before measuring (latency: 10, soak: 120)")
    p.add_argument("--event-share", type=float, default=0.1)
    p.add_argument("--unknown-share", type=float, default=0.05, help="share of lists asked for unknown users")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    p.add_argument("--quiet-wait", type=float, default=0.0, help="seconds to wait for an idle machine before a run")
    p.add_argument("--quiet-below", type=float, default=0.25, help="cores in use that count as idle")
    p.add_argument("--noisy-retries", type=int, default=2, help="with --quiet-wait: repeats of a disturbed run")
    p.add_argument("--connections", type=int, default=256, help="most connections the generator opens")
    p.add_argument("--goal-p95-ms", type=float, default=10.0)
    p.add_argument("--goal-p99-ms", type=float, default=25.0)
    p.add_argument("--inprocess-users", type=int, default=2000, help="lists timed in process (latency)")
    p.add_argument("--rates", type=_floats, default=[200, 400, 500, 600, 700, 800, 1000, 1200, 1600, 2000])
    p.add_argument("--step-duration", type=float, default=30.0, help="seconds per ramp step and scale row")
    p.add_argument("--step-warmup", type=float, default=3.0, help="warm-up of each ramp step after the first")
    p.add_argument("--max-p95-ms", type=float, default=100.0, help="ramp: a rate is sustained below this p95")
    p.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    p.add_argument("--wrk-duration", type=int, default=20)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--wrk-connections", type=int, default=32)
    p.add_argument("--batch-sizes", type=_ints, default=[100, 500])
    p.add_argument("--clients", type=int, default=4, help="concurrent ingest clients")
    p.add_argument("--ingest-duration", type=float, default=20.0)
    p.add_argument("--connection-per-batch", action="store_true", help="ingest: a new connection for every batch")
    p.add_argument("--goal-events-per-s", type=float, default=5000.0)
    p.add_argument("--sample-every", type=float, default=10.0, help="soak: seconds between RSS samples")
    p.add_argument("--max-growth-pct", type=float, default=10.0, help="soak: RSS growth goal after warm-up")
    p.add_argument("--worker-counts", type=_ints, default=[1, 2, 4])
    p.add_argument("--scale-rate", type=float, default=400.0, help="scale: the fixed rate per worker count")
    p.add_argument("--reflect-trials", type=int, default=200)
    args = p.parse_args(argv)
    rate, duration, warmup = TIMING.get(args.command, (200.0, 60.0, 10.0))
    args.rate = args.rate if args.rate is not None else rate
    args.duration = args.duration if args.duration is not None else duration
    args.warmup = args.warmup if args.warmup is not None else warmup
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    work = args.work or Path(tempfile.mkdtemp(prefix="recsys-apibench-"))
    work.mkdir(parents=True, exist_ok=True)
    storage = args.storage.resolve()
    header = {
        "command": " ".join(["python -m recsys_assets.tools.loadgen", *argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "workers": args.workers,
        "blas_threads_per_worker": _blas_threads(),
    }
    ensure_champion(storage)
    ctx = Context(args=args, storage=storage, work=work, model=load_champion(storage))
    header["model_version"] = ctx.model.version
    _progress(f"{args.command}: {ctx.model.version}, work folder {work}")
    result = header | COMMANDS[args.command](ctx)
    text = json.dumps(result, indent=2, default=str)
    out = args.out or work / f"{args.command}.json"
    out.write_text(text)
    print(text)
    print(f"\n(also in {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # SIGTERM (and SIGINT, which a shell ignores in background jobs) stop like Ctrl-C, so the servers
    # this run started are stopped too
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
