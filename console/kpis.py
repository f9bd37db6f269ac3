"""The console's numbers, computed from plain tables: online CTR and conversion from the API's event log,
offline metrics of the champion, the API's p95 latency from its Prometheus text, pipeline success rate.

Pure functions over DataFrames and strings (no I/O, no Streamlit), so the pages and the tests compute
the same numbers.

Online definitions. A *served list* is the set of impressions (rows with event_type `impression`,
`value` = position) sharing one `recommendation_id`; it belongs to the model version and A/B arm
written on its impressions and to the period of its first impression. Feedback (click, add_to_cart,
purchase, rating) is attributed to a list through its `recommendation_id`; feedback without one, or
naming a list never served, is organic and not counted.

- list CTR = lists with at least one click / lists served
- impression CTR = impressions whose item was clicked / impressions
- conversion = lists with a purchase or a rating ≥ 4 / lists served
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_assets.ingestion import parse_timestamps

# Columns of the API's durable event log (the event-log schema plus the serving fields).
EVENT_LOG_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "event_type",
    "timestamp",
    "value",
    "event_id",
    "recommendation_id",
    "model_version",
    "arm",
)
IMPRESSION = "impression"
CLICK = "click"
PURCHASE = "purchase"
RATING = "rating"
CONVERTING_RATING = 4.0
# Shown for a list whose impressions carry no model version or arm.
UNKNOWN = "(none)"

LIST_COLUMNS: tuple[str, ...] = (
    "recommendation_id",
    "served_at",
    "user_id",
    "model_version",
    "arm",
    "impressions",
    "clicked_impressions",
    "clicked",
    "converted",
)

# The offline metrics on the Overview, in display order (all at K = 10).
OFFLINE_METRICS: tuple[str, ...] = ("ndcg", "map", "precision", "recall")
BASELINE_MODELS: tuple[str, ...] = ("Popularity", "Pop")


# ---------------------------------------------------------------------------------------------
# Online: the event log
# ---------------------------------------------------------------------------------------------


def prepare_events(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw event-log rows (any types, possibly text) -> typed rows.

    Timestamps become UTC (unix s/ms/us or ISO 8601, as the ingestion reads them), `value` a float,
    ids and labels stripped strings; rows without a timestamp or event type are dropped, and a row
    written twice (a retried write repeats its `event_id`) is counted once.
    """
    df = raw.copy()
    for col in EVENT_LOG_COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    df = df[list(EVENT_LOG_COLUMNS)]
    for col in ("user_id", "item_id", "event_type", "event_id", "recommendation_id", "model_version", "arm"):
        text = df[col].astype("string").str.strip()
        df[col] = text.mask(text == "")
    df["event_type"] = df["event_type"].str.lower()
    df["timestamp"] = parse_timestamps(df["timestamp"].astype("string"))
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df = df[df["timestamp"].notna() & df["event_type"].notna()]
    with_id = df[df["event_id"].notna()].drop_duplicates("event_id")
    return (
        pd.concat([with_id, df[df["event_id"].isna()]]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    )


def served_lists(events: pd.DataFrame) -> pd.DataFrame:
    """One row per served list (columns `LIST_COLUMNS`) from typed events (`prepare_events`)."""
    imp = events[(events["event_type"] == IMPRESSION) & events["recommendation_id"].notna()]
    if imp.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in LIST_COLUMNS})
    imp = imp.drop_duplicates(["recommendation_id", "item_id"])
    lists = imp.groupby("recommendation_id", sort=False).agg(
        served_at=("timestamp", "min"),
        user_id=("user_id", "first"),
        model_version=("model_version", "first"),
        arm=("arm", "first"),
        impressions=("item_id", "size"),
    )
    fb = events[(events["event_type"] != IMPRESSION) & events["recommendation_id"].isin(lists.index)]
    clicks = fb[fb["event_type"] == CLICK]
    clicked_lists = set(clicks["recommendation_id"])
    # an impression counts as clicked once, however many clicks its item got
    clicked_pairs = imp.merge(clicks[["recommendation_id", "item_id"]].drop_duplicates(), how="inner")
    converting = (fb["event_type"] == PURCHASE) | (
        (fb["event_type"] == RATING) & (fb["value"].fillna(-math.inf) >= CONVERTING_RATING)
    )
    converted_lists = set(fb.loc[converting, "recommendation_id"])

    lists["clicked_impressions"] = clicked_pairs.groupby("recommendation_id").size().reindex(lists.index).fillna(0)
    lists["clicked_impressions"] = lists["clicked_impressions"].astype("int64")
    lists["clicked"] = lists.index.isin(list(clicked_lists))
    lists["converted"] = lists.index.isin(list(converted_lists))
    for col in ("model_version", "arm"):
        lists[col] = lists[col].fillna(UNKNOWN).astype(str)
    lists["impressions"] = lists["impressions"].astype("int64")
    out = lists.reset_index().sort_values("served_at", kind="stable").reset_index(drop=True)
    return out[list(LIST_COLUMNS)]


def _summarise(lists: pd.DataFrame) -> dict[str, float]:
    n = len(lists)
    impressions = int(lists["impressions"].sum()) if n else 0
    return {
        "lists": n,
        "impressions": impressions,
        "clicked_lists": int(lists["clicked"].sum()) if n else 0,
        "clicked_impressions": int(lists["clicked_impressions"].sum()) if n else 0,
        "converted_lists": int(lists["converted"].sum()) if n else 0,
        "ctr": float(lists["clicked"].mean()) if n else math.nan,
        "impression_ctr": float(lists["clicked_impressions"].sum() / impressions) if impressions else math.nan,
        "conversion": float(lists["converted"].mean()) if n else math.nan,
    }


def totals(lists: pd.DataFrame) -> dict[str, float]:
    """Lists, impressions, clicks and conversions, and the three rates, over the given lists."""
    return _summarise(lists)


def kpis_by(lists: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """`totals` per group (e.g. `model_version`, `arm`), one row each."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = [
        {**dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)), **_summarise(group)}
        for key, group in lists.groupby(keys, sort=True)
    ]
    return pd.DataFrame(rows, columns=[*keys, *_summarise(lists.iloc[:0])])


def kpis_over_time(lists: pd.DataFrame, freq: str = "D", by: str | None = "model_version") -> pd.DataFrame:
    """`totals` per period (`period`: start of the period, UTC) and optional group, oldest first."""
    if lists.empty:
        return kpis_by(lists.assign(period=pd.Series(dtype="datetime64[us, UTC]")), ["period", *([by] if by else [])])
    period = pd.to_datetime(lists["served_at"], utc=True).dt.tz_localize(None).dt.to_period(freq).dt.start_time
    frame = lists.assign(period=period.dt.tz_localize("UTC"))
    return kpis_by(frame, ["period", *([by] if by else [])]).sort_values("period", kind="stable").reset_index(drop=True)


def compare_periods(
    lists: pd.DataFrame, window: pd.Timedelta, end: pd.Timestamp | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """`totals` for the last `window` ending at `end` (default: the latest list) and for the window before."""
    if lists.empty:
        return _summarise(lists), _summarise(lists)
    served = pd.to_datetime(lists["served_at"], utc=True)
    end = served.max() if end is None else pd.Timestamp(end)
    current = lists[(served > end - window) & (served <= end)]
    previous = lists[(served > end - 2 * window) & (served <= end - window)]
    return _summarise(current), _summarise(previous)


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
