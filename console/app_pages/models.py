"""Models: the evaluation report (model × metric × K, both protocols, cold-start slices) as tables and
charts, the candidates' off-policy estimates on the champion's logged lists, and the champion/challenger history
of the MLflow registry."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from console import data, ui
from recsys_assets.contract.events import ONLINE_ESTIMATES
from recsys_assets.contract.settings import Settings

ACCURACY = ["ndcg", "map", "precision", "recall", "hit", "mrr"]
BEYOND_ACCURACY = ["itemcoverage", "averagepopularity", "headpercentage"]
METRIC_LABELS = {
    "ndcg": "NDCG",
    "map": "MAP",
    "precision": "Precision",
    "recall": "Recall",
    "hit": "Hit",
    "mrr": "MRR",
    "itemcoverage": "Item coverage",
    "averagepopularity": "Avg popularity",
    "headpercentage": "Head share",
}
SLICES = ["all", "0", "1-5", "6-20", "20+", "new_item"]
SLICE_LABELS = {
    "all": "all users",
    "0": "0 training events",
    "1-5": "1-5 events",
    "6-20": "6-20 events",
    "20+": "20+ events",
    "new_item": "new items",
}


def _models_order(report: pd.DataFrame) -> list[str]:
    """Models by NDCG@10 on the temporal protocol, best first (the order of every chart)."""
    key = report[(report["metric"] == "ndcg") & (report["k"] == 10) & (report["slice"] == "all")]
    key = key[key["protocol"] == "temporal"] if (key["protocol"] == "temporal").any() else key
    order = key.sort_values("value", ascending=False)["model"].drop_duplicates().tolist()
    return order + sorted(set(report["model"]) - set(order))


def comparison_table(report: pd.DataFrame, protocol: str, k: int, slice_: str, order: list[str]) -> pd.DataFrame:
    sel = report[(report["protocol"] == protocol) & (report["k"] == k) & (report["slice"] == slice_)]
    table = sel.pivot_table(index="model", columns="metric", values="value", aggfunc="first")
    cols = [m for m in ACCURACY + BEYOND_ACCURACY if m in table.columns]
    table = table.reindex([m for m in order if m in table.index])[cols]
    n_users = sel.groupby("model")["n_users"].first()
    table.insert(0, "Users", n_users.reindex(table.index))
    return table.rename(columns=METRIC_LABELS).rename_axis("Model")


def render_report(report: pd.DataFrame, champion: str | None) -> None:
    order = _models_order(report)
    colors = {m: ui.COLORS[n % len(ui.COLORS)] for n, m in enumerate(order)}
    protocols = [p for p in ("temporal", "random") if p in set(report["protocol"])]
    ks = sorted(int(k) for k in report["k"].dropna().unique())
    metrics = [m for m in ACCURACY + BEYOND_ACCURACY if m in set(report["metric"])]

    c1, c2, c3, c4 = st.columns([1.2, 1, 1.4, 1.4])
    protocol = c1.segmented_control("Protocol", protocols, default=protocols[0], required=True, key="models_protocol")
    k = c2.segmented_control("K", ks, default=10 if 10 in ks else ks[0], required=True, key="models_k")
    slices = [s for s in SLICES if s in set(report["slice"])]
    slice_ = c3.selectbox("Users", slices, format_func=SLICE_LABELS.get, key="models_slice")
    metric = c4.selectbox(
        "Metric",
        metrics,
        index=metrics.index("ndcg") if "ndcg" in metrics else 0,
        format_func=METRIC_LABELS.get,
        key="models_metric",
    )
    label = f"{METRIC_LABELS[metric]}@{k}"

    st.subheader(f"Comparison: {protocol} protocol, {SLICE_LABELS[slice_]}, K = {k}")
    table = comparison_table(report, protocol, k, slice_, order)
    accuracy_cols = [METRIC_LABELS[m] for m in ACCURACY if METRIC_LABELS[m] in table.columns]
    styled = table.style.format("{:.4f}", subset=[c for c in table.columns if c != "Users"]).highlight_max(
        subset=accuracy_cols, props="font-weight: 700; background-color: rgba(84, 162, 75, 0.18)"
    )
    if champion in table.index:
        styled = styled.map_index(lambda m: "font-weight: 700" if m == champion else "", axis=0)
    st.dataframe(styled, width="stretch")
    st.caption(
        ("Champion: **" + champion + "**. " if champion else "")
        + "Best value per accuracy metric highlighted. Item coverage, average popularity and head share "
        "describe the lists rather than their accuracy."
    )

    left, right = st.columns(2)
    with left:
        sel = report[
            (report["protocol"] == protocol) & (report["slice"] == slice_) & (report["metric"] == metric)
        ].sort_values("k")
        fig = px.line(
            sel,
            x="k",
            y="value",
            color="model",
            markers=True,
            category_orders={"model": order},
            color_discrete_map=colors,
            labels={"k": "K", "value": METRIC_LABELS[metric]},
        )
        fig.update_xaxes(tickvals=ks)
        st.markdown(f"**{METRIC_LABELS[metric]} by K** ({protocol} protocol)")
        ui.chart(ui.style(fig), key="models_by_k")
    with right:
        sel = report[(report["slice"] == slice_) & (report["metric"] == metric) & (report["k"] == k)]
        fig = px.bar(
            sel,
            x="model",
            y="value",
            color="protocol",
            barmode="group",
            category_orders={"model": order, "protocol": protocols},
            color_discrete_map={"temporal": ui.COLORS[0], "random": "#9ECAE9"},
            labels={"value": label, "model": ""},
        )
        st.markdown(f"**{label} by protocol**: temporal vs random split")
        ui.chart(ui.style(fig), key="models_protocols")

    st.subheader(f"Cold start: {label} by user history ({protocol} protocol)")
    sel = report[(report["protocol"] == protocol) & (report["metric"] == metric) & (report["k"] == k)]
    users = sel.drop_duplicates("slice").set_index("slice")["n_users"]
    # the number of test users under each slice's name: a bar over 3 users says little
    labels = {s: f"{SLICE_LABELS[s]}<br>({int(users[s]):,} users)" for s in users.index}
    sel = sel[sel["slice"].isin(SLICES)].assign(slice_label=lambda d: d["slice"].map(labels))
    fig = px.bar(
        sel,
        x="slice_label",
        y="value",
        color="model",
        barmode="group",
        category_orders={"slice_label": [labels[s] for s in slices if s in labels], "model": order},
        color_discrete_map=colors,
        hover_data={"n_users": True, "slice_label": False},
        labels={"slice_label": "", "value": label, "n_users": "users"},
    )
    ui.chart(ui.style(fig), key="models_cold_start")
    st.caption(
        "Test users by their number of training events; *new items*: the users with test positives on items "
        "unseen in training, scored on those positives only."
    )


def render_registry(settings: Settings) -> None:
    st.subheader("Champion and challenger history")
    history = data.registry_history(settings)
    if history is None:
        ui.no_data("no model registered in MLflow", "The pipeline's promotion step registers champion and challenger.")
        return
    ndcg = "ndcg_at_10.temporal.all"
    cols = ["version", "aliases", "registered_as", "model", "model_version", "created_at"]
    cols += [c for c in (ndcg, "map_at_10.temporal.all") if c in history.columns]
    if ndcg in history.columns and history[ndcg].notna().any():
        fig = px.scatter(
            history.assign(role=history["registered_as"].fillna("other")),
            x="version",
            y=ndcg,
            color="role",
            symbol="role",
            hover_data=["model", "model_version", "created_at"],
            color_discrete_map={"champion": ui.COLORS[2], "challenger": ui.COLORS[1], "other": ui.COLORS[8]},
            labels={ndcg: "NDCG@10 (temporal)", "version": "registry version"},
        )
        fig.update_traces(marker=dict(size=12))
        fig.update_xaxes(dtick=1)
        ui.chart(ui.style(fig, height=300), key="models_registry")
    st.dataframe(
        history[cols].sort_values("version", ascending=False),
        hide_index=True,
        column_config={
            "version": st.column_config.NumberColumn("Version", format="%d"),
            "aliases": "Aliases now",
            "registered_as": "Registered as",
            "model": "Model",
            "model_version": "Serving version",
            "created_at": st.column_config.DatetimeColumn("Registered", format="YYYY-MM-DD HH:mm"),
            ndcg: st.column_config.NumberColumn("NDCG@10", format="%.4f"),
            "map_at_10.temporal.all": st.column_config.NumberColumn("MAP@10", format="%.4f"),
        },
    )


def render_changes(settings: Settings) -> None:
    st.subheader("Champion changes")
    changes = data.champion_changes(settings)
    if changes is None:
        ui.no_data(
            "no champion change recorded",
            "Promotions, `python -m recsys_assets champion promote|rollback` and alias moves in the MLflow UI "
            "are recorded here.",
        )
        return
    st.dataframe(
        changes,
        hide_index=True,
        column_config={
            "at": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "actor": "Who / what",
            "action": "Action",
            "from_version": "From version",
            "to_version": "To version",
            "from_model": "From artifact",
            "to_model": "To artifact",
            "reason": "Reason",
        },
    )


def render_canary(settings: Settings) -> None:
    st.subheader("Canary gate")
    state = data.canary_state(settings)
    decisions = data.promotion_decisions(settings)
    if state is None and decisions is None:
        st.caption(
            "No canary yet. A retrain's winner that is another model than the champion's serves a share of users "
            "(`RECSYS_CANARY__SHARE`) before it may become champion; after a promotion the previous champion keeps "
            "a holdout share. Each verdict of the sequential test on online CTR and conversion shows here."
        )
        return
    if state is not None:
        last = state.get("last") or {}
        under = state["challenger"] if state["phase"] == "canary" else state["champion"]
        other = state["champion"] if state["phase"] == "canary" else state["challenger"]
        st.markdown(
            f"**Open {state['phase']}** since {state['started_at'][:19]} UTC: "
            f"`{under.get('model_version', '')}` under test against `{other.get('model_version', '')}`, "
            f"{float(state['share']):.0%} of users on the API's challenger arm, {state.get('looks', 0)} looks."
        )
        if last:
            st.caption(f"Last look: {last.get('reason', '')}")
    if decisions is not None:
        st.dataframe(
            decisions,
            hide_index=True,
            column_config={
                "at": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                "phase": "Phase",
                "verdict": "Verdict",
                "action": "Action",
                "champion_model": "Champion",
                "champion_version": "Champion version",
                "challenger_model": "Challenger",
                "challenger_version": "Challenger version",
                "champion_lists": st.column_config.NumberColumn("Champion lists", format="%d"),
                "champion_clicks": st.column_config.NumberColumn("Champion clicked lists", format="%d"),
                "challenger_lists": st.column_config.NumberColumn("Challenger lists", format="%d"),
                "challenger_clicks": st.column_config.NumberColumn("Challenger clicked lists", format="%d"),
                "champion_ctr": st.column_config.NumberColumn("Champion CTR", format="%.4f"),
                "challenger_ctr": st.column_config.NumberColumn("Challenger CTR", format="%.4f"),
                "estimate": st.column_config.NumberColumn("CTR difference (under test - other)", format="%.4f"),
                "low": st.column_config.NumberColumn("Low", format="%.4f"),
                "high": st.column_config.NumberColumn("High", format="%.4f"),
                "p_value": st.column_config.NumberColumn("p (always valid)", format="%.4f"),
                "reason": "Evidence",
            },
        )


def render_online_estimates(settings: Settings) -> None:
    st.subheader("Online estimates on the champion's logged lists")
    table = data.table(settings, ONLINE_ESTIMATES)
    if table is None or table.empty:
        ui.no_data(
            "no online estimate",
            "The retrain's `online_estimates` judges each candidate on the lists the champion served, once the "
            "live windows hold enough of them; exploration (`RECSYS_EXPLORATION`) lets it judge items the "
            "champion did not show.",
        )
        return
    st.caption(
        "Clicks per list each candidate would get on the champion's lists (its list CTR when a list gets one "
        "click at most), estimated off-policy from the logged propensities, with bootstrap intervals. `ips`, "
        "`snips` (IPS self-normalised by the candidate's items that can earn a click) and `dr` judge the "
        "candidate's own lists; `ips_position` and `rips` count only the champion's positions."
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "model": "Candidate",
            "estimator": "Estimator",
            "value": st.column_config.NumberColumn("Clicks per list", format="%.4f"),
            "ci_low": st.column_config.NumberColumn("Low", format="%.4f"),
            "ci_high": st.column_config.NumberColumn("High", format="%.4f"),
            "lists": st.column_config.NumberColumn("Lists", format="%d"),
            "matched_per_list": st.column_config.NumberColumn("Shown items per list", format="%.2f"),
            "logged_value": st.column_config.NumberColumn("Champion's clicks per list", format="%.4f"),
            "logged_ctr": st.column_config.NumberColumn("Champion's list CTR", format="%.4f"),
        },
    )


def render(settings: Settings) -> None:
    st.title("Models")
    report = data.evaluation_report(settings)
    champ = data.champion(settings)
    if report is None or report.empty:
        ui.no_data("no evaluation report", "The pipeline writes it after training the candidates (`make pipeline`).")
    else:
        render_report(report, champ["model"] if champ else None)
        html = data.report_html(settings, "/".join(data.EVALUATION_REPORT_HTML))
        if html and st.toggle("Show the full evaluation report", key="models_html"):
            ui.embed_html(html, height=900, title="Evaluation report")
    render_online_estimates(settings)
    render_canary(settings)
    render_registry(settings)
    render_changes(settings)


render(ui.settings())
