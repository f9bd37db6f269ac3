"""Lookup: one user's recommendations as the API serves them, beside the user's recent history."""

from __future__ import annotations

import streamlit as st

from console import data, ui
from recsys_assets.contract.settings import Settings

HISTORY = 15


def render_recommendations(settings: Settings, user_id: str, k: int) -> None:
    st.subheader("Recommended by the API")
    try:
        answer = data.recommendations(settings, user_id, k)
    except data.ApiUnavailable as exc:
        st.warning(
            f"The API is not reachable at `{settings.api_url}`, so there are no live recommendations to show. "
            f"Start the API or point `RECSYS_API_URL` at it.\n\n`{exc}`",
            icon=":material/cloud_off:",
        )
        return
    if answer.error:
        st.error(f"The API answered with an error for user `{user_id}`: {answer.error}")
        return
    if answer.items.empty:
        st.info(f"The API returned no recommendation for user `{user_id}`.")
        return
    items = answer.items.copy()
    items["item_id"] = items["item_id"].astype(str)
    if "title" not in items.columns:
        titles = data.item_titles(settings, tuple(items["item_id"]))
        items["title"] = items["item_id"].map(titles)
    if "categories" in items.columns:
        items["categories"] = items["categories"].map(lambda c: ", ".join(c) if isinstance(c, list) else c)
    if "rank" not in items.columns:
        items.insert(0, "rank", range(1, len(items) + 1))
    # what a reader needs to judge the list; empty columns (no categories in the catalog) are left out
    shown = [c for c in ("rank", "item_id", "title", "categories", "score", "reason") if c in items.columns]
    items = items[[c for c in shown if items[c].astype(str).str.len().gt(0).any()]]
    details = [f"model version `{answer.model_version}`", f"list `{answer.recommendation_id}`"]
    details += [f"arm `{answer.arm}`"] if answer.arm else []
    details += ["cold-start list"] if answer.cold_start else []
    st.caption(" · ".join(details))
    st.dataframe(
        items,
        hide_index=True,
        column_config={
            "rank": st.column_config.NumberColumn("#", width=40),
            "item_id": st.column_config.TextColumn("Item", width=60),
            "title": st.column_config.TextColumn("Title", width=180),
            "categories": st.column_config.TextColumn("Categories", width="small"),
            "score": st.column_config.NumberColumn("Score", format="%.4f", width=70),
            "reason": st.column_config.TextColumn("Why", width="medium"),
        },
    )
    st.caption("A lookup is a real request: the API logs its impressions like those of any other list.")


def render_history(settings: Settings, user_id: str) -> None:
    st.subheader("Recent history")
    history = data.user_history(settings, user_id, limit=HISTORY)
    if history is None:
        ui.no_data("no interactions table", "The pipeline's ingestion writes it.")
        return
    if history.empty:
        st.info(f"No interaction of user `{user_id}` in the cleaned data.")
        return
    st.dataframe(
        history,
        hide_index=True,
        height=38 + 35 * len(history),  # every row, no inner scrolling
        # titles say more than ids here; the ids are in the recommendations beside
        column_order=["timestamp", "event_type", "value", "title", "categories"],
        column_config={
            "timestamp": st.column_config.DatetimeColumn("When", format="YYYY-MM-DD", width=95),
            "event_type": st.column_config.TextColumn("Event", width=70),
            "value": st.column_config.NumberColumn("Value", format="%g", width=50),
            "item_id": st.column_config.TextColumn("Item", width=50),
            "title": st.column_config.TextColumn("Title", width="medium"),
            "categories": st.column_config.TextColumn("Categories", width="small"),
        },
    )


def render(settings: Settings) -> None:
    st.title("Lookup")
    users = data.sample_users(settings)
    c1, c2 = st.columns([2, 1])
    with c1:
        user_id = st.selectbox(
            "User (most active first)",
            users,
            index=0 if users else None,
            accept_new_options=True,
            placeholder="Type a user id",
            help="The most active users are listed; any id can be typed.",
            key="lookup_user",
        )
    with c2:
        k = st.slider("Recommendations", 5, 50, 10, step=5, key="lookup_k")
    if not user_id:
        ui.no_data("no user to look up", "Type a user id.")
        return
    left, right = st.columns([1.2, 1], gap="large")
    with left:
        render_recommendations(settings, str(user_id), k)
    with right:
        render_history(settings, str(user_id))


render(ui.settings())
