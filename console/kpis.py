"""The console's numbers, computed from plain tables: online CTR and conversion from the API's event log,
offline metrics of the champion, the API's p95 latency from its Prometheus text, pipeline success rate.

Pure functions over DataFrames and strings (no I/O, no Streamlit), so the pages and the tests compute
the same numbers. The online ones (served lists, CTR, conversion) live in `recsys_assets.contract.attribution`,
which the pipeline's drift report shares, and are re-exported here; its docstring defines them.
"""

from __future__ import annotations

import math
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
from recsys_assets.contract.metrics_text import (  # noqa: F401 (the console reads them from here)
    availability,
    histogram_quantile,
    latency_p95_ms,
    parse_prometheus,
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
# The API's latency and availability: `contract.metrics_text` reads its Prometheus text
# ---------------------------------------------------------------------------------------------

# The API's availability target (the seed's 99.9% uptime), as a share of requests answered without a 5xx.
AVAILABILITY_TARGET = 0.999


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
