"""The exploratory report on the cleaned interactions: one self-contained HTML file.

plotly.js is embedded once, inline, so the report opens offline with no CDN.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from recsys_assets.lib.evaluation.splits import SEQUENCE_COL, time_mode
from recsys_assets.lib.ingest.cleaning import time_problem

COLD_START_THRESHOLD = 5
QUANTILES: dict[str, float] = {"min": 0.0, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "p99": 0.99, "max": 1.0}
# Coarsest first: the resolution of a log is the coarsest unit every timestamp is a whole multiple of.
RESOLUTIONS: tuple[tuple[str, pd.Timedelta], ...] = (
    ("day", pd.Timedelta(days=1)),
    ("hour", pd.Timedelta(hours=1)),
    ("minute", pd.Timedelta(minutes=1)),
    ("second", pd.Timedelta(seconds=1)),
    ("millisecond", pd.Timedelta(milliseconds=1)),
)


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: uniform, 1: one item takes all)."""
    x = np.sort(np.asarray(values, dtype="float64"))
    if x.size == 0 or x.sum() == 0:
        return 0.0
    n = x.size
    cum = np.cumsum(x)
    return float((n + 1 - 2 * (cum / cum[-1]).sum()) / n)


def quantiles(counts: pd.Series) -> dict[str, float]:
    """The distribution of counts (events per user or per item) at `QUANTILES`."""
    if counts.empty:
        return dict.fromkeys(QUANTILES, 0.0)
    return {name: float(counts.quantile(q)) for name, q in QUANTILES.items()}


def repeat_stats(inter: pd.DataFrame) -> dict[str, float]:
    """How much users consume again what they had before: the share of events on a (user, item) pair
    the user already had an event on, and the share of users with at least one such event."""
    if inter.empty:
        return {"repeat_event_share": 0.0, "users_with_repeats_share": 0.0}
    per_pair = inter.groupby(["user_id", "item_id"], sort=False).size()
    repeats = per_pair - 1
    by_user = repeats.groupby(level="user_id").sum()
    return {
        "repeat_event_share": float(repeats.sum() / len(inter)),
        "users_with_repeats_share": float((by_user > 0).mean()),
    }


def time_stats(inter: pd.DataFrame) -> dict[str, str]:
    """The time span and resolution of the log, or what orders it instead ("no time", "sequence only")."""
    mode = time_mode(inter)
    if mode != "timestamp":
        said = "no time" if mode == "none" else "sequence only"
        out = {"time_mode": mode, "time_span": said, "time_resolution": said}
        if mode == "sequence" and SEQUENCE_COL in inter:
            steps = inter.dropna(subset=[SEQUENCE_COL]).groupby("user_id")[SEQUENCE_COL].nunique()
            out["sequence_steps_per_user_median"] = f"{float(steps.median()) if len(steps) else 0.0:g}"
        return out
    ts = pd.to_datetime(inter["timestamp"], utc=True).dropna()
    if ts.empty:
        return {"time_mode": mode, "time_span": "no time", "time_resolution": "no time"}
    offsets = ts - pd.Timestamp(0, tz="UTC")
    resolution = next((name for name, unit in RESOLUTIONS if (offsets % unit == pd.Timedelta(0)).all()), "sub-ms")
    return {"time_mode": mode, "time_span": str(ts.max() - ts.min()), "time_resolution": resolution}


def eda_summary(inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> dict[str, Any]:
    """The report's key numbers, also shown as asset metadata."""
    n_users, n_items = len(users), len(items)
    pairs = inter[["user_id", "item_id"]].drop_duplicates()
    item_pop = inter.groupby("item_id").size().sort_values(ascending=False)
    user_act = inter.groupby("user_id").size()
    top20 = max(1, round(0.2 * len(item_pop)))
    funnel = inter["event_type"].value_counts()
    problem = time_problem(inter, time_mode(inter))
    return {
        "n_interactions": len(inter),
        "n_users": n_users,
        "n_items": n_items,
        "n_user_item_pairs": len(pairs),
        "sparsity": float(1 - len(pairs) / max(1, n_users * n_items)),
        "item_popularity_gini": gini(item_pop.to_numpy()),
        "top20pct_items_share_of_events": float(item_pop.iloc[:top20].sum() / max(1, len(inter))),
        "median_events_per_user": float(user_act.median()) if len(user_act) else 0.0,
        "median_events_per_item": float(item_pop.median()) if len(item_pop) else 0.0,
        "events_per_user": quantiles(user_act),
        "events_per_item": quantiles(item_pop),
        **repeat_stats(inter),
        "cold_users_share": float((users["n_interactions"] < COLD_START_THRESHOLD).mean()) if n_users else 0.0,
        "cold_items_share": float((items["n_interactions"] < COLD_START_THRESHOLD).mean()) if n_items else 0.0,
        "items_without_interactions": int((items["n_interactions"] == 0).sum()),
        "time_min": str(inter["timestamp"].min()),
        "time_max": str(inter["timestamp"].max()),
        "distinct_timestamps": int(inter["timestamp"].nunique()),
        **time_stats(inter),
        # what is wrong with the times (all or most events at one instant, numbers read as 1970), or none
        "time_warning": problem[1] if problem else "none",
        "event_types": {k: int(v) for k, v in funnel.items()},
    }


def _figures(inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> list[tuple[str, go.Figure]]:
    figs: list[tuple[str, go.Figure]] = []
    pop = inter.groupby("item_id").size().sort_values(ascending=False).to_numpy()
    fig = go.Figure(go.Scatter(x=np.arange(1, len(pop) + 1), y=pop, mode="lines", name="events"))
    fig.update_layout(xaxis_title="item rank", yaxis_title="events", yaxis_type="log", xaxis_type="log")
    figs.append(("Item popularity long tail", fig))

    act = inter.groupby("user_id").size()
    fig = go.Figure(go.Histogram(x=np.log10(act.to_numpy()), nbinsx=40))
    fig.update_layout(xaxis_title="log10(events per user)", yaxis_title="users")
    figs.append(("User activity distribution", fig))

    if time_mode(inter) == "timestamp":
        span = inter["timestamp"].max() - inter["timestamp"].min()
        freq = "h" if span <= pd.Timedelta(days=14) else "D" if span <= pd.Timedelta(days=400) else "W"
        per = inter.set_index("timestamp").groupby([pd.Grouper(freq=freq), "event_type"]).size().unstack(fill_value=0)
        fig = go.Figure(
            [go.Scatter(x=per.index, y=per[c], mode="lines", name=c, stackgroup="one") for c in per.columns]
        )
        fig.update_layout(xaxis_title=f"time ({freq})", yaxis_title="events")
        figs.append(("Events over time", fig))

    order = ["view", "click", "favorite", "add_to_cart", "purchase", "rating"]
    funnel = inter["event_type"].value_counts().reindex([o for o in order if o in set(inter["event_type"])])
    fig = go.Figure(go.Funnel(y=list(funnel.index), x=list(funnel.to_numpy())))
    figs.append(("Event-type funnel", fig))

    ratings = inter.loc[inter["event_type"] == "rating", "value"]
    if len(ratings):
        counts = ratings.value_counts().sort_index()
        fig = go.Figure(go.Bar(x=counts.index.astype(str), y=counts.to_numpy()))
        fig.update_layout(xaxis_title="rating", yaxis_title="events")
        figs.append(("Rating distribution", fig))

    bins = [-1, 0, 5, 20, np.inf]
    labels = ["0", "1-5", "6-20", "20+"]
    u = pd.cut(users["n_interactions"], bins=bins, labels=labels).value_counts().reindex(labels)
    i = pd.cut(items["n_interactions"], bins=bins, labels=labels).value_counts().reindex(labels)
    fig = go.Figure([go.Bar(x=labels, y=u.to_numpy(), name="users"), go.Bar(x=labels, y=i.to_numpy(), name="items")])
    fig.update_layout(barmode="group", xaxis_title="events in the log", yaxis_title="count")
    figs.append(("Cold start: users and items by number of events", fig))
    return figs


def render_eda_report(
    inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, summary: dict[str, Any], title: str
) -> str:
    """The full HTML document (plotly.js inline in the first figure only)."""
    parts = []
    for n, (name, fig) in enumerate(_figures(inter, items, users)):
        fig.update_layout(height=380, margin=dict(l=50, r=20, t=30, b=50), template="plotly_white")
        div = fig.to_html(full_html=False, include_plotlyjs=(n == 0), config={"displaylogo": False})
        parts.append(f"<section><h2>{html.escape(name)}</h2>{div}</section>")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items())
    time_warning = summary.get("time_warning", "none")
    if summary.get("time_mode", "timestamp") != "timestamp":
        time_warning = {
            "none": "the log has no time: only the random protocol is evaluated",
            "sequence": "sequence only: events are ordered within each user (the temporal protocol is a "
            "per-user sequence split), not in time",
        }[summary["time_mode"]]
    warning = (
        "" if time_warning == "none" else f'<p id="time-warning"><strong>Time:</strong> {html.escape(time_warning)}</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EDA report: {html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: .25rem .75rem; border-bottom: 1px solid #ddd; text-align: left; }}
section {{ margin-top: 2rem; }}
</style></head>
<body>
<h1>Exploratory data analysis</h1>
<p>Source: {html.escape(title)}</p>
{warning}<h2>Key numbers</h2>
<table id="summary">{rows}</table>
{"".join(parts)}
</body></html>
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x:,g}" if isinstance(x, float) else f"{k}: {x:,}" for k, x in v.items())
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
