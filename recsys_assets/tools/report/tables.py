"""`python -m recsys_assets query SQL`: one SQL query over every stored table (DuckDB views), printed.

The on-call runbook's way to read `drift_results`, `retrain_runs`, `pipeline_health` and the others
without a notebook; read-only (the views read the Parquet files).
"""

from __future__ import annotations

import pandas as pd

from recsys_assets.contract import events
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.contract.warehouse import TABLES, connect

# `champion_changes` is written by the champion commands (`lib/champion.py`) once they exist in storage
QUERYABLE: tuple[str, ...] = (
    *TABLES,
    events.EVALUATION_REPORT,
    events.MODEL_REGISTRY,
    events.PIPELINE_HEALTH,
    events.RETRAIN_RUNS,
    events.DRIFT_RESULTS,
    events.REJECT_COUNTS,
    events.REPLAY_RUNS,
    events.REPLAY_PHASES,
    "champion_changes",
)


def query(settings: Settings, sql: str) -> pd.DataFrame:
    """The result of `sql` over a view per stored table (a table not written yet has no view: the error
    names the tables that exist)."""
    con = connect(Storage.from_settings(settings), QUERYABLE)
    con.execute("SET TimeZone = 'UTC'")
    try:
        return con.sql(sql).df()
    except Exception as exc:  # duckdb's own errors name the missing table or column
        views = sorted(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall())
        raise ValueError(f"{exc}\nstored tables: {', '.join(views) or 'none yet'}") from exc
    finally:
        con.close()
