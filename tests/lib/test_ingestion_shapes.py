"""Real log shapes by configuration alone (issue 15): ratings with no type column, one file column as
value and type, tab-separated `.csv`, several missing columns, unknown keys and variables, all rows
rejected. Every fixture is a small file written here."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from recsys_assets.contract.settings import Settings, UnknownSettingWarning, get_settings, unknown_variables
from recsys_assets.lib.ingest import cleaning, readers

RATINGS = "userId,movieId,rating,timestamp\n1,10,4.0,1704067200\n1,11,2.5,1704067300\n2,10,5.0,1704067400\n"
RATING_COLUMNS = {"user_id": "userId", "item_id": "movieId", "timestamp": "timestamp"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)


def _log(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _settings(tmp_path: Path, path: Path, **extra) -> Settings:
    return get_settings(
        storage_uri=str(tmp_path / "data"),
        source="event_log",
        event_log={"paths": [str(path)], **extra},
        time_min=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )


def _ingest(s: Settings) -> cleaning.CleanResult:
    assert s.event_log is not None
    return cleaning.clean_events(readers.read_event_log(s.event_log), s.cleaning())


# --- constants for absent columns, one column as value and type ---------------------------------


def test_ratings_without_a_type_column_take_a_constant(tmp_path: Path) -> None:
    p = _log(tmp_path, RATINGS)
    s = _settings(tmp_path, p, columns={**RATING_COLUMNS, "value": "rating"}, defaults={"event_type": "rating"})
    r = _ingest(s)
    assert sum(r.reject_counts.values()) == 0
    assert list(r.interactions["event_type"]) == ["rating"] * 3
    assert list(r.interactions["value"]) == [4.0, 2.5, 5.0] and list(r.interactions["weight"]) == [4.0, 2.5, 5.0]


def test_a_default_fills_blank_cells_and_a_file_value_wins(tmp_path: Path) -> None:
    p = _log(tmp_path, "user_id,item_id,event_type,timestamp\nu1,i1,,1704067200\nu1,i2,purchase,1704067300\n")
    r = _ingest(_settings(tmp_path, p, defaults={"event_type": "view"}))
    assert list(r.interactions["event_type"]) == ["view", "purchase"]


def test_one_file_column_as_value_and_type_through_explicit_mappings(tmp_path: Path) -> None:
    p = _log(tmp_path, RATINGS)
    types = {v: "rating" for v in ("2.5", "4.0", "5.0")}
    s = _settings(tmp_path, p, columns={**RATING_COLUMNS, "value": "rating", "event_type": "rating"}, event_types=types)
    r = _ingest(s)
    assert sum(r.reject_counts.values()) == 0 and list(r.interactions["value"]) == [4.0, 2.5, 5.0]


def test_one_file_column_as_value_and_type_without_mapping_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"both 'event_type' and \['value'\].*defaults"):
        _settings(tmp_path, tmp_path / "nowhere.csv", columns={"event_type": "rating", "value": "rating"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"defaults": {"user_id": "u"}}, r"defaults cannot set \['user_id'\]"),
        ({"defaults": {"event_type": "like"}}, "not an event type"),
        ({"defaults": {"value": 1}, "columns": {"value": "v"}}, r"\['value'\] given both"),
        ({"columns": {"userId": "user_id"}}, r"unknown canonical columns \['userId'\]"),
    ],
)
def test_inconsistent_mappings_are_refused(tmp_path: Path, extra: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(tmp_path, tmp_path / "nowhere.csv", **extra)


# --- delimiters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", ["\t", ";", "|"])
def test_delimiter_is_recognized_from_the_header(tmp_path: Path, sep: str) -> None:
    text = "user_id,item_id,event_type,timestamp\nu1,i1,view,1704067200\nu2,i1,click,1704067300\n"
    p = _log(tmp_path, text.replace(",", sep))  # a tab-separated file named .csv, too
    r = _ingest(_settings(tmp_path, p))
    assert len(r.interactions) == 2 and sum(r.reject_counts.values()) == 0


@pytest.mark.parametrize("header", [True, False])
def test_a_wrong_delimiter_is_named_in_the_error(tmp_path: Path, header: bool) -> None:
    text = "user_id\titem_id\tevent_type\ttimestamp\n" * header + "u1\ti1\tview\t1704067200\n"
    p = _log(tmp_path, text)
    names = None if header else ["user_id", "item_id", "event_type", "timestamp"]
    s = _settings(tmp_path, p, delimiter=",", header=header, names=names)
    with pytest.raises(readers.IngestionError, match=r"has no ',' but a tab.*set `delimiter` to '\\t'") as err:
        readers.read_event_log(s.event_log)
    assert str(p) in str(err.value)


def test_side_tables_recognize_their_delimiter(tmp_path: Path) -> None:
    from recsys_assets.contract.events import ITEM_COLUMNS
    from recsys_assets.contract.sources import TableSource

    p = _log(tmp_path, "item_id\ttitle\ni1\tOne\ni2\tTwo\n", "items.csv")
    items = readers.read_table_source(TableSource(path=str(p)), ITEM_COLUMNS)
    assert list(items["title"]) == ["One", "Two"]


# --- missing columns, unknown keys and variables ------------------------------------------------


def test_every_missing_column_is_reported_at_once(tmp_path: Path) -> None:
    p = _log(tmp_path, "userId,movieId,rating\n1,10,4\n")
    s = _settings(tmp_path, p, columns={"user_id": "userId", "value": "score"}, category_column="genre")
    with pytest.raises(readers.IngestionError) as err:
        readers.read_event_log(s.event_log)
    msg = str(err.value)
    assert "5 columns missing" in msg and str(p) in msg
    for part in ("'item_id'", "'event_type'", "'timestamp'", "'value' (looked for 'score')", "'genre'"):
        assert part in msg
    assert "`columns`" in msg and "`defaults`" in msg and "'userId'" in msg


def test_unknown_keys_name_the_closest_and_every_known_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"unknown key 'colums' \(did you mean 'columns'\?\) in RECSYS_EVENT_LOG"):
        _settings(tmp_path, tmp_path / "x.csv", colums={})
    with pytest.raises(ValidationError, match=r"'delimter'.*side table.*known keys: \['columns', 'delimiter'"):
        _settings(tmp_path, tmp_path / "x.csv", items={"path": "items.csv", "delimter": ";"})


def test_unknown_keys_in_the_environment_json_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SOURCE", "event_log")
    monkeypatch.setenv("RECSYS_EVENT_LOG", json.dumps({"paths": ["a.csv"], "timestamp_units": "s"}))
    with pytest.raises(ValidationError, match="'timestamp_units' \\(did you mean 'timestamp_unit'"):
        get_settings()


def test_unknown_recsys_variables_warn_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert unknown_variables(["RECSYS_EVENT_LOG__ITEMS__PATH", "RECSYS_EVENT_WEIGHTS__VIEW", "RECSYS_ENV_FILE"]) == []
    monkeypatch.setenv("RECSYS_STORAGE_URL", "/tmp/x")
    env = tmp_path / "x.env"
    env.write_text("RECSYS_KCORE_USERS=5\nRECSYS_KCORE_USER=2\n")
    with pytest.warns(UnknownSettingWarning, match=r"\['RECSYS_KCORE_USERS', 'RECSYS_STORAGE_URL'\]"):
        s = get_settings(env_file=env)
    assert s.kcore_user == 2


# --- all rows rejected --------------------------------------------------------------------------


def test_reject_summary_gives_top_reasons_with_counts_fixes_and_an_example(tmp_path: Path) -> None:
    rows = [f"u{i},i{i},rating,1704067200,{9 + i}" for i in range(5)] + ["u9,i9,pv,1704067200,", "u1,i1"]
    p = _log(tmp_path, "user_id,item_id,event_type,timestamp,value\n" + "\n".join(rows) + "\n")
    r = _ingest(_settings(tmp_path, p))
    assert r.interactions.empty
    summary = cleaning.reject_summary(r)
    lines = summary.splitlines()
    assert lines[0] == "7 of 7 rows rejected (100%)"
    assert lines[1].startswith("  bad_value: 5 rows (ratings must lie in RECSYS_RATING_MIN")
    assert f"e.g. {p} line 2: user_id='u0', item_id='i0', event_type='rating'" in lines[2]
    assert "unknown_event_type: 1 rows" in summary and "`event_types`" in summary
    assert "malformed_row: 1 rows" in summary and "'u1,i1'" in summary


# --- the README's examples ----------------------------------------------------------------------


def test_readme_examples_are_valid_event_log_configurations() -> None:
    import re

    from recsys_assets.contract.sources import EventLogSource
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Mapping your own log", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"^RECSYS_EVENT_LOG='(.+)'$", section, flags=re.M)
    assert len(examples) == 3
    for example in examples:
        EventLogSource.model_validate_json(example)


# --- degenerate time ----------------------------------------------------------------------------


def _times(*stamps: str) -> pd.DataFrame:
    return pd.DataFrame({"timestamp": pd.to_datetime(list(stamps), utc=True)})


def test_degenerate_time_is_named() -> None:
    assert cleaning.time_problem(_times("2024-01-01", "2024-01-02", "2024-01-03")) is None
    level, text = cleaning.time_problem(_times(*["2024-01-01"] * 4))
    assert level == "error" and "all 4 interactions share one timestamp (2024-01-01 00:00:00+00:00)" in text
    level, text = cleaning.time_problem(_times(*["2024-01-01"] * 3, "2024-01-02"))
    assert level == "warning" and "75% of the 4 interactions share one timestamp" in text
    level, text = cleaning.time_problem(_times("1970-01-01 00:00:01", "1970-01-01 00:00:02", "1970-01-01 00:00:03"))
    assert level == "warning" and "order numbers" in text


def test_a_play_count_file_with_no_time_column_says_what_is_missing(tmp_path: Path) -> None:
    p = _log(tmp_path, "user,item,weight\nu1,i1,3\nu2,i1,1\n")
    s = _settings(tmp_path, p, columns={"user_id": "user", "item_id": "item", "value": "weight"})
    with pytest.raises(readers.IngestionError, match=r"2 columns missing: 'event_type', 'timestamp'"):
        readers.read_event_log(s.event_log)


def test_names_allowed_besides_the_settings_are_used_by_the_deployment() -> None:
    from recsys_assets.contract.settings import NOT_SETTINGS
    from tests.conftest import ROOT

    infra = "\n".join(p.read_text() for p in (ROOT / "infra").rglob("*") if p.is_file() and p.suffix != ".png")
    assert [n for n in sorted(NOT_SETTINGS - {"RECSYS_ENV_FILE"}) if n not in infra] == []


def test_the_eda_report_says_when_most_events_share_one_instant() -> None:
    from recsys_assets.lib.reports.eda import eda_summary, render_eda_report

    stamps = pd.to_datetime(["2024-01-01"] * 3 + ["2024-01-02"], utc=True)
    inter = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["i1", "i2", "i1", "i3"]})
    inter = inter.assign(event_type="view", timestamp=stamps, value=float("nan"), weight=1.0)
    items = cleaning.build_items(inter.assign(category=None), None)
    users = cleaning.build_users(inter, None)
    summary = eda_summary(inter, items, users)
    assert (
        summary["distinct_timestamps"] == 2
        and "75% of the 4 interactions share one timestamp" in summary["time_warning"]
    )
    assert '<p id="time-warning"><strong>Time:</strong> 75% of the 4' in render_eda_report(
        inter, items, users, summary, "t"
    )
