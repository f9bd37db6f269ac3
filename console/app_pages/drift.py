"""Drift: the drift monitor's verdict per window, the metrics that drifted, the stored Evidently report
of a window, and the retrains a drift triggered."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from console import data, ui
from recsys_assets.contract.settings import Settings


def windows(drift: pd.DataFrame) -> pd.DataFrame:
    """One row per window, newest first: how many metrics were checked and how many drifted."""
    drift = drift.assign(drifted=drift["drifted"].astype(bool))
    per = (
        drift.groupby(["window_start", "window_end"], sort=False)
        .agg(metrics=("metric", "nunique"), drifted=("drifted", "sum"))
        .reset_index()
        .sort_values("window_end", ascending=False, kind="stable")
    )
    if "window_drifted" in drift.columns:
        # the monitor's verdict (some metrics are reported without deciding, e.g. prediction drift)
        verdict = drift.groupby("window_end")["window_drifted"].agg(lambda v: bool(v.astype(bool).any()))
        per["status"] = per["window_end"].map(verdict).map(lambda d: "drift" if d else "ok")
    else:
        per["status"] = per["drifted"].map(lambda n: "drift" if n else "ok")
    names = drift[drift["drifted"]].groupby("window_end")["metric"].agg(lambda m: ", ".join(sorted(set(m))))
    per["drifted_metrics"] = per["window_end"].map(names).fillna("")
    return per.reset_index(drop=True)


def _label(row: pd.Series) -> str:
    return f"{pd.Timestamp(row['window_start']):%Y-%m-%d %H:%M} → {pd.Timestamp(row['window_end']):%Y-%m-%d %H:%M}"


def retrains_for(retrains: pd.DataFrame, window: pd.Series) -> pd.DataFrame:
    """Retrains linked to a window: by its end (`window_end`/`drift_window_end`), else those started
    inside the window or after it."""
    for col in ("window_end", "drift_window_end"):
        if col in retrains.columns:
            return retrains[pd.to_datetime(retrains[col], utc=True) == pd.Timestamp(window["window_end"])]
    for col in ("triggered_at", "started_at", "start_time", "timestamp", "created_at"):
        if col in retrains.columns:
            return retrains[pd.to_datetime(retrains[col], utc=True) >= pd.Timestamp(window["window_start"])]
    return retrains


def render(settings: Settings) -> None:
    st.title("Drift")
    drift = data.table(settings, data.DRIFT_RESULTS)
    retrains = data.table(settings, data.RETRAIN_RUNS)
    if drift is None or drift.empty:
        ui.no_data(
            "no drift results",
            "The drift monitor writes `drift_results` once it has compared live traffic with the training data.",
        )
        if retrains is None or retrains.empty:
            return
        st.subheader("Retrains")
        st.dataframe(retrains, hide_index=True)
        return

    for col in ("window_start", "window_end"):
        drift[col] = pd.to_datetime(drift[col], utc=True)
    per = windows(drift)
    latest = per.iloc[0]
    cols = st.columns(3)
    with cols[0]:
        ui.tile("Latest window", "drift detected" if latest["status"] == "drift" else "no drift", help=_label(latest))
    with cols[1]:
        ui.tile("Metrics drifted (latest)", f"{int(latest['drifted'])} of {int(latest['metrics'])}")
    with cols[2]:
        ui.tile("Windows with drift", f"{int((per['status'] == 'drift').sum())} of {len(per)}")

    fig = px.line(
        drift.sort_values("window_end"),
        x="window_end",
        y="score",
        color="metric",
        markers=True,
        labels={"window_end": "window end", "score": "drift score"},
        color_discrete_sequence=ui.COLORS,
    )
    flagged = drift[drift["drifted"].astype(bool)]
    fig.add_scatter(
        x=flagged["window_end"],
        y=flagged["score"],
        mode="markers",
        name="drifted",
        marker=dict(symbol="x", size=12, color="#E45756", line=dict(width=2)),
    )
    ui.chart(ui.style(fig, height=340), key="drift_scores")

    st.subheader("Windows")
    st.dataframe(
        per,
        hide_index=True,
        column_config={
            "window_start": st.column_config.DatetimeColumn("Start", format="YYYY-MM-DD HH:mm"),
            "window_end": st.column_config.DatetimeColumn("End", format="YYYY-MM-DD HH:mm"),
            "metrics": "Metrics",
            "drifted": "Drifted",
            "status": "Status",
            "drifted_metrics": "Drifted metrics",
        },
    )

    choice = st.selectbox("Window", range(len(per)), format_func=lambda i: _label(per.iloc[i]), key="drift_window")
    window = per.iloc[choice]
    rows = drift[drift["window_end"] == window["window_end"]].sort_values("score", ascending=False)
    st.dataframe(
        rows[["metric", "score", "drifted"]],
        hide_index=True,
        column_config={
            "metric": "Metric",
            "score": st.column_config.NumberColumn("Score", format="%.3f"),
            "drifted": st.column_config.CheckboxColumn("Drifted"),
        },
    )

    st.subheader("Retrains triggered")
    if retrains is None or retrains.empty:
        ui.no_data("no retrain recorded", "Retrains started by a drift appear in the `retrain_runs` table.")
    else:
        linked = retrains_for(retrains, window)
        if linked.empty:
            st.write("No retrain was triggered by this window.")
        else:
            st.dataframe(linked, hide_index=True)

    st.subheader("Evidently report")
    paths = rows["report_path"].dropna().astype(str).unique() if "report_path" in rows else []
    html = data.report_html(settings, paths[0]) if len(paths) else None
    if html is None:
        ui.no_data("no stored report for this window")
    else:
        ui.embed_html(html, height=900, title="Evidently drift report")


render(ui.settings())
