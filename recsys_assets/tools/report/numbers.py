"""The report's numbers, computed from `ReportInputs`: KPIs against their targets, the model comparison,
the online A/B arms, drift and retrains, and the cost drivers.

The online ones use `recsys_assets.contract.attribution` (the console's and the drift report's
definitions); the offline ones read the evaluation report as the console's Overview does (temporal
protocol, all users, K = 10, discovery setting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from recsys_assets.contract import attribution, events, metrics_text
from recsys_assets.tools.report import targets
from recsys_assets.tools.report.inputs import ReportInputs

SUCCESS = "SUCCESS"
ENDED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})


def format_value(value: float, unit: str) -> str:
    """How a number is printed in the report and the deck alike ("not measured" for NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    if unit == "pct":
        return f"{value:.1%}"
    if unit == "pct2":
        return f"{value:.2%}"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "ratio":
        return f"{value:.2f}x"
    return f"{value:.4f}"


@dataclass(frozen=True)
class Kpi:
    """One KPI: its value (NaN when not measured), the target in words, whether it is met (None: no target
    or not measured), and where the number comes from."""

    key: str
    name: str
    value: float
    unit: str
    target: str
    met: bool | None
    source: str

    @property
    def text(self) -> str:
        return format_value(self.value, self.unit)

    @property
    def status(self) -> str:
        return {True: "met", False: "missed", None: "-"}[self.met]


def evaluation(inputs: ReportInputs) -> pd.DataFrame | None:
    """The evaluation report's rows of the discovery setting (those the champion is chosen on by default)."""
    report = inputs.table(events.EVALUATION_REPORT)
    if report is not None and "setting" in report:
        report = report[report["setting"].fillna("discovery") == "discovery"]
    return report


def metric_at(report: pd.DataFrame, model: str, metric: str, k: int = targets.K, protocol: str = "temporal") -> float:
    sel = report[
        (report["model"] == model)
        & (report["metric"] == metric)
        & (report["k"] == k)
        & (report["protocol"] == protocol)
        & (report["slice"] == "all")
    ]
    return float(sel["value"].iloc[0]) if len(sel) else math.nan


def champion_model(inputs: ReportInputs) -> str | None:
    """The serving champion's model name (`artifacts/CHAMPION.json`)."""
    return str(inputs.champion["model"]) if inputs.champion and inputs.champion.get("model") else None


def offline_kpis(inputs: ReportInputs) -> list[Kpi]:
    report, champion = evaluation(inputs), champion_model(inputs)
    if report is None or champion is None:
        return [Kpi(m, name, math.nan, "metric", "above the popularity baseline", None, "no evaluation report yet")
                for m, name in targets.OFFLINE_METRICS]  # fmt: skip
    base = next((m for m in targets.BASELINE_MODELS if m in set(report["model"])), None)
    out = []
    for metric, name in targets.OFFLINE_METRICS:
        value = metric_at(report, champion, metric)
        ref = metric_at(report, base, metric) if base else math.nan
        met = None if math.isnan(value) or math.isnan(ref) else value > ref
        target = f"> {format_value(ref, 'metric')} ({base})" if base else "above the popularity baseline"
        source = f"evaluation_report: {champion}, temporal, all users"
        out.append(Kpi(metric, name, value, "metric", target, met, source))
    return out


def api_kpis(inputs: ReportInputs) -> list[Kpi]:
    text = inputs.metrics_text
    where = f"{inputs.api_url}/metrics" if inputs.api_url else "no API URL given"
    latency = metrics_text.latency_p95_ms(text) if text is not None else None
    avail = metrics_text.availability(text) if text is not None else None
    p95, n = latency if latency is not None else (math.nan, 0)
    share, m = avail if avail is not None else (math.nan, 0)
    return [
        Kpi("p95_latency", "API p95 latency", p95, "ms", f"< {targets.P95_LATENCY_MS:.0f} ms",
            None if math.isnan(p95) else p95 < targets.P95_LATENCY_MS,
            f"{where} ({n} requests)" if latency is not None else f"{where} (not reachable, or no histogram)"),
        Kpi("availability", "API availability", share, "pct2", f">= {targets.AVAILABILITY:.1%}",
            None if math.isnan(share) else share >= targets.AVAILABILITY,
            f"{where} ({m} requests)" if avail is not None else f"{where} (no requests counted per status)"),
    ]  # fmt: skip


def pipeline_success(health: pd.DataFrame | None, days: int = targets.PIPELINE_WINDOW_DAYS) -> tuple[float, int]:
    """Share of successful runs among the runs ended in the `days` before the newest one, and how many."""
    if health is None or "status" not in health:
        return math.nan, 0
    time_col = next((c for c in ("end_time", "created_at", "start_time") if c in health), None)
    ended = health[health["status"].astype(str).str.upper().isin(ENDED)]
    if time_col is not None and len(ended):
        when = pd.to_datetime(ended[time_col], utc=True)
        ended = ended[when > when.max() - pd.Timedelta(days=days)]
    if not len(ended):
        return math.nan, 0
    return float((ended["status"].astype(str).str.upper() == SUCCESS).mean()), len(ended)


def ctr_ratio(inputs: ReportInputs) -> tuple[float, str]:
    """The champion arm's list CTR over the challenger's: from the API's event log when both arms served
    lists, else from the latest replay run (`replay_runs`)."""
    arms = attribution.kpis_by(inputs.lists, "arm").set_index("arm") if len(inputs.lists) else pd.DataFrame()
    if {"champion", "challenger"} <= set(arms.index) and arms.loc["challenger", "ctr"] > 0:
        return float(arms.loc["champion", "ctr"] / arms.loc["challenger", "ctr"]), "API event log, per arm"
    runs = inputs.table(events.REPLAY_RUNS)
    if runs is not None and {"run_id", "arm", "ctr"} <= set(runs):
        latest = runs[runs["run_id"] == runs.sort_values("started_at")["run_id"].iloc[-1]].set_index("arm")
        if {"champion", "challenger"} <= set(latest.index) and latest.loc["challenger", "ctr"] > 0:
            ratio = float(latest.loc["champion", "ctr"] / latest.loc["challenger", "ctr"])
            return ratio, f"replay_runs, run {latest['run_id'].iloc[0]} (champion vs popularity arm)"
    return math.nan, "no two-arm traffic yet"


def online_kpis(inputs: ReportInputs) -> list[Kpi]:
    t = attribution.totals(inputs.lists)
    src = f"API event log: {t['lists']} lists, {t['impressions']} impressions"
    ratio, ratio_src = ctr_ratio(inputs)
    none = "reported (no level set)"
    return [
        Kpi("ctr", "CTR (per list)", t["ctr"], "pct", none, None, src),
        Kpi("impression_ctr", "CTR (per impression)", t["impression_ctr"], "pct", none, None, src),
        Kpi("conversion", "Conversion per list", t["conversion"], "pct", none, None, src),
        Kpi("conversion_per_click", "Conversion per click", t["conversion_per_click"], "pct", none, None, src),
        Kpi("ctr_ratio", "CTR champion / other arm", ratio, "ratio", f">= {targets.CTR_RATIO:.0f}x",
            None if math.isnan(ratio) else ratio >= targets.CTR_RATIO, ratio_src),
    ]  # fmt: skip


def all_kpis(inputs: ReportInputs) -> list[Kpi]:
    rate, n = pipeline_success(inputs.table(events.PIPELINE_HEALTH))
    pipeline = Kpi(
        "pipeline_success",
        f"Pipeline success ({targets.PIPELINE_WINDOW_DAYS} days)",
        rate,
        "pct",
        f">= {targets.PIPELINE_SUCCESS:.0%}",
        None if math.isnan(rate) else rate >= targets.PIPELINE_SUCCESS,
        f"pipeline_health: {n} ended runs",
    )
    return [*offline_kpis(inputs), *api_kpis(inputs), pipeline, *online_kpis(inputs)]


def model_comparison(inputs: ReportInputs) -> pd.DataFrame:
    """One row per model: P, R, NDCG and MAP @10 on the temporal protocol, and NDCG@10 on the random one;
    best temporal NDCG@10 first."""
    report = evaluation(inputs)
    if report is None:
        return pd.DataFrame()
    rows = []
    for model in sorted(set(report["model"])):
        row: dict[str, object] = {"model": model}
        for metric, name in targets.OFFLINE_METRICS:
            row[name] = metric_at(report, model, metric)
        row["NDCG@10 (random)"] = metric_at(report, model, "ndcg", protocol="random")
        rows.append(row)
    return pd.DataFrame(rows).sort_values("NDCG@10", ascending=False, na_position="last").reset_index(drop=True)


def ab_arms(inputs: ReportInputs) -> pd.DataFrame:
    """Lists, CTR and both conversions per A/B arm and model version, from the API's event log."""
    cols = ["arm", "model_version", "lists", "impressions", "ctr", "conversion", "conversion_per_click"]
    if not len(inputs.lists):
        return pd.DataFrame(columns=cols)
    return attribution.kpis_by(inputs.lists, ["arm", "model_version"])[cols]


@dataclass
class DriftSummary:
    windows: int = 0
    drifted: int = 0
    latest: str = "no drift report yet"
    per_window: pd.DataFrame = field(default_factory=pd.DataFrame)
    retrains: int = 0
    retrains_by_status: dict[str, int] = field(default_factory=dict)
    promoted: int = 0


def drift_summary(inputs: ReportInputs) -> DriftSummary:
    out = DriftSummary()
    drift = inputs.table(events.DRIFT_RESULTS)
    if drift is not None:
        drift = drift.assign(drifted=drift["drifted"].astype(bool))
        verdict = "window_drifted" if "window_drifted" in drift else "drifted"
        per = (
            drift.groupby("window_end")
            .agg(window_start=("window_start", "first"), metrics_drifted=("drifted", "sum"), drifted=(verdict, "any"))
            .reset_index()
            .sort_values("window_end")
        )
        # the share of drifted data features (the verdict's measure), or the stored share when a table has one
        data_rows = drift[drift["kind"] == "data"] if "kind" in drift else drift
        share = data_rows.groupby("window_end")["drifted"].mean()
        stored = drift[drift["metric"] == "share_of_drifted_columns"].groupby("window_end")["score"].first()
        per["score"] = per["window_end"].map(stored if len(stored) else share)
        out.per_window, out.windows, out.drifted = per, len(per), int(per["drifted"].sum())
        out.latest = "drift detected" if bool(per["drifted"].iloc[-1]) else "no drift"
    retrains = inputs.table(events.RETRAIN_RUNS)
    if retrains is not None:
        out.retrains = len(retrains)
        out.retrains_by_status = {str(k): int(v) for k, v in retrains["status"].value_counts().sort_index().items()}
        out.promoted = int(retrains["promoted"].fillna(False).astype(bool).sum()) if "promoted" in retrains else 0
    return out


def cost_drivers(inputs: ReportInputs) -> pd.DataFrame:
    """What the data and models cost to hold and train: rows and bytes, training seconds, artifact bytes."""
    s = inputs.size
    rows: list[tuple[str, str, str]] = [
        ("data", "interactions (rows)", _count(s.interactions)),
        ("data", "users", _count(s.users)),
        ("data", "items", _count(s.items)),
        ("data", "stored tables (Parquet)", _bytes(s.table_bytes)),
        ("data", f"API event log ({s.event_log_segments} segments)", _bytes(s.event_log_bytes)),
    ]
    if inputs.train_times is not None:
        for r in inputs.train_times.itertuples():
            rows.append(("training", f"{r.model} ({r.protocol or '-'})", f"{r.train_seconds:.1f} s"))
    for name, size in inputs.artifact_bytes.items():
        rows.append(("serving artifact", name, _bytes(size)))
    return pd.DataFrame(rows, columns=["driver", "what", "size"])


def _count(n: int | None) -> str:
    return "no data yet" if n is None else f"{n:,}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
