"""Daily ingestion (issue 16): the union of the day partitions built one file at a time equals a full
re-ingest of the same files; re-running changes nothing; a late event lands in its own day; a changed
configuration makes the next run a full re-ingest. Small synthetic logs written here, one file a day."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.sources import EventLogSource
from recsys_assets.contract.storage import Storage
from recsys_assets.lib import live_windows as live
from recsys_assets.lib.ingest import cleaning, daily, readers

DAY0 = pd.Timestamp("2025-03-01", tz="UTC")
TYPES = ["view", "view", "view", "add_to_cart", "purchase"]


def day_rows(day: int, n: int = 60, seed: int = 0) -> pd.DataFrame:
    """One day's events, with repeats (duplicates), event ids on some rows and a few bad rows."""
    rng = np.random.default_rng(seed + day)
    ts = DAY0 + pd.Timedelta(days=day) + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s")
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 12, n).astype(str),
            "item_id": rng.integers(0, 15, n).astype(str),
            "event_type": rng.choice(TYPES, n),
            "timestamp": (ts.astype("int64") // 10**9).astype(str),
            "event_id": [f"e{day}-{i}" if i % 3 == 0 else None for i in range(n)],
        }
    )
    df.loc[1, "event_type"] = "teleport"  # rejected
    dup = df.iloc[[4, 5]].copy()  # repeats of two rows without an id
    return pd.concat([df, dup], ignore_index=True)


def write_day(folder: Path, day: int, rows: pd.DataFrame | None = None) -> Path:
    path = folder / f"events-{day:02d}.csv"
    (day_rows(day) if rows is None else rows).to_csv(path, index=False)
    return path


def source(folder: Path, **extra) -> EventLogSource:
    return EventLogSource(paths=[str(folder / "events-*.csv")], timestamp_unit="s", **extra)


def config(settings: Settings, **changes):
    return settings.cleaning().model_copy(update={"time_max": pd.Timestamp("2026-01-01", tz="UTC"), **changes})


def full_clean(src: EventLogSource, cfg) -> pd.DataFrame:
    """Today's full ingestion, through its Parquet round trip."""
    return cleaning.clean_events(readers.read_event_log(src), cfg, unit="s").interactions


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    key = ["timestamp", "user_id", "item_id", "event_type", "event_id"]
    a = a.sort_values(key, kind="stable").reset_index(drop=True)
    b = b.sort_values(key, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert list(a.dtypes.astype(str)) == list(b.dtypes.astype(str))


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    folder = tmp_path / "log"
    folder.mkdir()
    return folder


def roundtrip(df: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    store = Storage.from_uri(str(tmp_path / "full"))
    store.write_table(df, "interactions.parquet")
    return store.read_table("interactions.parquet")


def test_day_by_day_equals_a_full_reingest(logs: Path, tmp_path: Path, settings: Settings) -> None:
    store = Storage.from_uri(str(tmp_path / "store"))
    cfg = config(settings)
    for day in range(4):
        write_day(logs, day)
        plan, stored, _ = daily.ingest(store, source(logs), cfg, unit="s")
        assert plan.full == (day == 0)
        assert plan.new_files == [str(logs / f"events-{day:02d}.csv")] or day == 0
        assert stored.days == [f"2025-03-0{day + 1}"]
    union = daily.read_interactions(store).to_pandas()
    same_rows(union, roundtrip(full_clean(source(logs), cfg), tmp_path))
    # in stored order too: time, then user, then item
    pd.testing.assert_frame_equal(union, cleaning.sort_interactions(union))
    totals = daily.load_manifest(store)["totals"]
    assert totals["reject_counts"]["unknown_event_type"] == 4
    assert totals["n_duplicates"] == 8


def test_rerunning_changes_nothing(logs: Path, tmp_path: Path, settings: Settings) -> None:
    store = Storage.from_uri(str(tmp_path / "store"))
    cfg = config(settings)
    for day in range(2):
        write_day(logs, day)
    daily.ingest(store, source(logs), cfg, unit="s")
    before = {p: store.read_bytes(p) for p in store.list("interactions")}
    plan, stored, table = daily.ingest(store, source(logs), cfg, unit="s")
    assert not plan.full and plan.new_files == [] and stored.days == []
    assert {p: store.read_bytes(p) for p in store.list("interactions")} == before
    assert table.num_rows == len(full_clean(source(logs), cfg))


def test_late_events_rewrite_only_their_day(logs: Path, tmp_path: Path, settings: Settings) -> None:
    store = Storage.from_uri(str(tmp_path / "store"))
    cfg = config(settings)
    for day in range(3):
        write_day(logs, day)
    daily.ingest(store, source(logs), cfg, unit="s")
    day2 = store.read_bytes("interactions/day=2025-03-03/part.parquet")
    # the 4th day's file brings two events of day 1: one new, one repeating a stored event_id
    late = day_rows(3)
    late.loc[0, ["timestamp", "event_id"]] = [str(int((DAY0 + pd.Timedelta(days=1, hours=5)).timestamp())), "late-1"]
    late.loc[3, ["event_id"]] = ["e0-0"]  # stored on day 0: a duplicate across days
    write_day(logs, 3, late)
    _, stored, table = daily.ingest(store, source(logs), cfg, unit="s")
    assert stored.days == ["2025-03-02", "2025-03-04"] and stored.cross_day_duplicates == 1
    assert store.read_bytes("interactions/day=2025-03-03/part.parquet") == day2
    day1 = store.read_table("interactions/day=2025-03-02/part.parquet")
    assert "late-1" in set(day1["event_id"].dropna())
    same_rows(table.to_pandas(), roundtrip(full_clean(source(logs), cfg), tmp_path))


def write_window(store: Storage, key: str, rows: pd.DataFrame) -> None:
    """A stored `live_events` window (the API's events, ISO times) as the live-window job writes it."""
    frame = readers.empty(live.LIVE_COLUMNS).astype("string")
    for i, row in rows.iterrows():
        frame.loc[i] = row
    store.write_table(frame, live.LIVE_EVENTS, f"{live.file_key(key)}.parquet")


def test_live_windows_are_ingested_once(logs: Path, tmp_path: Path, settings: Settings) -> None:
    store = Storage.from_uri(str(tmp_path / "store"))
    cfg = config(settings)
    write_day(logs, 0)
    daily.ingest(store, source(logs), cfg, unit="s")
    at = (DAY0 + pd.Timedelta(hours=30)).isoformat()
    window = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_type": ["click", "view"]})
    write_window(store, "2025-03-02T06:00", window.assign(timestamp=at))
    plan, stored, table = daily.ingest(store, source(logs), cfg, unit="s")
    assert plan.new_windows == ["2025-03-02T06:00"] and plan.new_files == [] and stored.days == ["2025-03-02"]
    assert {"u1", "u2"} <= set(table.column("user_id").to_pylist())
    plan, stored, _ = daily.ingest(store, source(logs), cfg, unit="s")
    assert plan.new_windows == [] and stored.days == []
    # equal to a full ingestion of the file and the window (as `clean` adds the live rows)
    raw = pd.concat([readers.read_event_log(source(logs)), live.read_live_events(store, unit="s")], ignore_index=True)
    same_rows(table.to_pandas(), roundtrip(cleaning.clean_events(raw, cfg, unit="s").interactions, tmp_path))


def test_kcore_is_applied_to_the_union(logs: Path, tmp_path: Path, settings: Settings) -> None:
    store = Storage.from_uri(str(tmp_path / "store"))
    cfg = config(settings, kcore_user=8, kcore_item=6)
    for day in range(3):
        write_day(logs, day)
        _, _, table = daily.ingest(store, source(logs), cfg, unit="s")
    full = full_clean(source(logs), cfg)
    assert 0 < len(full) < len(full_clean(source(logs), config(settings)))
    same_rows(table.to_pandas(), roundtrip(full, tmp_path))


def test_a_changed_configuration_or_file_reingests_in_full(logs: Path, tmp_path: Path, settings: Settings) -> None:
    store = Storage.from_uri(str(tmp_path / "store"))
    cfg = config(settings)
    for day in range(2):
        write_day(logs, day)
    daily.ingest(store, source(logs), cfg, unit="s")
    heavier = config(settings, event_weights={**cfg.event_weights, "purchase": 20.0})
    plan = daily.plan(store, source(logs), heavier)
    assert plan.full and "cleaning.event_weights" in plan.reason
    plan = daily.plan(store, source(logs, event_types={"pv": "view"}), cfg)
    assert plan.full and "mapping" in plan.reason
    assert daily.plan(store, source(logs), cfg, reingest=True).full
    # a changed file: its old rows are in the partitions, so everything is read again
    write_day(logs, 1, day_rows(1).head(30))
    plan = daily.plan(store, source(logs), cfg)
    assert plan.full and "1 ingested file(s) or window(s) changed" in plan.reason
    plan, stored, table = daily.ingest(store, source(logs), heavier, unit="s")
    assert plan.full and "configuration changed" in plan.reason
    same_rows(table.to_pandas(), roundtrip(full_clean(source(logs), heavier), tmp_path))
    # a removed file: the days are rebuilt from what is left, its day disappears
    (logs / "events-01.csv").unlink()
    plan, stored, table = daily.ingest(store, source(logs), heavier, unit="s")
    assert plan.full and "no longer there" in plan.reason and stored.removed_days == ["2025-03-02"]
    assert daily.stored_days(store) == ["2025-03-01"]


def test_a_log_without_time_is_refused(logs: Path, tmp_path: Path, settings: Settings) -> None:
    write_day(logs, 0)
    store = Storage.from_uri(str(tmp_path / "store"))
    with pytest.raises(daily.DailyIngestionError, match="RECSYS_INGESTION__MODE=full"):
        daily.plan(store, EventLogSource(paths=[str(logs / "*.csv")], time="none"), config(settings))
    assert store.list("interactions") == []


def test_settings_read_the_ingestion_block(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.ingestion.mode == "full" and not settings.ingestion.reingest
    monkeypatch.setenv("RECSYS_INGESTION__MODE", "daily")
    monkeypatch.setenv("RECSYS_INGESTION__REINGEST", "true")
    s = get_settings()
    assert s.ingestion.mode == "daily" and s.ingestion.reingest
    with pytest.raises(ValueError, match="mode"):
        get_settings(ingestion={"mode": "weekly"})


@pytest.mark.integration
def test_day_partitions_on_blob(logs: Path, tmp_path: Path, settings: Settings, azurite: str) -> None:
    """The same runs against Azure Blob (a real Azurite): partitions, the manifest, the DuckDB look-up of
    stored event ids and a full re-ingest's removal of a day all go through adlfs."""
    store = Storage.from_uri("abfs://recsys/daily", connection_string=azurite)
    cfg = config(settings)
    for day in range(2):
        write_day(logs, day)
        daily.ingest(store, source(logs), cfg, unit="s")
    late = day_rows(2)
    late.loc[3, "event_id"] = "e0-0"  # stored on day 0
    write_day(logs, 2, late)
    _, stored, table = daily.ingest(store, source(logs), cfg, unit="s")
    assert stored.cross_day_duplicates == 1
    same_rows(table.to_pandas(), roundtrip(full_clean(source(logs), cfg), tmp_path))
    (logs / "events-01.csv").unlink()
    plan, stored, _ = daily.ingest(store, source(logs), cfg, unit="s")
    assert plan.full and stored.removed_days == ["2025-03-02"]
    assert daily.stored_days(store) == ["2025-03-01", "2025-03-03"]
    assert not [p for p in store.list() if "/.tmp-" in p]


def test_a_bad_new_file_fails_before_anything_stored_changes(logs: Path, tmp_path: Path, settings: Settings) -> None:
    store = Storage.from_uri(str(tmp_path / "store"))
    cfg = config(settings)
    write_day(logs, 0)
    daily.ingest(store, source(logs), cfg, unit="s")
    before = {p: store.read_bytes(p) for p in store.list("interactions")}
    write_day(logs, 1, day_rows(1).drop(columns=["item_id"]))
    with pytest.raises(readers.IngestionError, match=r"events-01.csv.*'item_id'.*Map the file's names"):
        daily.ingest(store, source(logs), cfg, unit="s")
    assert {p: store.read_bytes(p) for p in store.list("interactions")} == before
    write_day(logs, 1)  # fixed: the next run takes it
    plan, stored, _ = daily.ingest(store, source(logs), cfg, unit="s")
    assert not plan.full and stored.days == ["2025-03-02"]
