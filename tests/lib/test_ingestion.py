"""Reading and cleaning: MovieLens-100k, the Taobao sample by configuration alone, synthetic edge cases."""

from __future__ import annotations

import csv
import datetime as dt
import warnings
from pathlib import Path

import pandas as pd
import pytest

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.lib.ingest import cleaning, readers
from tests.conftest import ROOT

TAOBAO_ENV = ROOT / "docs" / "config" / "taobao.env"


def taobao_settings(tmp_path: Path, path: Path) -> Settings:
    s = get_settings(env_file=TAOBAO_ENV, storage_uri=str(tmp_path / "data"))
    assert s.event_log is not None
    s.event_log.paths = [str(path)]
    return s


def test_movielens_reads_the_wheel_files() -> None:
    raw, items, users = readers.read_movielens()
    assert len(raw) == 100_000
    assert raw["user_id"].nunique() == 943 and raw["item_id"].nunique() == 1682
    assert len(items) == 1682 and len(users) == 943
    toy = items.loc[items["item_id"] == "1"].iloc[0]
    assert toy["title"].startswith("Toy Story") and "Animation" in toy["categories"].split("|")
    assert int(toy["year"]) == 1995


def test_movielens_cleans_to_the_published_size(settings: Settings) -> None:
    raw, _items, _users = readers.read_movielens()
    result = cleaning.clean_events(raw, settings.cleaning())
    inter = result.interactions
    assert len(inter) == 100_000
    assert sum(result.reject_counts.values()) == 0 and result.n_duplicates == 0
    assert inter["weight"].between(1, 5).all()
    assert (inter["weight"] == inter["value"]).all()
    assert inter["timestamp"].is_monotonic_increasing
    assert str(inter["timestamp"].dtype) == "datetime64[us, UTC]"


def _expected_taobao(path: Path, lo: dt.datetime, hi: dt.datetime) -> tuple[set[tuple], int]:
    """An independent reading of the sample with the csv module: the rows that must survive."""
    valid: set[tuple] = set()
    total = 0
    with path.open(newline="") as fh:
        for row in csv.reader(fh):
            total += 1
            if len(row) != 5 or row[3] not in {"pv", "cart", "fav", "buy"} or not row[4].isdigit():
                continue
            ts = dt.datetime.fromtimestamp(int(row[4]), dt.UTC)
            if lo <= ts <= hi:
                valid.add((row[0], row[1], row[3], int(row[4])))
    return valid, total


def test_taobao_ingests_by_configuration_alone(tmp_path: Path, taobao_path: Path) -> None:
    s = taobao_settings(tmp_path, taobao_path)
    raw = readers.read_event_log(s.event_log)
    result = cleaning.clean_events(raw, s.cleaning(), unit=s.event_log.timestamp_unit)
    inter = result.interactions

    expected, total = _expected_taobao(taobao_path, s.time_min, s.time_upper)
    back = {"view": "pv", "add_to_cart": "cart", "favorite": "fav", "purchase": "buy"}
    got = set(
        zip(
            inter["user_id"],
            inter["item_id"],
            inter["event_type"].map(back),
            (inter["timestamp"].astype("int64") // 1_000_000).astype(int),
            strict=True,
        )
    )
    # no valid row lost, nothing invalid kept
    assert got == expected
    # every raw line is accounted for: kept, rejected (with one reason) or a duplicate
    assert len(raw) == total
    assert len(inter) + sum(result.reject_counts.values()) + result.n_duplicates == total
    # the cut-off last line and the events outside the documented period
    assert result.reject_counts["malformed_row"] == 1
    assert result.reject_counts["timestamp_out_of_range"] > 0
    malformed = result.rejected[result.rejected["reason"] == "malformed_row"].iloc[0]
    assert malformed["raw_line"].startswith("100370,1968385") and malformed["source_line"] == total
    assert set(inter["event_type"]) == {"view", "add_to_cart", "favorite", "purchase"}
    assert inter["category"].notna().all()
    w = s.event_weights
    assert (inter.loc[inter["event_type"] == "purchase", "weight"] == w["purchase"]).all()


def _log(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _source_settings(tmp_path: Path, *paths: Path, **extra) -> Settings:
    return get_settings(
        storage_uri=str(tmp_path / "data"),
        source="event_log",
        event_log={"paths": [str(p) for p in paths], **extra},
        time_min=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        time_max=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )


def test_every_reject_reason_is_counted(tmp_path: Path) -> None:
    p = _log(
        tmp_path,
        "user_id,item_id,event_type,timestamp,value,event_id\n"
        "u1,i1,view,2024-01-01T00:00:00Z,,e1\n"  # good
        "u1,i1,view,2024-01-01T00:00:00Z,,e1\n"  # duplicate event_id
        "u1,i2,click,1704067200,,\n"  # good, unix seconds
        "u1,i2,click,1704067200,,\n"  # duplicate by all fields
        ",i1,view,2024-01-01T00:00:00Z,,\n"  # missing user
        "u2,,view,2024-01-01T00:00:00Z,,\n"  # missing item
        "u2,i1,,2024-01-01T00:00:00Z,,\n"  # missing event type
        "u2,i1,teleport,2024-01-01T00:00:00Z,,\n"  # unknown type
        "u2,i1,view,,,\n"  # missing timestamp
        "u2,i1,view,yesterday,,\n"  # unparseable
        "u2,i1,view,1999-01-01T00:00:00Z,,\n"  # out of range
        "u2,i1,rating,2024-01-02T00:00:00Z,9,\n"  # rating out of range
        "u2,i1,purchase,2024-01-02T00:00:00Z,abc,\n"  # non-numeric value
        "u2,i3,rating,2024-01-02T00:00:00Z,4,\n"  # good rating
        "u2,i3,impression,2024-01-02T00:00:00Z,1,\n"  # a served list: set aside, not rejected
        "u2,i3\n",  # malformed
    )
    s = _source_settings(tmp_path, p)
    raw = readers.read_event_log(s.event_log)
    r = cleaning.clean_events(raw, s.cleaning())
    assert r.reject_counts == {
        "malformed_row": 1,
        "missing_user_id": 1,
        "missing_item_id": 1,
        "missing_event_type": 1,
        "unknown_event_type": 1,
        "missing_timestamp": 1,
        "unparseable_timestamp": 1,
        "timestamp_out_of_range": 1,
        "bad_value": 2,
        "bad_sequence": 0,
    }
    assert r.n_duplicates == 2 and r.notes["impressions"] == 1
    assert list(r.interactions["item_id"]) == ["i1", "i2", "i3"]
    assert list(r.interactions["weight"]) == [1.0, 2.0, 4.0]
    assert r.rejected["source_line"].notna().all()


def test_column_and_event_type_mapping_over_many_files(tmp_path: Path) -> None:
    a = _log(tmp_path, "uid;sku;what;when\n7;x;pageview;1704067200\n", "a.csv")
    b = _log(tmp_path, "uid;sku;what;when\n8;y;order;1704067300\n", "b.csv")
    s = _source_settings(
        tmp_path,
        tmp_path / "*.csv",
        delimiter=";",
        columns={"user_id": "uid", "item_id": "sku", "event_type": "what", "timestamp": "when"},
        event_types={"pageview": "view", "order": "purchase"},
    )
    raw = readers.read_event_log(s.event_log)
    assert sorted(raw["source_file"].unique()) == [str(a), str(b)]
    r = cleaning.clean_events(raw, s.cleaning())
    assert list(r.interactions["event_type"]) == ["view", "purchase"]


def test_parquet_log_with_native_types(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "user_id": [1, 2],
            "item_id": [10, 20],
            "event_type": ["view", "rating"],
            "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"]),
            "value": [None, 3.5],
            "recommendation_id": ["r1", None],
        }
    )
    p = tmp_path / "log.parquet"
    df.to_parquet(p)
    s = _source_settings(tmp_path, p)
    r = cleaning.clean_events(readers.read_event_log(s.event_log), s.cleaning())
    assert list(r.interactions["user_id"]) == ["1", "2"]
    assert r.interactions["timestamp"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert r.interactions["weight"].iloc[1] == 3.5
    assert r.interactions["recommendation_id"].iloc[0] == "r1"


def test_kcore_filter_is_iterative() -> None:
    inter = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["x", "y", "x", "y", "z"], "weight": 1.0})
    out = cleaning.kcore_filter(inter, min_user=2, min_item=2)
    assert set(out["user_id"]) == {"a", "b"} and set(out["item_id"]) == {"x", "y"}


def test_items_keep_catalog_only_items_and_matrix_maps_ids(settings: Settings) -> None:
    raw, items, users = readers.read_movielens()
    r = cleaning.clean_events(raw.head(1000), settings.cleaning())
    it = cleaning.build_items(r.interactions, items)
    us = cleaning.build_users(r.interactions, users)
    assert len(it) == 1682 and (it["n_interactions"] == 0).any()
    m = cleaning.build_matrix(r.interactions, us, it)
    csr = cleaning.to_csr(m, len(us), len(it))
    u, i = m.iloc[0][["user_idx", "item_idx"]]
    assert us["user_id"].iloc[u] == m.iloc[0]["user_id"] and it["item_id"].iloc[i] == m.iloc[0]["item_id"]
    assert csr.nnz == len(m) and csr.sum() == pytest.approx(r.interactions["weight"].sum())


def test_a_source_with_an_empty_column_stacks_with_live_rows_without_a_dtype_guess() -> None:
    """A source's text is held as objects, stored live windows' as strings: a column empty in the source
    (no `event_id` in MovieLens) must not leave the result's type to pandas' all-null rule (a FutureWarning)."""
    source = pd.DataFrame({"user_id": ["1", "2"], "event_id": [None, None], "source_line": [2, 3]})
    live_rows = pd.DataFrame({"user_id": ["u"], "event_id": ["e1"], "source_line": [2]}, dtype="string").astype(
        {"source_line": "int64"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        both = readers.stack(source, live_rows)
    assert both["user_id"].tolist() == ["1", "2", "u"] and both["event_id"].tolist()[2] == "e1"
    assert both["event_id"].isna().tolist() == [True, True, False] and both["source_line"].dtype == "int64"
