"""The ops console: a multipage Streamlit app (`console/app.py`) over what the pipeline and the API write.

`data` reads every source, `kpis` computes the numbers, `ui` holds the display helpers and
`app_pages/` the pages. Importing the package has no side effect.
"""
