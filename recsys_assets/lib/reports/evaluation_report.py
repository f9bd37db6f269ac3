"""The offline evaluation report: every model on both protocols, at K = 5, 10, 20, by cold-start slice.

One self-contained HTML file (plotly.js inline once), next to the Parquet table it is drawn from.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go

HEADLINE = ("precision", "recall", "ndcg", "map", "hit", "mrr", "itemcoverage", "averagepopularity")


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, classes="metrics")


def render_evaluation_report(
    results: pd.DataFrame, title: str = "Model comparison", skipped: pd.DataFrame | None = None
) -> str:
    """The report's HTML; `skipped` (model, protocol, reason) lists candidates refused before training."""
    figs: list[tuple[str, go.Figure]] = []
    overall = results[results["slice"] == "all"]
    for protocol in sorted(overall["protocol"].unique()):
        sub = overall[(overall["protocol"] == protocol) & (overall["k"] == 10)]
        order = sub[sub["metric"] == "ndcg"].sort_values("value", ascending=False)["model"].tolist()
        fig = go.Figure(
            [
                go.Bar(name=m.upper(), x=order, y=sub[sub["metric"] == m].set_index("model").reindex(order)["value"])
                for m in ("ndcg", "map", "precision", "recall")
            ]
        )
        fig.update_layout(barmode="group", yaxis_title="@10")
        figs.append((f"{protocol} split: accuracy at K=10", fig))
        curve = overall[(overall["protocol"] == protocol) & (overall["metric"] == "ndcg")]
        fig = go.Figure(
            [go.Scatter(x=g["k"], y=g["value"], mode="lines+markers", name=m) for m, g in curve.groupby("model")]
        )
        fig.update_layout(xaxis_title="K", yaxis_title="NDCG@K")
        figs.append((f"{protocol} split: NDCG by K", fig))
    slices = results[(results["metric"] == "ndcg") & (results["k"] == 10)]
    for protocol in sorted(slices["protocol"].unique()):
        piv = slices[slices["protocol"] == protocol].pivot_table(index="model", columns="slice", values="value")
        fig = go.Figure(go.Heatmap(z=piv.to_numpy(), x=list(piv.columns), y=list(piv.index), colorscale="Blues"))
        fig.update_layout(xaxis_title="slice (training events of the user; new_item: items unseen in training)")
        figs.append((f"{protocol} split: NDCG@10 by cold-start slice", fig))
    parts = []
    for n, (name, fig) in enumerate(figs):
        fig.update_layout(height=380, margin=dict(l=60, r=20, t=30, b=60), template="plotly_white")
        div = fig.to_html(full_html=False, include_plotlyjs=(n == 0), config={"displaylogo": False})
        parts.append(f"<section><h2>{html.escape(name)}</h2>{div}</section>")
    wide = (
        results[(results["k"] == 10) & results["metric"].isin(HEADLINE)]
        .pivot_table(index=["protocol", "slice", "model"], columns="metric", values="value")
        .reset_index()
    )
    n_users = results[(results["metric"] == "ndcg") & (results["k"] == 10)][["protocol", "slice", "model", "n_users"]]
    wide = wide.merge(n_users, on=["protocol", "slice", "model"], how="left")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
table.metrics {{ border-collapse: collapse; font-size: .85rem; }}
table.metrics th, table.metrics td {{ padding: .2rem .5rem; border-bottom: 1px solid #ddd; text-align: right; }}
section {{ margin-top: 2rem; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Full ranking over all items; items seen in train or valid excluded. Protocols: <b>random</b> (RecBole's
8:1:1 per user) and <b>temporal</b> (one global time cut: the future is never in training; the champion is
chosen on it). Slices: the user's number of training events, and test positives on items unseen in training.</p>
{"".join(parts)}
<section><h2>All metrics at K=10</h2>{_table(wide)}</section>
{_skipped(skipped)}
</body></html>
"""


def _skipped(skipped: pd.DataFrame | None) -> str:
    if skipped is None or skipped.empty:
        return ""
    return f"<section><h2>Models not trained (over the size limits)</h2>{_table(skipped)}</section>"
