"""The offline evaluation report: every model on both protocols, at K = 5, 10, 20, by cold-start slice.

One self-contained HTML file (plotly.js inline once), next to the Parquet table it is drawn from.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go

from recsys_assets.lib.evaluation import splits as S

HEADLINE = ("precision", "recall", "ndcg", "map", "hit", "mrr", "itemcoverage", "averagepopularity")


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, classes="metrics")


def _splits_note(results: pd.DataFrame) -> str:
    """How each protocol was cut, for a log without real time (a per-user sequence, or no time)."""
    mode = str(results["time_mode"].iloc[0]) if "time_mode" in results and len(results) else "timestamp"
    if mode == "timestamp":
        return ""
    said = [S.method_of(p, mode) for p in sorted(set(results["protocol"]) | {S.TEMPORAL})]
    return f'<p id="splits"><b>Splits:</b> {html.escape("; ".join(said))}.</p>\n'


def _with_setting(results: pd.DataFrame) -> pd.DataFrame:
    """The table with a `setting` column (a table from before the settings is all discovery)."""
    out = results.copy()
    out["setting"] = out["setting"].fillna("discovery") if "setting" in out else "discovery"
    return out


def repeat_shares(results: pd.DataFrame) -> dict[str, float]:
    """Per protocol, the share of test positives that are items the user had before (0 when unknown)."""
    if "repeat_share" not in results:
        return {str(p): 0.0 for p in results["protocol"].unique()}
    return {str(p): float(g["repeat_share"].max()) for p, g in results.groupby("protocol")}


def _settings_text(results: pd.DataFrame, target: str) -> str:
    shares = repeat_shares(results)
    if not any(shares.values()):
        note = (
            "Items seen in train or valid are hidden. No test positive is an item the user had before: "
            "only the <b>discovery</b> setting is computed."
        )
    else:
        each = "; ".join(
            f"<b>{html.escape(p)}</b>: {share:.1%} of test positives are items the user had before"
            for p, share in sorted(shares.items())
        )
        note = (
            "Two settings. <b>discovery</b>: items the user had in train or valid are hidden and are not "
            "positives (how well a model finds something new). <b>repeat</b> (buy again): nothing is hidden "
            f"and every test positive counts, re-consumed items included. Repeat share: {each}."
        )
    protocol = S.champion_protocol(results["protocol"]) if len(results) else S.TEMPORAL
    return f"<p>{note} The champion is chosen on <b>{html.escape(target)}</b> (NDCG@10, {protocol}, all users).</p>"


def _failed_section(failed: list[dict[str, str]]) -> str:
    if not failed:
        return ""
    rows = pd.DataFrame(failed, columns=["model", "protocol", "error"])
    return f"<section><h2>Failed candidates (not compared)</h2>{rows.to_html(index=False, border=0)}</section>"


def _figures(results: pd.DataFrame) -> list[tuple[str, go.Figure]]:
    figs: list[tuple[str, go.Figure]] = []
    at10 = results[(results["slice"] == "all") & (results["k"] == 10)]
    for (protocol, setting), sub in at10.groupby(["protocol", "setting"]):
        order = sub[sub["metric"] == "ndcg"].sort_values("value", ascending=False)["model"].tolist()
        fig = go.Figure(
            [
                go.Bar(name=m.upper(), x=order, y=sub[sub["metric"] == m].set_index("model").reindex(order)["value"])
                for m in ("ndcg", "map", "precision", "recall")
            ]
        )
        fig.update_layout(barmode="group", yaxis_title="@10")
        figs.append((f"{protocol} split, {setting} setting: accuracy at K=10", fig))
    overall = results[(results["slice"] == "all") & (results["setting"] == "discovery")]
    for protocol in sorted(overall["protocol"].unique()):
        curve = overall[(overall["protocol"] == protocol) & (overall["metric"] == "ndcg")]
        fig = go.Figure(
            [go.Scatter(x=g["k"], y=g["value"], mode="lines+markers", name=m) for m, g in curve.groupby("model")]
        )
        fig.update_layout(xaxis_title="K", yaxis_title="NDCG@K")
        figs.append((f"{protocol} split: NDCG by K (discovery)", fig))
    slices = results[(results["metric"] == "ndcg") & (results["k"] == 10) & (results["setting"] == "discovery")]
    for protocol in sorted(slices["protocol"].unique()):
        piv = slices[slices["protocol"] == protocol].pivot_table(index="model", columns="slice", values="value")
        fig = go.Figure(go.Heatmap(z=piv.to_numpy(), x=list(piv.columns), y=list(piv.index), colorscale="Blues"))
        fig.update_layout(xaxis_title="slice (training events of the user; new_item: items unseen in training)")
        figs.append((f"{protocol} split: NDCG@10 by cold-start slice (discovery)", fig))
    return figs


def render_evaluation_report(
    results: pd.DataFrame,
    title: str = "Model comparison",
    target: str = "discovery",
    failed: list[dict[str, str]] | None = None,
    skipped: pd.DataFrame | None = None,
    online: pd.DataFrame | None = None,
) -> str:
    """The report as one HTML page; `target` is the setting the champion is chosen on, `failed` the
    candidates that could not be trained (model, protocol, error), `skipped` (model, protocol, reason) those
    refused before training (over the size limits), `online` the off-policy estimates (`lib/off_policy.py`)."""
    results = _with_setting(results)
    parts = []
    for n, (name, fig) in enumerate(_figures(results)):
        fig.update_layout(height=380, margin=dict(l=60, r=20, t=30, b=60), template="plotly_white")
        div = fig.to_html(full_html=False, include_plotlyjs=(n == 0), config={"displaylogo": False})
        parts.append(f"<section><h2>{html.escape(name)}</h2>{div}</section>")
    keys = ["protocol", "setting", "slice", "model"]
    wide = (
        results[(results["k"] == 10) & results["metric"].isin(HEADLINE)]
        .pivot_table(index=keys, columns="metric", values="value")
        .reset_index()
    )
    n_users = results[(results["metric"] == "ndcg") & (results["k"] == 10)][[*keys, "n_users"]]
    wide = wide.merge(n_users, on=keys, how="left")
    if "ci_low" in results:  # how precise each NDCG@10 is over the users evaluated (a sample on large data)
        ci = results[(results["metric"] == "ndcg") & (results["k"] == 10)]
        ci = ci.assign(ndcg_ci=[f"[{lo:.4f}, {hi:.4f}]" for lo, hi in zip(ci["ci_low"], ci["ci_high"], strict=True)])
        wide = wide.merge(ci[[*keys, "ndcg_ci"]], on=keys, how="left")
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
{_splits_note(results)}
<p>Full ranking over all items. Protocols: <b>random</b> (RecBole's 8:1:1 per user) and <b>temporal</b> (one
global time cut: the future is never in training; the champion is chosen on it). Slices: the user's number of
training events, and test positives on items unseen in training. <code>ndcg_ci</code>: 95% confidence interval
of NDCG@10 over the evaluated users (normal approximation); above <code>eval_users</code> users they are a
fixed sample.</p>
{_settings_text(results, target)}
{_failed_section(failed or [])}
{"".join(parts)}
<section><h2>All metrics at K=10</h2>{_table(wide)}</section>
{_skipped(skipped)}
{_online(online)}
</body></html>
"""


def _skipped(skipped: pd.DataFrame | None) -> str:
    if skipped is None or skipped.empty:
        return ""
    return f"<section><h2>Models not trained (over the size limits)</h2>{_table(skipped)}</section>"


def _online(online: pd.DataFrame | None) -> str:
    if online is None or online.empty:
        return ""
    return (
        "<section><h2>Online estimates on the champion's logged lists</h2><p>Clicks per list each candidate would "
        "get on the lists the champion served (its list CTR when a list gets one click at most), estimated "
        "off-policy from the logged propensities; <code>ci_low</code>-<code>ci_high</code>: bootstrap interval; "
        "<code>logged_value</code>: the champion's own on the same lists. <code>ips</code>, <code>snips</code> "
        "(IPS self-normalised by the candidate's items that can earn a click) and <code>dr</code> judge the "
        "candidate's own lists; <code>ips_position</code> and <code>rips</code> only count items at "
        f"the champion's positions.</p>{_table(online)}</section>"
    )
