"""Overview: the platform's KPIs on one screen, online (CTR, conversion, API latency, pipeline health)
and offline (the champion's NDCG, MAP, Precision and Recall at 10), with the champion and drift status."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import data, kpis, ui
from recsys_assets.contract.settings import Settings

PERIODS = {"24 hours": pd.Timedelta(days=1), "7 days": pd.Timedelta(days=7), "30 days": pd.Timedelta(days=30)}
LAST_RUNS = 20
METRIC_LABELS = {"ndcg": "NDCG", "map": "MAP", "precision": "Precision", "recall": "Recall"}


def rate_tile(label: str, value: float, previous: float, count: str, versus: str, help: str, digits: int = 1) -> None:
    """A rate with its change in percentage points, or with the count behind it when there is no
    previous period to compare with."""
    if ui.is_missing(previous):
        ui.tile(label, ui.pct(value, digits), count, neutral=True, help=help)
    else:
        ui.tile(label, ui.pct(value, digits), ui.pp(value - previous, digits), description=versus, help=help)


PER_LIST = "Lists with a purchase or a rating ≥ 4 / lists served"
PER_CLICK = "Clicked lists with a purchase or a rating ≥ 4 / clicked lists (the share of clicks that convert)"


def online_row(settings: Settings, period: str) -> None:
    lists = data.served_lists(settings)
    cols = st.columns(4)
    if lists is None or lists.empty:
        hint = "from the API's event log (`events/*.csv`)"
        with cols[0]:
            ui.tile("CTR", None, help=f"Lists with at least one click / lists served, {hint}.")
        with cols[1]:
            ui.tile("Conversion per list", None, help=f"{PER_LIST}, {hint}.")
            ui.tile("Conversion per click", None, help=f"{PER_CLICK}, {hint}.")
    else:
        cur, prev = kpis.compare_periods(lists, PERIODS[period])
        basis = f"{cur['lists']:,} lists, {cur['impressions']:,} impressions in the last {period} of traffic"
        count = f"{cur['lists']:,} lists"
        with cols[0]:
            rate_tile(
                "CTR",
                cur["ctr"],
                prev["ctr"],
                count,
                f"vs previous {period}",
                f"Lists with at least one click / lists served; {basis}.",
            )
        with cols[1]:
            # both definitions, named: per list served (the console's first), per clicked list (the seed's)
            rate_tile(
                "Conversion per list",
                cur["conversion"],
                prev["conversion"],
                count,
                f"vs previous {period}",
                f"{PER_LIST}; {basis}.",
            )
            rate_tile(
                "Conversion per click",
                cur["conversion_per_click"],
                prev["conversion_per_click"],
                f"{cur['clicked_lists']:,} clicked lists",
                f"vs previous {period}",
                f"{PER_CLICK}; {basis}.",
            )
    with cols[2]:
        latency = data.api_latency(settings)
        if latency is None or ui.is_missing(latency[0]):
            ui.tile("API p95 latency", None, help=f"From {settings.api_url}/metrics when the API is reachable.")
        else:
            ui.tile(
                "API p95 latency",
                f"{latency[0]:,.0f} ms",
                f"{latency[1]:,} requests",
                neutral=True,
                help=f"95th percentile since the API started, all routes but probes ({settings.api_url}/metrics).",
            )
    with cols[3]:
        health = data.pipeline_health(settings, LAST_RUNS)
        if health is None:
            ui.tile("Pipeline success rate", None, help=f"Successful runs among the last {LAST_RUNS}.")
        else:
            rate_tile(
                "Pipeline success rate",
                health.rate,
                health.previous,
                f"{health.n} run{'s' if health.n != 1 else ''}",
                f"vs the {LAST_RUNS} runs before",
                f"Successful runs among the last {health.n} finished ({health.source}).",
                digits=0,
            )


def offline_row(settings: Settings) -> None:
    report = data.evaluation_report(settings)
    champ = data.champion(settings)
    cols = st.columns(4)
    if report is None or report.empty or champ is None:
        why = "no evaluation report yet" if report is None or report.empty else "no champion promoted yet"
        for col, metric in zip(cols, kpis.OFFLINE_METRICS, strict=True):
            with col:
                ui.tile(f"{METRIC_LABELS[metric]}@10", None, help=f"Champion, temporal protocol, all users: {why}.")
        return
    previous = data.previous_champion(data.registry_history(settings))
    values, name = previous if previous else (None, None)
    for col, kpi in zip(cols, kpis.offline_kpis(report, champ["model"], values, name), strict=True):
        with col:
            ui.tile(
                f"{METRIC_LABELS[kpi.metric]}@{kpi.k}",
                ui.num(kpi.value),
                ui.signed(kpi.delta),
                description=f"vs {kpi.reference_name}" if kpi.reference_name else None,
                help=f"{champ['model']} on the temporal test split, all users.",
            )


def availability_tile(settings: Settings) -> None:
    target = kpis.AVAILABILITY_TARGET
    found = data.api_availability(settings)
    if found is None or ui.is_missing(found[0]):
        ui.tile("API availability", None, help=f"From {settings.api_url}/metrics when the API is reachable.")
        return
    value, n = found
    ui.tile(
        "API availability",
        f"{value:.2%}",
        ui.pp(value - target, 2),
        description=f"vs the {target:.1%} target",
        help=f"Requests answered without a 5xx since the API started ({n:,} requests, all routes but probes; "
        f"{settings.api_url}/metrics).",
    )


def status_row(settings: Settings) -> None:
    left, middle, right, available = st.columns(4)
    with left:
        champ = data.champion(settings)
        if champ is None:
            ui.tile("Champion", None, help="Promoted by the pipeline's `champion_model` asset.")
        else:
            promoted = pd.Timestamp(champ["promoted_at"])
            ui.tile(
                "Champion",
                champ["model"],
                f"promoted {ui.ago(promoted)}",
                neutral=True,
                help=f"Serving version `{champ['model_version']}`.",
            )
            st.caption(
                f"`{champ['model_version']}` · promoted {promoted:%Y-%m-%d %H:%M} UTC"
                + (f" · registry version {champ['registry_version']}" if champ.get("registry_version") else "")
            )
    with middle:
        drift = data.table(settings, data.DRIFT_RESULTS)
        if drift is None or drift.empty:
            ui.tile("Drift", None, help="From the drift monitor's `drift_results` table.")
        else:
            last = drift[drift["window_end"] == drift["window_end"].max()]
            n_drifted = int(last["drifted"].astype(bool).sum())
            verdict = bool(last["window_drifted"].astype(bool).any()) if "window_drifted" in last else n_drifted > 0
            ui.tile(
                "Drift",
                "drift detected" if verdict else "no drift",
                f"{n_drifted} of {len(last)} metrics",
                inverse=True,
                description="in the latest window",
                help="Latest window of the drift monitor; details on the Drift page.",
            )
            start, end = pd.Timestamp(last["window_start"].min()), pd.Timestamp(last["window_end"].max())
            st.caption(f"Window {start:%Y-%m-%d} → {end:%Y-%m-%d}")
    with right:
        run = data.last_run(settings)
        if run is None:
            ui.tile("Last pipeline run", None, help="From the `pipeline_health` table, written after every run.")
        else:
            when = pd.Timestamp(run["when"]) if pd.notna(run["when"]) else None
            ui.tile(
                "Last pipeline run",
                run["status"].lower(),
                ui.ago(when) if when is not None else None,
                neutral=True,
                help=f"Run `{run['run_id']}`.",
            )
            st.caption(f"`{run['job']}`" + (f" · {when:%Y-%m-%d %H:%M} UTC" if when is not None else ""))
    with available:
        availability_tile(settings)


def render(settings: Settings) -> None:
    st.title("Overview")
    head, control = st.columns([3, 2], vertical_alignment="bottom")
    head.subheader("Online")
    with control:
        period = st.segmented_control(
            "Period",
            list(PERIODS),
            default="7 days",
            required=True,
            key="overview_period",
            label_visibility="collapsed",
        )
    online_row(settings, period)
    champ = data.champion(settings)
    who = f"the champion ({champ['model']})" if champ else "the champion"
    st.subheader(f"Offline: {who} on the temporal test split")
    offline_row(settings)
    st.subheader("Status")
    status_row(settings)


render(ui.settings())
