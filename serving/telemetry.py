"""Prometheus metrics of the API, beyond the per-route latency histograms of Litestar's middleware.

Created once per process on first use (the default registry refuses a metric registered twice, and
tests build many apps in one process). With several workers, `python -m serving` points
`PROMETHEUS_MULTIPROC_DIR` at a fresh folder so `/metrics` adds up every worker's samples.

* `recsys_api_request_duration_seconds{method,path,status_code}`: latency per route template;
* `recsys_cache_requests_total{result="hit|miss|bypass"}`: hit rate = hit / (hit + miss);
* `recsys_events_total{outcome="accepted|duplicate"}` and `recsys_event_requests_rejected_total{status}`;
* `recsys_impressions_total`, `recsys_recommendations_total{arm,kind="personal|cold_start"}`;
* `recsys_model_info{arm,model_name,model_version}` (1 for the loaded one), `recsys_model_reloads_total{outcome}`;
* `recsys_redis_up` (0 while serving from in-process state).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Metrics:
    cache: Counter
    events: Counter
    event_requests_rejected: Counter
    impressions: Counter
    recommendations: Counter
    model_info: Gauge
    model_reloads: Counter
    redis_up: Gauge


@functools.cache
def get_metrics() -> Metrics:
    return Metrics(
        cache=Counter("recsys_cache_requests", "Recommendation cache look-ups by result", ["result"]),
        events=Counter("recsys_events", "Events posted, by outcome", ["outcome"]),
        event_requests_rejected=Counter(
            "recsys_event_requests_rejected", "POST /v1/events requests refused, by status code", ["status"]
        ),
        impressions=Counter("recsys_impressions", "Recommended items served (impression rows logged)"),
        recommendations=Counter("recsys_recommendations", "Recommendation lists served", ["arm", "kind"]),
        model_info=Gauge(
            "recsys_model_info",
            "1 for the model version each arm serves",
            ["arm", "model_name", "model_version"],
            multiprocess_mode="livemax",
        ),
        model_reloads=Counter("recsys_model_reloads", "Model reloads, by outcome", ["outcome"]),
        redis_up=Gauge("recsys_redis_up", "1 while Redis is reachable", multiprocess_mode="livemin"),
    )


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric, across worker processes when in multiprocess mode."""
    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead() -> None:
    """Drop this worker's live gauges from the shared folder when it stops."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_dead_workers() -> list[int]:
    """Drop the live gauges of workers that died without stopping (kill -9, OOM): their last values
    (`recsys_redis_up 0` from an outage) would otherwise count in `/metrics` for ever. Each worker
    runs this when it starts (the one replacing a killed worker finds its files) and every poll."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return []
    dead = set()
    for path in Path(folder).glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, folder)
    return sorted(dead)
