"""Data: the EDA highlights of the cleaned interactions, the full EDA report, and the rows the
ingestion rejected, by reason."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from console import data, ui
from recsys_assets.contract import events as schema
from recsys_assets.contract.settings import Settings


def render_eda(settings: Settings) -> None:
    summary = data.eda(settings)
    if summary is None:
        ui.no_data("no cleaned interactions", "The pipeline's ingestion writes `interactions`, `items` and `users`.")
        return
    rows = [
        [
            ("Interactions", f"{summary['n_interactions']:,}", None),
            ("Users", f"{summary['n_users']:,}", None),
            ("Items", f"{summary['n_items']:,}", f"{summary['items_without_interactions']:,} without interactions"),
            ("Sparsity", ui.pct(summary["sparsity"], 2), "of the user × item matrix is empty"),
        ],
        [
            ("Popularity Gini", ui.num(summary["item_popularity_gini"], 3), "0 uniform, 1 one item takes all"),
            ("Top 20% items' share", ui.pct(summary["top20pct_items_share_of_events"]), "of the events"),
            ("Cold users", ui.pct(summary["cold_users_share"]), "fewer than 5 events"),
            ("Cold items", ui.pct(summary["cold_items_share"]), "fewer than 5 events"),
        ],
    ]
    for row in rows:
        for col, (label, value, help_) in zip(st.columns(len(row)), row, strict=True):
            with col:
                ui.tile(label, value, help=help_)
    start, end = pd.Timestamp(summary["time_min"]), pd.Timestamp(summary["time_max"])
    st.caption(
        f"Events from {start:%Y-%m-%d} to {end:%Y-%m-%d}; median {summary['median_events_per_user']:g} events per "
        f"user, {summary['median_events_per_item']:g} per item."
    )
    left, right = st.columns([3, 2], gap="large")
    order = [t for t in schema.CANONICAL_EVENT_TYPES if t in summary["event_types"]]
    with left:
        st.markdown("**Events over time**")
        per = data.events_over_time(settings)
        if per is not None and len(per):
            fig = px.area(
                per,
                x="period",
                y="events",
                color="event_type",
                category_orders={"event_type": order},
                color_discrete_sequence=ui.COLORS,
                labels={"event_type": "event type"},
            )
            ui.chart(ui.style(fig, height=300, xaxis_title=None), key="data_over_time")
    with right:
        st.markdown("**Events by type**")
        types = pd.Series(summary["event_types"], name="events").rename_axis("event type").reset_index()
        fig = px.bar(types, x="events", y="event type", orientation="h", category_orders={"event type": order})
        fig.update_traces(marker_color=ui.COLORS[0], texttemplate="%{x:,}", textposition="inside")
        ui.chart(ui.style(fig, height=min(300, 110 + 45 * len(types)), yaxis_title=None), key="data_event_types")

    html = data.report_html(settings, "/".join(schema.EDA_REPORT))
    if html is None:
        st.caption("The EDA report (`reports/eda_report.html`) is not written yet.")
    else:
        st.caption(f"Full report: `{data.storage(settings).uri(*schema.EDA_REPORT)}`")
        if st.toggle("Show the full EDA report", key="data_eda_html"):
            ui.embed_html(html, height=1000, title="EDA report")


def render_rejects(settings: Settings) -> None:
    st.subheader("Ingestion rejects")
    counts = data.latest_reject_counts(settings)
    sample = data.table(settings, schema.REJECTED_EVENTS)
    if counts is None and sample is None:
        ui.no_data("no ingestion run", "Cleaning counts the rejected rows per reason and keeps a sample.")
        return
    if counts is None:
        # without the run's metadata, the kept sample (capped per reason) is what there is
        counts = sample["reason"].value_counts().to_dict() if len(sample) else {}
        basis = "rows kept in `rejected_events` (a sample, capped per reason)"
    else:
        basis = "rows rejected by the latest cleaning run"
    total = sum(counts.values())
    if total == 0:
        st.success("The latest cleaning run rejected no row.", icon=":material/check_circle:")
        return
    frame = pd.DataFrame({"reason": list(counts), "rows": list(counts.values())})
    frame = frame[frame["rows"] > 0]
    order = [r for r in schema.REJECT_REASONS if r in set(frame["reason"])]
    order += sorted(set(frame["reason"]) - set(order))
    fig = px.bar(frame, x="rows", y="reason", orientation="h", category_orders={"reason": order})
    fig.update_traces(marker_color=ui.COLORS[3], texttemplate="%{x:,}", textposition="outside", cliponaxis=False)
    st.markdown(f"**{total:,}** {basis}")
    ui.chart(ui.style(fig, height=80 + 40 * len(frame), yaxis_title=None), key="data_rejects")
    if sample is not None and len(sample):
        with st.expander(f"Sample of rejected rows ({len(sample):,})"):
            st.dataframe(sample, hide_index=True)


def render(settings: Settings) -> None:
    st.title("Data")
    render_eda(settings)
    render_rejects(settings)


render(ui.settings())
