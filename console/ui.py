"""Small display helpers shared by the console's pages: the settings of the session, KPI tiles, the
"no data yet" state, number formats, chart styling and embedded HTML reports."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from recsys_assets.contract.settings import Settings

SETTINGS_KEY = "settings"
NO_DATA = "no data yet"

# One palette for every chart, so a model or an arm keeps its color from page to page.
COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]


def settings() -> Settings:
    """The settings the entry point put in the session (pages never read the environment)."""
    try:
        return st.session_state[SETTINGS_KEY]
    except KeyError:
        raise RuntimeError("the console's pages run through console/app.py, which provides the settings") from None


def no_data(what: str, hint: str = "") -> None:
    """The empty state: the source does not exist yet, which is not an error."""
    st.info(f"**No data yet**: {what}. {hint}".strip(), icon=":material/hourglass_empty:")


def tile(
    label: str,
    value: str | None,
    delta: str | None = None,
    *,
    description: str | None = None,
    help: str | None = None,
    inverse: bool = False,
    neutral: bool = False,
) -> None:
    """A bordered KPI tile; `value` None shows the "no data yet" state. `inverse`: a rise is bad;
    `neutral`: the delta is information (an age, a count), neither good nor bad."""
    if value is None:
        st.metric(label, "—", NO_DATA, delta_color="off", delta_arrow="off", help=help, border=True)
        return
    st.metric(
        label,
        value,
        delta,
        delta_color="off" if neutral else "inverse" if inverse else "normal",
        delta_arrow="off" if neutral else "auto",
        delta_description=description if delta is not None else None,
        help=help,
        border=True,
    )


def is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: float | None, digits: int = 1) -> str | None:
    return None if is_missing(x) else f"{100 * x:.{digits}f}%"


def pp(delta: float | None, digits: int = 1) -> str | None:
    """A difference of two rates, in percentage points."""
    return None if is_missing(delta) else f"{100 * delta:+.{digits}f} pp"


def num(x: float | None, digits: int = 4) -> str | None:
    return None if is_missing(x) else f"{x:.{digits}f}"


def signed(x: float | None, digits: int = 4) -> str | None:
    return None if is_missing(x) else f"{x:+.{digits}f}"


def ago(ts: Any) -> str:
    """'3 h ago' style age of a timestamp."""
    import pandas as pd

    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t
    seconds = (pd.Timestamp.now(tz="UTC") - t).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def style(fig: go.Figure, height: int = 380, **layout: Any) -> go.Figure:
    """The console's chart layout: white, compact margins, legend on top."""
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0, title_text=""),
        colorway=COLORS,
        **layout,
    )
    return fig


def chart(fig: go.Figure, key: str | None = None) -> None:
    st.plotly_chart(fig, width="stretch", key=key, config={"displaylogo": False})


def embed_html(html: str, height: int = 800, title: str | None = None) -> None:
    """Show a stored HTML report (written by the pipeline, so trusted) in an iframe."""
    iframe = getattr(st, "iframe", None)
    if iframe is not None:
        iframe(html, height=height, alt=title)
    else:  # Streamlit before st.iframe
        import streamlit.components.v1 as components

        components.html(html, height=height, scrolling=True)
