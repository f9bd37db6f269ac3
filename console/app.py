"""Entry point of the ops console: `streamlit run console/app.py` (or `make console`).

Builds the settings once per session (`get_settings()`, or settings a test put in the session first),
the navigation between the pages in `app_pages/`, and the sidebar; the pages read the settings from
the session and everything else through `console.data`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from console import data, ui
from recsys_assets.contract.settings import get_settings

PAGES = Path(__file__).resolve().parent / "app_pages"

st.set_page_config(page_title="recsys console", page_icon=":material/insights:", layout="wide")

if ui.SETTINGS_KEY not in st.session_state:
    st.session_state[ui.SETTINGS_KEY] = get_settings()
settings = ui.settings()

page = st.navigation(
    {
        "Monitor": [
            st.Page(
                PAGES / "overview.py", title="Overview", icon=":material/dashboard:", url_path="overview", default=True
            ),
            st.Page(PAGES / "online.py", title="Online", icon=":material/ads_click:", url_path="online"),
            st.Page(PAGES / "drift.py", title="Drift", icon=":material/ssid_chart:", url_path="drift"),
        ],
        "Explore": [
            st.Page(PAGES / "models.py", title="Models", icon=":material/leaderboard:", url_path="models"),
            st.Page(PAGES / "dataset.py", title="Data", icon=":material/database:", url_path="data"),
            st.Page(PAGES / "lookup.py", title="Lookup", icon=":material/person_search:", url_path="lookup"),
        ],
    }
)

with st.sidebar:
    st.caption(f"Storage `{settings.storage_uri}`  \nAPI `{settings.api_url}`")
    if st.button("Refresh data", icon=":material/refresh:", help="Read every table, report and service again"):
        data.clear_caches()
        st.rerun()

page.run()
