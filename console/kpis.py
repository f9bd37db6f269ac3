"""The console's numbers, computed from plain tables: online CTR and conversion from the API's event log,
offline metrics of the champion, the API's p95 latency from its Prometheus text, pipeline success rate.

Pure functions over DataFrames and strings (no I/O, no Streamlit), so the pages and the tests compute
the same numbers. The online ones (served lists, CTR, conversion) live in `recsys_assets.contract.attribution`,
which the pipeline's drift report shares, and are re-exported here; its docstring defines them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_assets.contract.attribution import (
    CLICK,
    CONVERTING_RATING,
    EVENT_LOG_COLUMNS,
    IMPRESSION,
    LIST_COLUMNS,
    PURCHASE,
    RATING,
    UNKNOWN,
    compare_periods,
    kpis_by,
    kpis_over_time,
    prepare_events,
    served_lists,
    totals,
)

__all__ = [
    "BASELINE_MODELS",
    "CLICK",
    "CONVERTING_RATING",
    "EVENT_LOG_COLUMNS",
    "IMPRESSION",
    "LIST_COLUMNS",
    "OFFLINE_METRICS",
    "PURCHASE",
    "RATING",
    "UNKNOWN",
    "OfflineKpi",
    "baseline_model",
    "compare_periods",
    "histogram_quantile",
    "kpis_by",
    "kpis_over_time",
    "latency_p95_ms",
    "metric_at",
    "offline_kpis",
    "parse_prometheus",
    "prepare_events",
    "served_lists",
    "success_rate",
    "totals",
]

# The offline metrics on the Overview, in display order (all at K = 10).
OFFLINE_METRICS: tuple[str, ...] = ("ndcg", "map", "precision", "recall")
BASELINE_MODELS: tuple[str, ...] = ("Popularity", "Pop")


# ---------------------------------------------------------------------------------------------
# Offline: the evaluation report
# ---------------------------------------------------------------------------------------------


def metric_at(
    report: pd.DataFrame, model: str, metric: str, k: int = 10, protocol: str = "temporal", slice_: str = "all"
) -> float:
    """One value of the evaluation report (NaN when absent)."""
    sel = report[
        (report["model"] == model)
        & (report["metric"] == metric)
        & (report["k"] == k)
        & (report["protocol"] == protocol)
        & (report["slice"] == slice_)
    ]
    return float(sel["value"].iloc[0]) if len(sel) else math.nan


def baseline_model(report: pd.DataFrame, candidates: Iterable[str] = BASELINE_MODELS) -> str | None:
    """The popularity baseline present in the report (the native `Popularity` first, then RecBole's `Pop`)."""
    present = set(report["model"])
    return next((m for m in candidates if m in present), None)


@dataclass(frozen=True)
class OfflineKpi:
    """An offline metric of the champion and what its delta compares it with."""

    metric: str
    k: int
    value: float
    reference: float
    reference_name: str

    @property
    def delta(self) -> float:
        return self.value - self.reference


def offline_kpis(
    report: pd.DataFrame,
    champion: str,
    previous: dict[str, float] | None = None,
    previous_name: str | None = None,
    k: int = 10,
) -> list[OfflineKpi]:
    """NDCG, MAP, Precision and Recall @k of the champion (temporal protocol, all users).

    The delta compares with the previous champion where its value is known (`previous`: metric ->
    value, from the registry), else with the popularity baseline of the same report.
    """
    base = baseline_model(report)
    out = []
    for metric in OFFLINE_METRICS:
        value = metric_at(report, champion, metric, k)
        if previous is not None and not math.isnan(previous.get(metric, math.nan)):
            ref, name = previous[metric], previous_name or "previous champion"
        elif base is not None:
            ref, name = metric_at(report, base, metric, k), base
        else:
            ref, name = math.nan, ""
        out.append(OfflineKpi(metric, k, value, ref, name))
    return out


# ---------------------------------------------------------------------------------------------
# The API's latency, from its Prometheus text exposition
# ---------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value); comments and bad lines skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m["labels"] or "")}
        samples.append((m["name"], labels, value))
    return samples


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """The q-quantile of a cumulative histogram (upper bound -> count), interpolated as Prometheus does."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return math.nan
    total = buckets[bounds[-1]]
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                # the quantile is beyond the last finite bucket: its bound is the best estimate
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return math.nan


# Request-duration histograms, most specific first: the API exposes `recsys_api_request_duration_seconds`
# (Litestar's Prometheus middleware, `<app>_request_duration_seconds`); other names are fallbacks.
_LATENCY_NAMES = (re.compile(r"request_duration_seconds$"), re.compile(r"(duration|latency)_seconds$"))
_LATENCY_NAMES_MS = (re.compile(r"(duration|latency)_(ms|milliseconds)$"),)
# Paths that are not recommendation traffic.
_IGNORED_PATHS = {"/metrics", "/health", "/ready", "/healthz", "/livez", "/readyz"}


def latency_p95_ms(text: str, q: float = 0.95) -> tuple[float, int] | None:
    """p95 request latency in milliseconds and the number of requests behind it, from `/metrics` text.

    Buckets of every route but the probes (`/metrics`, health) are summed, since counters are
    cumulative since the API started, so is the quantile. None when no latency histogram is exposed.
    """
    families: dict[str, dict[float, float]] = {}
    for name, labels, value in parse_prometheus(text):
        if not name.endswith("_bucket") or "le" not in labels:
            continue
        path = labels.get("path") or labels.get("route") or labels.get("handler") or ""
        if path in _IGNORED_PATHS:
            continue
        bound = float(labels["le"].replace("Inf", "inf"))
        family = families.setdefault(name.removesuffix("_bucket"), {})
        family[bound] = family.get(bound, 0.0) + value
    for patterns, scale in ((_LATENCY_NAMES, 1000.0), (_LATENCY_NAMES_MS, 1.0)):
        for pattern in patterns:
            for family, buckets in sorted(families.items()):
                if pattern.search(family):
                    n = int(buckets.get(math.inf, 0))
                    value = histogram_quantile(q, buckets)
                    return (value * scale if not math.isnan(value) else math.nan), n
    return None


# The API's availability target (the seed's 99.9% uptime), as a share of requests answered without a 5xx.
AVAILABILITY_TARGET = 0.999


def availability(text: str) -> tuple[float, int] | None:
    """Share of requests answered without a 5xx and how many requests, from `/metrics` text: the
    request counters per status code, every route but the probes, cumulative since the API started
    (a 503 while no model is loaded counts as unavailable). None when no counter has a status code."""
    total = failed = 0.0
    found = False
    for name, labels, value in parse_prometheus(text):
        status = labels.get("status_code") or labels.get("status") or labels.get("code")
        if not name.endswith("_count") or status is None:
            continue
        if not any(p.search(name.removesuffix("_count")) for p in _LATENCY_NAMES + _LATENCY_NAMES_MS):
            continue
        if (labels.get("path") or labels.get("route") or labels.get("handler") or "") in _IGNORED_PATHS:
            continue
        found = True
        total += value
        failed += value if status.startswith("5") else 0.0
    if not found:
        return None
    return (1.0 - failed / total if total else math.nan), int(total)


# ---------------------------------------------------------------------------------------------
# Pipeline health
# ---------------------------------------------------------------------------------------------

SUCCESS_STATUSES = {"SUCCESS", "SUCCEEDED", "OK", "PASSED"}
FINISHED_STATUSES = SUCCESS_STATUSES | {"FAILURE", "FAILED", "CANCELED", "CANCELLED", "ERROR"}


def success_rate(statuses: Sequence[str], last_n: int = 20) -> tuple[float, int, float]:
    """Share of successful runs among the last `last_n` finished ones (newest first), how many
    runs that is, and the same share over the `last_n` runs before (NaN when there are none)."""
    finished = [s.upper() for s in statuses if str(s).upper() in FINISHED_STATUSES]

    def share(runs: list[str]) -> float:
        return float(np.mean([s in SUCCESS_STATUSES for s in runs])) if runs else math.nan

    current, previous = finished[:last_n], finished[last_n : 2 * last_n]
    return share(current), len(current), share(previous)
