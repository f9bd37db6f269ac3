"""The report as one self-contained HTML page: inline CSS, plots as data URIs, no script, nothing fetched."""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from recsys_assets.tools.report import targets
from recsys_assets.tools.report.contents import Report
from recsys_assets.tools.report.numbers import format_value

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;color:#1f2328;
line-height:1.45;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #d0d7de;padding:.3em .6em;
text-align:left}td.value{text-align:right;font-variant-numeric:tabular-nums}.met{color:#1a7f37;font-weight:600}
.missed{color:#d1242f;font-weight:600}.muted{color:#656d76}img{max-width:100%}
"""
METRIC_COLUMNS = ("ctr", "conversion", "conversion_per_click", "impression_ctr", "hit_rate")


def _e(value: object) -> str:
    return html.escape(str(value))


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f'<p class="muted">{_e(alt)}: no data yet.</p>'
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def cell_text(column: str, value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return format_value(value, "pct" if column in METRIC_COLUMNS else "metric")
    return str(value)


def table(frame: pd.DataFrame | None, empty: str = "no data yet") -> str:
    """A DataFrame as an HTML table, rates as percentages and metrics to 4 decimals."""
    if frame is None or frame.empty:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    cells = (
        "".join(f"<td>{_e(cell_text(str(c), v))}</td>" for c, v in zip(frame.columns, row, strict=True))
        for row in frame.itertuples(index=False)
    )
    rows = "".join(f"<tr>{c}</tr>" for c in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def kpi_table(report: Report) -> str:
    rows = "".join(
        f'<tr data-kpi="{_e(k.key)}"><th>{_e(k.name)}</th><td class="value">{_e(k.text)}</td>'
        f'<td>{_e(k.target)}</td><td class="{k.status}">{_e(k.status)}</td><td class="muted">{_e(k.source)}</td></tr>'
        for k in report.kpis
    )
    head = "<tr><th>KPI</th><th>value</th><th>target</th><th></th><th>from</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"


def _drift(report: Report) -> str:
    d = report.drift
    status = ", ".join(f"{n} {s.lower()}" for s, n in d.retrains_by_status.items()) or "none"
    return (
        f"<p>Live windows compared: <b>{d.windows}</b>; with drift: <b>{d.drifted}</b>; latest window: "
        f"<b>{_e(d.latest)}</b>. Retrain runs: <b>{d.retrains}</b> ({_e(status)}); new champions promoted by them: "
        f"<b>{d.promoted}</b>.</p>" + _img(report.plots.get("drift"), "Drift per live window")
    )


def render_html(report: Report) -> str:
    met = sum(k.met is True for k in report.kpis)
    judged = sum(k.met is not None for k in report.kpis)
    roadmap = "".join(f"<li>{_e(item)}</li>" for item in report.roadmap) or "<li>no roadmap file found</li>"
    sections = [
        f"<h1>Recommendation platform: final report</h1><p class='muted'>Built {_e(report.built_at)} from "
        f"{_e(report.storage_uri)}. Serving champion: <b>{_e(report.champion_label)}</b>.</p>",
        f"<h2>KPIs against the targets</h2><p>{met} of {judged} KPIs with a target are met.</p>" + kpi_table(report),
        "<p class='muted'>Offline metrics: temporal protocol (the future is never in training), all test users, "
        f"K = {targets.K}. CTR per list = lists with a click / lists served; conversion per list = lists with a "
        "purchase or a rating of 4 or more / lists served; conversion per click = clicked lists that converted / "
        "clicked lists (feedback counts for the list its <code>recommendation_id</code> names).</p>",
        "<h2>Model comparison</h2>" + table(report.models) + _img(report.plots.get("models"), "Model comparison"),
        "<h2>Online A/B</h2><h3>Per arm and model version (API event log)</h3>"
        + table(report.arms, "the API has served no list yet")
        + _img(report.plots.get("ctr"), "Online CTR per day and arm")
        + "<h3>Replay runs</h3>"
        + table(report.replay, "no replay run yet"),
        "<h2>Drift and retrains</h2>" + _drift(report),
        "<h2>Cost drivers</h2>" + table(report.cost) + _img(report.plots.get("training"), "Training time per model"),
        f"<h2>Roadmap</h2><ul>{roadmap}</ul>",
    ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Recommendation platform: final report"
        f"</title><style>{CSS}</style></head><body>{body}</body></html>"
    )
