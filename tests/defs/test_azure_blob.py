"""The same ingestion against Azure Blob (a real Azurite on 127.0.0.1), read back identical."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.contract.warehouse import connect
from tests.defs.test_pipeline import check_results, run

TABLES = ("raw_events", "interactions", "items", "users", "interaction_matrix", "rejected_events")


@pytest.mark.integration
def test_ingestion_on_blob_matches_local(settings: Settings, azurite: str) -> None:
    blob = get_settings(storage_uri="abfs://recsys/ml100k", azure_connection_string=azurite)
    local_result, blob_result = run(settings), run(blob)
    assert local_result.success and blob_result.success
    assert all(check_results(blob_result).values())

    local, remote = Storage.from_settings(settings), Storage.from_settings(blob)
    for name in TABLES:
        pd.testing.assert_frame_equal(remote.read_table(f"{name}.parquet"), local.read_table(f"{name}.parquet"))
    html = remote.read_bytes("reports", "eda_report.html").decode()
    assert "Item popularity long tail" in html and "<script src=" not in html

    # DuckDB reads the Blob tables through the registered adlfs filesystem
    con = connect(remote)
    assert con.sql("SELECT count(*) FROM interactions").fetchall()[0][0] == 100_000
    # no temporary objects left behind by the atomic writes
    assert not [p for p in remote.list() if "/.tmp-" in p or p.startswith(".tmp-")]


@pytest.mark.integration
def test_failed_blob_write_keeps_the_old_object(azurite: str) -> None:
    store = Storage.from_uri("abfs://recsys/atomic", connection_string=azurite)
    store.write_table(pd.DataFrame({"a": [1, 2]}), "t.parquet")

    class Boom(Exception):
        pass

    # the write fails after the temporary object exists: the final object must be untouched
    original_copy = store.fs.copy

    def failing_copy(*args, **kwargs):
        raise Boom

    store.fs.copy = failing_copy
    try:
        with pytest.raises(Boom):
            store.write_table(pd.DataFrame({"a": [9]}), "t.parquet")
    finally:
        store.fs.copy = original_copy
    assert store.read_table("t.parquet")["a"].tolist() == [1, 2]
    assert store.list() == ["t.parquet"]
