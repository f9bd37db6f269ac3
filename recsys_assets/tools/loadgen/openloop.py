"""The open-loop load generator: requests at a fixed arrival rate whatever the answers, each latency
from its scheduled time (no coordinated omission), and the summary of a run."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from recsys_assets.tools.loadgen.workload import GET, KINDS, Workload


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


def check_local(url: str) -> str:
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

    url = check_local(url)
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
