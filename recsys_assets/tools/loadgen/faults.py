"""Faults injected during a soak (`soak --faults kill_worker,redis_restart`) and the API's availability
over the run, three ways.

* `kill_worker`: kill -9 of one API worker (its master starts another);
* `redis_restart`: Redis stopped, and started again `--redis-down` seconds later on the same port, empty.

The faults are spread evenly over the measured window (two faults: at 1/3 and 2/3 of it), each from a
thread of its own so the open-loop generator keeps its schedule. Availability is then read:

* by the client: requests answered 200/202 over all requests sent (a reset connection, a timeout or
  any other status counts against it);
* from the API's own `/metrics`, as the console's Overview computes it (`contract.metrics_text`:
  requests answered without a 5xx, probes excluded), over the measured window (the counters read
  at its start and its end); a request whose connection a killed worker took down never reaches
  those counters, so this reading cannot see it;
* by a probe: `GET /ready` once a second, as a load balancer's health probe, the share answered 200.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recsys_assets.contract import metrics_text
from recsys_assets.tools.loadgen.openloop import Sample
from recsys_assets.tools.loadgen.stack import Stack, http_get, progress
from recsys_assets.tools.services import worker_pids

FAULTS = ("kill_worker", "redis_restart")
GOAL_AVAILABILITY_PCT = 99.9


def parse_faults(text: str) -> list[str]:
    """`kill_worker,redis_restart` -> the list; an unknown name is refused before anything starts."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(FAULTS))
    if unknown:
        raise SystemExit(f"--faults: unknown {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    return names


def schedule(faults: Sequence[str], warmup: float, duration: float) -> list[tuple[float, str]]:
    """(seconds from the start of the load, fault): spread evenly over the measured window."""
    step = duration / (len(faults) + 1)
    return [(warmup + step * (n + 1), fault) for n, fault in enumerate(faults)]


@dataclass
class FaultRunner:
    """Runs the faults of `plan` against `stack` from a thread, at their times from `start()`."""

    stack: Stack
    plan: list[tuple[float, str]]
    redis_down: float = 10.0
    log: list[dict[str, Any]] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        if self.plan and (self.stack.external_url is not None or self.stack.redis is None):
            raise SystemExit("--faults needs the stack the soak starts itself (not --url)")
        t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(t0,), name="soak-faults", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _run(self, t0: float) -> None:
        for at, fault in self.plan:
            if self._stop.wait(max(0.0, t0 + at - time.perf_counter())):
                return
            entry: dict[str, Any] = {"at_s": round(time.perf_counter() - t0, 1), "fault": fault}
            try:
                entry |= self.kill_worker() if fault == "kill_worker" else self.restart_redis()
            except Exception as exc:  # the figures say which fault did not happen, and why
                entry["error"] = f"{type(exc).__name__}: {exc}"
            progress(f"fault at {entry['at_s']} s: {entry}")
            self.log.append(entry)

    def kill_worker(self) -> dict[str, Any]:
        api = self.stack.apis[0]
        assert api.proc is not None
        victim = worker_pids(api.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        started = time.perf_counter()
        while len(worker_pids(api.proc.pid)) < api.workers or victim in worker_pids(api.proc.pid):
            if time.perf_counter() - started > 60:
                raise TimeoutError(f"worker {victim} not replaced within 60 s")
            time.sleep(0.05)
        return {"pid": victim, "replaced_after_s": round(time.perf_counter() - started, 2)}

    def restart_redis(self) -> dict[str, Any]:
        redis = self.stack.redis
        assert redis is not None
        redis.stop()
        time.sleep(self.redis_down)
        redis.start()  # the same port, empty (no persistence)
        return {"down_s": self.redis_down, "port": redis.port}


@dataclass
class Prober:
    """`GET /ready` every `every` seconds from a thread: (seconds from start, status; 0 no answer)."""

    url: str
    every: float = 1.0
    metrics_at: float | None = None  # also read `/metrics` once, this many seconds from the start
    results: list[tuple[float, int]] = field(default_factory=list)
    metrics: tuple[float, float] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        t0 = time.perf_counter()

        def run() -> None:
            n = 0
            while not self._stop.is_set():
                if self.metrics_at is not None and self.metrics is None and time.perf_counter() - t0 >= self.metrics_at:
                    self.metrics = metrics_counts(self.url)
                status = 0
                with contextlib.suppress(OSError):
                    status = http_get(f"{self.url}/ready", timeout=2.0)[0]
                self.results.append((time.perf_counter() - t0, status))
                n += 1
                self._stop.wait(max(0.0, t0 + n * self.every - time.perf_counter()))

        self._thread = threading.Thread(target=run, name="soak-prober", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def metrics_counts(url: str) -> tuple[float, float] | None:
    """(requests, answered 5xx) so far from the API's `/metrics`, as `metrics_text.availability` counts."""
    with contextlib.suppress(OSError):
        status, body = http_get(f"{url}/metrics")
        found = metrics_text.availability(body.decode()) if status == 200 else None
        if found is not None and not math.isnan(found[0]):
            share, total = found
            return float(total), (1.0 - share) * total
    return None


def _pct(ok: float, total: float) -> float | None:
    return round(100.0 * ok / total, 4) if total else None


def availability(
    window: Sequence[Sample],
    faults: list[dict[str, Any]],
    probes: list[tuple[float, int]],
    metrics_before: tuple[float, float] | None,
    metrics_after: tuple[float, float] | None,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """The three readings of availability over the measured window, the failures around each fault,
    and whether the client's reading meets the 99.9% goal."""
    failed = [s for s in window if s.error is not None]
    client = _pct(len(window) - len(failed), len(window))
    in_window = [status for t, status in probes if warmup <= t < warmup + duration]
    probe = _pct(sum(status == 200 for status in in_window), len(in_window))
    api: dict[str, Any] = {"pct": None, "requests": None, "answered_5xx": None}
    if metrics_before is not None and metrics_after is not None:
        total, bad = (after - before for after, before in zip(metrics_after, metrics_before, strict=True))
        api = {"pct": _pct(total - bad, total), "requests": int(total), "answered_5xx": round(bad)}
    per_fault = [
        # a request scheduled a little before a fault can still be in flight (or queued) when it strikes
        {**f, "failed_around": sum(1 for s in failed if f["at_s"] - 5 <= s.scheduled < f["at_s"] + 15)}
        for f in faults
    ]
    return {
        "client": {"pct": client, "requests": len(window), "failed": len(failed)},
        "api_metrics": api,
        "ready_probe": {"pct": probe, "probes": len(in_window), "every_s": 1.0},
        "faults": per_fault,
        "goal_pct_min": GOAL_AVAILABILITY_PCT,
        "met": client is not None and client >= GOAL_AVAILABILITY_PCT and all("error" not in f for f in faults),
    }
