"""The console's pages, one script each, run by `st.navigation` in `console/app.py`."""
