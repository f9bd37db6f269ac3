"""Every log shape of issue 15 by configuration alone (several sources, no time, per-user order numbers,
a repeat-heavy log), or refused before any training with the file, the column or key and the fix.
The fixtures are small files written by `tests.log_shapes`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.sources import EventLogSource
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.ingest import cleaning, readers
from recsys_assets.lib.reports.eda import eda_summary, render_eda_report
from tests import log_shapes


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)


def _settings(tmp_path: Path, config: dict) -> Settings:
    return get_settings(storage_uri=str(tmp_path / "data"), source="event_log", event_log=config)


def _ingest(tmp_path: Path, shape: log_shapes.Shape) -> tuple[Settings, cleaning.CleanResult]:
    s = _settings(tmp_path, shape.write(tmp_path))
    assert s.event_log is not None
    raw = readers.read_event_log(s.event_log)
    units = {src.timestamp_unit for src in s.event_log.files()}
    unit = units.pop() if len(units) == 1 else "auto"
    return s, cleaning.clean_events(raw, s.cleaning(), unit=unit, time_mode=s.event_log.time_mode)


@pytest.mark.parametrize("name", sorted(log_shapes.INGESTED))
def test_each_shape_ingests_by_configuration_alone(tmp_path: Path, name: str) -> None:
    shape, mode = log_shapes.INGESTED[name]
    s, result = _ingest(tmp_path, shape)
    assert s.event_log is not None and s.event_log.time_mode == mode
    assert sum(result.reject_counts.values()) == 0, cleaning.reject_summary(result)
    inter = result.interactions
    assert len(inter) > 200 and inter["user_id"].nunique() == log_shapes.N_USERS
    assert S.time_mode(inter) == mode
    level = cleaning.time_problem(inter, mode)
    assert level is None, level


def test_several_sources_land_in_one_table_each_with_its_own_mapping(tmp_path: Path) -> None:
    _, result = _ingest(tmp_path, log_shapes.several_sources())
    inter = result.interactions
    assert inter["event_type"].value_counts().to_dict() == {"rating": 120, "view": 90, "purchase": 90}
    # seconds, milliseconds and ISO text: one instant each, whatever the source's unit
    first = inter.groupby("event_type")["timestamp"].min()
    assert first["rating"] == pd.Timestamp("2024-01-01", tz="UTC")
    assert first["view"] == pd.Timestamp("2024-01-02 06:00", tz="UTC")
    assert first["purchase"] == pd.Timestamp("2024-01-03 00:30", tz="UTC")
    assert inter.loc[inter["event_type"] == "rating", "value"].between(1, 5).all()
    assert set(inter.loc[inter["event_type"] != "rating", "value"].isna()) == {True}


def test_a_source_that_fails_is_named_among_several(tmp_path: Path) -> None:
    config = log_shapes.several_sources().write(tmp_path)
    config["sources"][2]["columns"] = {"user_id": "customer", "item_id": "product", "timestamp": "at"}
    s = _settings(tmp_path, config)
    with pytest.raises(readers.IngestionError) as err:
        readers.read_event_log(s.event_log)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}/purchases.csv, columns user_id, timestamp: 2 columns missing")
    assert "'user_id' (looked for 'customer')" in msg and "'timestamp' (looked for 'at')" in msg


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"sources": [{"paths": ["a.csv"], "colums": {}}]},
            "unknown key 'colums' (did you mean 'columns'?) in a source of RECSYS_EVENT_LOG",
        ),
        ({"paths": ["a.csv"], "sources": [{"paths": ["b.csv"]}]}, "both `paths` and `sources`"),
        ({"sources": [{"paths": ["b.csv"]}], "delimiter": ";"}, "['delimiter'] go inside each source"),
        ({"columns": {}}, "has no files: give `paths`"),
        (
            {"sources": [{"paths": ["a.csv"]}, {"paths": ["b.csv"], "time": "none"}]},
            "the sources disagree on time (['none', 'timestamp'])",
        ),
        ({"paths": ["a.csv"], "time": "none", "columns": {"timestamp": "t"}}, '`time: "none"` says the log'),
        ({"paths": ["a.csv"], "time": "none", "sequence_column": "n"}, "drop `time`"),
        ({"paths": ["a.csv"], "time": "never"}, "time"),
        ({"paths": ["a.csv"], "sequence": "order_number"}, "(did you mean 'sequence_column'?)"),
    ],
)
def test_configuration_mistakes_are_refused_naming_the_key(config: dict, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        EventLogSource.model_validate(config)
    assert message in str(err.value)


@pytest.mark.parametrize("name", sorted(log_shapes.INGESTED))
def test_a_dumped_configuration_reads_back_the_same(name: str) -> None:
    """The services pass the log to other processes as `model_dump_json` (tools.services)."""
    source = EventLogSource.model_validate(log_shapes.INGESTED[name][0].config)
    again = EventLogSource.model_validate_json(source.model_dump_json())
    assert again == source and again.files() == source.files()


def test_unknown_keys_list_every_known_key() -> None:
    with pytest.raises(ValidationError) as err:
        EventLogSource.model_validate({"paths": ["a.csv"], "time_mode": "none"})
    assert "known keys: [" in str(err.value) and "'sequence_column'" in str(err.value)


def test_several_missing_columns_are_named_at_once_with_the_time_options(tmp_path: Path) -> None:
    p = tmp_path / "plays.csv"
    p.write_text("listener,track,plays\nu1,t1,3\n")
    s = _settings(tmp_path, {"paths": [str(p)]})
    with pytest.raises(readers.IngestionError) as err:
        readers.read_event_log(s.event_log)
    msg = str(err.value)
    assert msg.startswith(f"{p}, columns user_id, item_id, event_type, timestamp: 4 columns missing")
    assert "`columns`" in msg and '`time: "none"`' in msg and "`sequence_column`" in msg


def test_order_numbers_that_are_not_numbers_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "orders.csv"
    p.write_text("user_id,order_number,product_id\n1,first,5\n1,second,6\n")
    s = _settings(
        tmp_path,
        {
            "paths": [str(p)],
            "columns": {"item_id": "product_id"},
            "defaults": {"event_type": "purchase"},
            "sequence_column": "order_number",
        },
    )
    with pytest.raises(readers.IngestionError, match="column 'order_number': wrong type: no value is a number"):
        readers.read_event_log(s.event_log)


def test_a_blank_order_number_is_kept_and_a_bad_one_rejected(tmp_path: Path) -> None:
    p = tmp_path / "orders.csv"
    p.write_text("user_id,order_number,product_id\n1,1,5\n1,2,6\n1,x,7\n1,,8\n")
    s = _settings(
        tmp_path,
        {"paths": [str(p)], "columns": {"item_id": "product_id"}, "defaults": {"event_type": "purchase"}}
        | {"sequence_column": "order_number"},
    )
    r = cleaning.clean_events(readers.read_event_log(s.event_log), s.cleaning(), time_mode="sequence")
    assert r.reject_counts["bad_sequence"] == 1
    assert list(r.interactions["item_id"]) == ["5", "6", "8"]
    assert "`sequence_column` must hold numbers" in cleaning.reject_summary(r)


def test_a_basket_log_keeps_each_users_order_and_repeats(tmp_path: Path) -> None:
    _, result = _ingest(tmp_path, log_shapes.basket_log())
    inter = result.interactions
    # a product bought again in a later order is a new event, not a duplicate
    assert result.n_duplicates == 0 and len(inter) == 30 * 5 * 2 + 75
    assert inter["timestamp"].nunique() == 1 and inter[S.SEQUENCE_COL].between(1, 5).all()
    split = S.split(inter, S.TEMPORAL)
    assert split.method == S.METHODS["sequence"]
    assert (split.test[S.SEQUENCE_COL] == 5).all() and len(split.test) == len(inter[inter[S.SEQUENCE_COL] == 5])


def test_a_log_without_time_has_no_temporal_protocol(tmp_path: Path) -> None:
    _, result = _ingest(tmp_path, log_shapes.no_timestamps())
    inter = result.interactions
    assert S.protocols_for(inter, S.PROTOCOLS) == [S.RANDOM] and S.deciding_protocol(inter) == S.RANDOM
    with pytest.raises(S.NoTimeError, match="temporal protocol is skipped"):
        S.split(inter, S.TEMPORAL)
    assert len(S.split(inter, S.RANDOM).test) > 0


def test_degenerate_time_points_to_the_time_options() -> None:
    inter = pd.DataFrame({"timestamp": pd.to_datetime(["2024-01-01"] * 3, utc=True)})
    level, text = cleaning.time_problem(inter)
    assert level == "error" and '`time: "none"`' in text and '`sequence_column` (e.g. "order_number")' in text
    assert cleaning.time_problem(inter, "none") is None and cleaning.time_problem(inter, "sequence") is None


# --- the EDA report -----------------------------------------------------------------------------


def _eda(result: cleaning.CleanResult) -> tuple[dict, str]:
    inter = result.interactions
    items, users = cleaning.build_items(inter, None), cleaning.build_users(inter, None)
    summary = eda_summary(inter, items, users)
    return summary, render_eda_report(inter, items, users, summary, "t")


def test_eda_shows_the_repeat_rate_of_a_repeat_heavy_log(tmp_path: Path) -> None:
    summary, html = _eda(_ingest(tmp_path, log_shapes.repeat_heavy())[1])
    # per user: 12 purchases on at most 4 own items plus 3 others -> at least 12 - 7 repeats
    assert summary["repeat_event_share"] >= 5 / 12 and summary["users_with_repeats_share"] == 1.0
    assert summary["events_per_user"] == {k: 12.0 for k in ("min", "p25", "p50", "p75", "p90", "p99", "max")}
    assert summary["events_per_item"]["max"] > summary["events_per_item"]["p50"] > 0
    assert summary["time_mode"] == "timestamp" and summary["time_span"] == "11 days 00:29:00"
    assert summary["time_resolution"] == "minute"
    assert "repeat_event_share" in html and "events_per_user" in html


def test_eda_of_logs_without_time(tmp_path: Path) -> None:
    summary, html = _eda(_ingest(tmp_path / "a", _mk(tmp_path / "a", log_shapes.no_timestamps()))[1])
    assert summary["time_span"] == "no time" and summary["time_resolution"] == "no time"
    assert "the log has no time: only the random protocol is evaluated" in html
    assert "Events over time" not in html
    summary, html = _eda(_ingest(tmp_path / "b", _mk(tmp_path / "b", log_shapes.basket_log()))[1])
    assert summary["time_span"] == "sequence only" and summary["sequence_steps_per_user_median"] == "5"
    assert "sequence only: events are ordered within each user" in html


def test_eda_quantiles_and_repeats_on_a_known_log() -> None:
    inter = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b"],
            "item_id": ["x", "x", "y", "x"],
            "event_type": "purchase",
            "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"], utc=True),
        }
    ).assign(value=float("nan"), weight=1.0, category=None)
    summary = eda_summary(inter, cleaning.build_items(inter, None), cleaning.build_users(inter, None))
    assert summary["repeat_event_share"] == 0.25 and summary["users_with_repeats_share"] == 0.5
    assert summary["events_per_user"]["min"] == 1.0 and summary["events_per_user"]["max"] == 3.0
    assert summary["events_per_item"]["p50"] == 2.0 and summary["time_resolution"] == "day"


def _mk(folder: Path, shape: log_shapes.Shape) -> log_shapes.Shape:
    folder.mkdir(parents=True, exist_ok=True)
    return shape


# --- the documented example per shape -----------------------------------------------------------

DOCUMENTED = {
    "ratings_without_type": "ratings-without-type.env",
    "no_timestamps": "no-timestamps.env",
    "tab_separated_csv": "tab-separated.env",
    "basket_log": "basket-orders.env",
    "repeat_heavy": "repeat-purchases.env",
    "several_sources": "several-sources.env",
}


def _without_folders(source: EventLogSource) -> dict:
    dump = source.model_dump()
    for src in [dump, *dump["sources"]]:
        src["paths"] = [Path(p).name for p in src["paths"]]
    return dump


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_shape_has_its_documented_example_configuration(tmp_path: Path, name: str) -> None:
    """docs/config/<shape>.env is the configuration the shape's test log ingests with, and the README
    links it."""
    from tests.conftest import ROOT

    env = ROOT / "docs" / "config" / DOCUMENTED[name]
    documented = get_settings(env_file=env, storage_uri=str(tmp_path / "data")).event_log
    assert documented is not None
    tested = EventLogSource.model_validate(log_shapes.INGESTED[name][0].config)
    assert _without_folders(documented) == _without_folders(tested)
    assert f"(docs/config/{DOCUMENTED[name]})" in (ROOT / "README.md").read_text()
