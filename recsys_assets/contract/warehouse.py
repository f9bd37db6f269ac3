"""DuckDB over the stored Parquet tables, local or on Azure Blob (through the same fsspec filesystem).

DuckDB's own azure extension is not needed: the adlfs filesystem is registered with the connection.
"""

from __future__ import annotations

import duckdb

from recsys_assets.contract.events import INTERACTION_MATRIX, INTERACTIONS, ITEMS, REJECTED_EVENTS, USERS
from recsys_assets.contract.storage import Storage

TABLES = (INTERACTIONS, ITEMS, USERS, INTERACTION_MATRIX, REJECTED_EVENTS)


def connect(storage: Storage, tables: tuple[str, ...] = TABLES) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per stored table (missing tables are skipped)."""
    con = duckdb.connect()
    if not storage.is_local:
        con.register_filesystem(storage.fs)
    for name in tables:
        if storage.exists(f"{name}.parquet"):
            path = storage.uri(f"{name}.parquet").replace("'", "''")
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
    return con
