"""The console's numbers on fixture data with known answers: online CTR and conversion from an event log,
the champion's offline metrics and their deltas, p95 latency from Prometheus text, pipeline success."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from console import kpis
from tests.console_fixtures import (
    COLUMNS,
    EXPECTED_DAY_BEFORE,
    EXPECTED_LAST_DAY,
    EXPECTED_P95_MS,
    EXPECTED_TOTALS,
    METRICS_TEXT,
    evaluation_report,
    event_log_frames,
)


@pytest.fixture(scope="module")
def lists() -> pd.DataFrame:
    return kpis.served_lists(kpis.prepare_events(pd.concat(event_log_frames(), ignore_index=True)))


def test_served_lists(lists: pd.DataFrame) -> None:
    assert list(lists["recommendation_id"]) == ["r1", "r2", "r3", "r4", "r5"]
    assert list(lists["impressions"]) == [3, 2, 2, 2, 1]
    assert list(lists["clicked"]) == [True, False, True, False, True]
    # r3's item e was clicked twice: one clicked impression
    assert list(lists["clicked_impressions"]) == [1, 0, 1, 0, 1]
    # a purchase (r1, r5) or a rating of 5 (r3) converts; a rating of 3 or a cart alone (r4) does not
    assert list(lists["converted"]) == [True, False, True, False, True]
    assert list(lists["model_version"]) == ["v1", "v1", "v2", "v2", "v1"]
    assert list(lists["arm"]) == ["A", "A", "B", "B", "A"]
    # ISO and unix-second segments parse to the same clock
    assert lists["served_at"].iloc[3] == pd.Timestamp("2026-01-02 09:00", tz="UTC")


def test_totals(lists: pd.DataFrame) -> None:
    assert kpis.totals(lists) == pytest.approx(EXPECTED_TOTALS)


def test_by_model_version_and_arm(lists: pd.DataFrame) -> None:
    by_version = kpis.kpis_by(lists, "model_version").set_index("model_version")
    assert by_version.loc["v1", "lists"] == 3 and by_version.loc["v2", "lists"] == 2
    assert by_version.loc["v1", "ctr"] == pytest.approx(2 / 3)
    assert by_version.loc["v2", "ctr"] == pytest.approx(1 / 2)
    assert by_version.loc["v1", "impression_ctr"] == pytest.approx(2 / 6)
    assert by_version.loc["v1", "conversion"] == pytest.approx(2 / 3)
    by_arm = kpis.kpis_by(lists, "arm").set_index("arm")
    assert by_arm.loc["B", "impressions"] == 4 and by_arm.loc["B", "conversion"] == pytest.approx(0.5)


def test_over_time(lists: pd.DataFrame) -> None:
    daily = kpis.kpis_over_time(lists, freq="D", by=None)
    assert list(daily["period"]) == [pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-02", tz="UTC")]
    assert list(daily["lists"]) == [3, 2]
    assert list(daily["impressions"]) == [7, 3]
    assert daily["ctr"].tolist() == pytest.approx([2 / 3, 1 / 2])
    per_version = kpis.kpis_over_time(lists, freq="D", by="model_version")
    assert len(per_version) == 4
    day2_v2 = per_version[
        (per_version["period"] == pd.Timestamp("2026-01-02", tz="UTC")) & (per_version["model_version"] == "v2")
    ]
    assert day2_v2["ctr"].item() == 0.0 and day2_v2["impressions"].item() == 2


def test_compare_periods(lists: pd.DataFrame) -> None:
    current, previous = kpis.compare_periods(lists, pd.Timedelta(days=1))
    assert current["lists"] == 2 and previous["lists"] == 3
    assert current["ctr"] == pytest.approx(EXPECTED_LAST_DAY["ctr"])
    assert current["conversion"] == pytest.approx(EXPECTED_LAST_DAY["conversion"])
    assert previous["ctr"] == pytest.approx(EXPECTED_DAY_BEFORE["ctr"])
    assert previous["conversion"] == pytest.approx(EXPECTED_DAY_BEFORE["conversion"])
    current, previous = kpis.compare_periods(lists, pd.Timedelta(days=7))
    assert current["lists"] == 5 and previous["lists"] == 0 and math.isnan(previous["ctr"])


def test_a_value_column_of_a_nullable_dtype_is_read_as_numbers() -> None:
    # a window of a log without ratings: the value column may come back as nullable integers
    raw = pd.concat(event_log_frames(), ignore_index=True)
    ints = raw.assign(value=pd.to_numeric(raw["value"], errors="coerce").round().astype("Int64"))
    events = kpis.prepare_events(ints)
    assert events["value"].dtype == "float64"
    assert kpis.served_lists(events)["converted"].tolist() == [True, False, True, False, True]
    nothing = kpis.prepare_events(raw.assign(value=pd.array([None] * len(raw), dtype="Int64")))
    # without values, only the purchases convert (r1, r5)
    assert kpis.served_lists(nothing)["converted"].tolist() == [True, False, False, False, True]


def test_empty_log() -> None:
    empty = kpis.served_lists(kpis.prepare_events(pd.DataFrame(columns=list(kpis.EVENT_LOG_COLUMNS))))
    assert empty.empty
    assert kpis.totals(empty)["lists"] == 0 and math.isnan(kpis.totals(empty)["ctr"])
    assert kpis.kpis_over_time(empty).empty


def test_offline_kpis_against_the_baseline() -> None:
    report = evaluation_report()
    out = {k.metric: k for k in kpis.offline_kpis(report, "EASE")}
    assert list(out) == ["ndcg", "map", "precision", "recall"]
    assert out["ndcg"].value == pytest.approx(0.25)
    assert out["ndcg"].reference_name == "Popularity"
    assert out["ndcg"].delta == pytest.approx(0.25 - 0.20)


def test_offline_kpis_against_the_previous_champion() -> None:
    out = kpis.offline_kpis(evaluation_report(), "EASE", previous={"ndcg": 0.3}, previous_name="v2")
    assert out[0].reference_name == "v2" and out[0].delta == pytest.approx(-0.05)
    # MAP unknown for the previous champion: the baseline instead
    assert out[1].reference_name == "Popularity"


def test_latency_p95_from_prometheus_text() -> None:
    p95, n = kpis.latency_p95_ms(METRICS_TEXT)
    assert p95 == pytest.approx(EXPECTED_P95_MS)
    assert n == 100  # the /metrics route's requests are not counted
    assert kpis.latency_p95_ms("# nothing\nprocess_cpu_seconds_total 1.5\n") is None


def test_availability_from_prometheus_text() -> None:
    share, n = kpis.availability(METRICS_TEXT)
    # 1 of 100 recommendation requests answered 503; the 40 failed /metrics scrapes are not traffic
    assert (share, n) == (pytest.approx(0.99), 100)
    assert share < kpis.AVAILABILITY_TARGET
    ok = 'recsys_api_request_duration_seconds_count{method="GET",path="/v1/items",status_code="200"} 5000\n'
    assert kpis.availability(ok) == (1.0, 5000)
    # counters without a status code say nothing about errors
    assert kpis.availability("# nothing\nprocess_cpu_seconds_total 1.5\n") is None


def test_histogram_quantile() -> None:
    buckets = {0.1: 10.0, 0.2: 20.0, math.inf: 20.0}
    assert kpis.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert kpis.histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    # beyond the last finite bound: that bound
    assert kpis.histogram_quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == pytest.approx(0.1)
    assert math.isnan(kpis.histogram_quantile(0.5, {math.inf: 0.0}))


def test_success_rate() -> None:
    statuses = ["SUCCESS", "STARTED", "FAILURE", "SUCCESS", "SUCCESS", "CANCELED", "SUCCESS"]
    rate, n, previous = kpis.success_rate(statuses, last_n=3)
    # the run still going is left out: SUCCESS, FAILURE, SUCCESS, then SUCCESS, CANCELED, SUCCESS
    assert (rate, n) == (pytest.approx(2 / 3), 3) and previous == pytest.approx(2 / 3)
    assert math.isnan(kpis.success_rate([], 20)[0])


def test_conversion_per_click_and_per_list_differ_as_defined() -> None:
    """Per list: converted lists / lists served. Per click (the seed's): clicked lists that converted /
    clicked lists; a list that converts without a click counts for the first only."""
    rows = [
        *[["u1", i, "impression", "2026-01-01T10:00:00Z", p, f"a{p}", "ra", "v1", "A"] for p, i in enumerate("xy", 1)],
        ["u1", "x", "click", "2026-01-01T10:01:00Z", "", "a-c", "ra", "v1", "A"],
        ["u1", "x", "purchase", "2026-01-01T10:02:00Z", "", "a-p", "ra", "v1", "A"],
        ["u2", "x", "impression", "2026-01-01T11:00:00Z", 1, "b1", "rb", "v1", "A"],
        ["u2", "x", "click", "2026-01-01T11:01:00Z", "", "b-c", "rb", "v1", "A"],
        ["u3", "y", "impression", "2026-01-01T12:00:00Z", 1, "c1", "rc", "v1", "A"],
        # converted without a click (a rating of 5 from the list)
        ["u3", "y", "rating", "2026-01-01T12:05:00Z", "5", "c-r", "rc", "v1", "A"],
        ["u4", "z", "impression", "2026-01-01T13:00:00Z", 1, "d1", "rd", "v1", "A"],
    ]
    events = kpis.prepare_events(pd.DataFrame(rows, columns=COLUMNS))
    total = kpis.totals(kpis.served_lists(events))
    assert (total["lists"], total["clicked_lists"], total["converted_lists"]) == (4, 2, 2)
    assert total["clicked_converted_lists"] == 1
    assert total["conversion"] == pytest.approx(2 / 4)
    assert total["conversion_per_click"] == pytest.approx(1 / 2)
    nothing_clicked = kpis.totals(kpis.served_lists(events[events["recommendation_id"].isin(["rc", "rd"])]))
    assert nothing_clicked["conversion"] == pytest.approx(0.5) and math.isnan(nothing_clicked["conversion_per_click"])
