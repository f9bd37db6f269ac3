"""The stakeholder report: a self-contained HTML report with plots and a slide deck (.pptx), both built
from the stored tables, the API's event log and the evaluation report (`python -m recsys_assets report`).

Every number is read or computed from data at build time (`inputs` reads, `numbers` computes); the
targets it compares them with are in `targets`, each with where it was set.
"""
