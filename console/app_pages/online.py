"""Online: CTR and conversion of the served lists over time, per model version or A/B arm, with the
traffic behind each point (from the API's event log)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from console import data, kpis, ui
from recsys_assets.contract.settings import Settings

GROUPS = {"Model version": "model_version", "A/B arm": "arm"}
FREQS = {"Hour": "h", "Day": "D", "Week": "W"}
RATES = {
    "List CTR": "ctr",
    "Impression CTR": "impression_ctr",
    "Conversion per list": "conversion",
    "Conversion per click": "conversion_per_click",
}


def trend_figure(series, by: str, rate: str, rate_label: str) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    for n, (group, rows) in enumerate(series.groupby(by, sort=True)):
        color = ui.COLORS[n % len(ui.COLORS)]
        custom = rows[["lists", "impressions"]].to_numpy()
        fig.add_trace(
            go.Scatter(
                x=rows["period"],
                y=rows[rate],
                name=str(group),
                legendgroup=str(group),
                mode="lines+markers",
                line=dict(color=color, width=2),
                marker=dict(size=7),
                customdata=custom,
                hovertemplate=f"%{{x}}<br>{rate_label} %{{y:.1%}}<br>%{{customdata[0]:,}} lists, "
                "%{customdata[1]:,} impressions<extra>%{fullData.name}</extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=rows["period"],
                y=rows["impressions"],
                name=str(group),
                legendgroup=str(group),
                showlegend=False,
                marker_color=color,
                opacity=0.75,
                hovertemplate="%{x}<br>%{y:,} impressions<extra>%{fullData.name}</extra>",
            ),
            row=2,
            col=1,
        )
    fig.update_yaxes(title_text=rate_label, tickformat=".0%", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="impressions", rangemode="tozero", row=2, col=1)
    return ui.style(fig, height=480, barmode="group", hovermode="x unified")


def render(settings: Settings) -> None:
    st.title("Online")
    lists = data.served_lists(settings)
    if lists is None or lists.empty:
        ui.no_data(
            "the API has not logged any served list",
            "Impressions and feedback appear here once the API writes its event log under `events/`.",
        )
        replay_runs(settings)
        return

    total = kpis.totals(lists)
    cols = st.columns(6)
    with cols[0]:
        ui.tile("Lists served", f"{total['lists']:,}")
    with cols[1]:
        ui.tile("Impressions", f"{total['impressions']:,}")
    with cols[2]:
        ui.tile("List CTR", ui.pct(total["ctr"]), help="Lists with at least one click / lists served.")
    with cols[3]:
        ui.tile("Impression CTR", ui.pct(total["impression_ctr"]), help="Impressions whose item was clicked.")
    with cols[4]:
        ui.tile(
            "Conversion per list",
            ui.pct(total["conversion"]),
            help="Lists with a purchase or a rating ≥ 4 / lists served.",
        )
    with cols[5]:
        ui.tile(
            "Conversion per click",
            ui.pct(total["conversion_per_click"]),
            help="Clicked lists with a purchase or a rating ≥ 4 / clicked lists (the share of clicks that convert).",
        )

    c1, c2, c3 = st.columns(3)
    with c1:
        group_label = st.segmented_control(
            "Split by", list(GROUPS), default="Model version", required=True, key="online_by"
        )
    with c2:
        freq_label = st.segmented_control("Granularity", list(FREQS), default="Day", required=True, key="online_freq")
    with c3:
        rate_label = st.segmented_control("Rate", list(RATES), default="List CTR", required=True, key="online_rate")
    by, freq, rate = GROUPS[group_label], FREQS[freq_label], RATES[rate_label]

    series = kpis.kpis_over_time(lists, freq=freq, by=by)
    ui.chart(trend_figure(series, by, rate, rate_label), key="online_trend")
    st.caption(
        "A list is served at its first impression; clicks, carts, purchases and ratings count for the list "
        "whose `recommendation_id` they carry, whenever they arrive."
    )

    st.subheader(f"By {group_label.lower()}")
    per_group = kpis.kpis_by(lists, by)
    rates = list(RATES.values())
    # shown in percent with one decimal everywhere (the column type's own percent format trims zeros)
    per_group[rates] = per_group[rates] * 100
    st.dataframe(
        per_group,
        hide_index=True,
        column_config={
            by: st.column_config.TextColumn(group_label),
            "lists": st.column_config.NumberColumn("Lists", format="localized"),
            "impressions": st.column_config.NumberColumn("Impressions", format="localized"),
            "clicked_lists": st.column_config.NumberColumn("Clicked lists", format="localized"),
            "clicked_impressions": st.column_config.NumberColumn("Clicked impressions", format="localized"),
            "converted_lists": st.column_config.NumberColumn("Converted lists", format="localized"),
            "clicked_converted_lists": st.column_config.NumberColumn("Clicked, converted lists", format="localized"),
            "ctr": st.column_config.NumberColumn("List CTR", format="%.1f%%"),
            "impression_ctr": st.column_config.NumberColumn("Impression CTR", format="%.1f%%"),
            "conversion": st.column_config.NumberColumn("Conversion per list", format="%.1f%%"),
            "conversion_per_click": st.column_config.NumberColumn("Conversion per click", format="%.1f%%"),
        },
    )
    replay_runs(settings)
    replay_phases(settings)


def _replay_columns() -> dict:
    """Column labels shared by the replay tables (rates in percent)."""
    return {
        "arm": st.column_config.TextColumn("A/B arm"),
        "lists": st.column_config.NumberColumn("Lists", format="localized"),
        "ctr": st.column_config.NumberColumn("List CTR", format="%.1f%%"),
        "conversion": st.column_config.NumberColumn("Conversion per list", format="%.1f%%"),
        "hit_rate": st.column_config.NumberColumn("Hit rate", format="%.1f%%"),
    }


def replay_phases(settings: Settings) -> None:
    """The latest drift scenario (`simulate`): CTR per arm before the shift, during it and after the
    retrained champion serves, and the seconds from the shift to each step of the loop."""
    phases = data.table(settings, data.REPLAY_PHASES)
    if phases is None or phases.empty:
        return
    latest = phases.sort_values("phase_started_at").iloc[-1]["run_id"]
    run = phases[phases["run_id"] == latest]
    first = run.iloc[0]
    st.subheader("Drift scenario")
    steps = {
        "Drift detected": first["drift_detected"],
        "Retrain started": first["retrain_started"],
        "New champion served": first["served"],
    }
    for col, (label, seconds) in zip(st.columns(len(steps)), steps.items(), strict=True):
        col.metric(label, "-" if pd.isna(seconds) else f"{seconds:,.0f} s", "after the shift", delta_color="off")
    shown = run[["arm", "phase", "lists", "ctr", "conversion", "hit_rate"]].copy()
    shown[["ctr", "conversion", "hit_rate"]] = shown[["ctr", "conversion", "hit_rate"]] * 100
    st.dataframe(
        shown,
        hide_index=True,
        column_config={"phase": st.column_config.TextColumn("Phase"), **_replay_columns()},
    )
    window = first["window"] or "none"
    st.caption(
        f"Replay {latest} ({first['dataset']}, shift: {first['shift'] or 'none'}): `before` the shift, `during` it "
        f"with the champion trained before it, `after` the retrained champion serves. Drifted window: {window}; "
        f"champion {first['champion_before'] or '-'} then {first['champion_after'] or '-'}."
    )


def replay_runs(settings: Settings) -> None:
    """The replay simulator's runs, newest first, one row per A/B arm (nothing before the first run)."""
    runs = data.table(settings, data.REPLAY_RUNS)
    if runs is None or runs.empty:
        return
    st.subheader("Replay runs")
    runs = runs.sort_values(["started_at", "arm"], ascending=[False, True]).head(20)
    shown = runs[["started_at", "dataset", "arm", "model_versions", "lists", "ctr", "conversion", "hit_rate"]].copy()
    shown[["ctr", "conversion", "hit_rate"]] = shown[["ctr", "conversion", "hit_rate"]] * 100
    shown["freshness"] = runs["freshness_requests_max"]
    st.dataframe(
        shown,
        hide_index=True,
        column_config={
            "started_at": st.column_config.DatetimeColumn("Started (UTC)", format="YYYY-MM-DD HH:mm"),
            "dataset": st.column_config.TextColumn("Data set"),
            "model_versions": st.column_config.TextColumn("Model"),
            **_replay_columns(),
            "freshness": st.column_config.NumberColumn("Freshness (requests)"),
        },
    )
    st.caption(
        "A held-out future replayed through the API as live traffic (`python -m recsys_assets.tools.replay`, "
        "docs/replay.md): each simulated user clicks what they really took later; freshness is how many of "
        "the user's lists it took for a click to show (1: the very next)."
    )


render(ui.settings())
