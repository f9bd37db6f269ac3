"""`tools/ope_bench`: its replay diagnostic (a candidate's first showings scored with the replay's click rule), and
the command end to end on a small event log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_assets.contract import attribution
from recsys_assets.contract.artifact import write_to_storage
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.lib import off_policy
from recsys_assets.tools import ope_bench
from recsys_assets.tools.ope_bench import ReplayClicks
from tests.api_support import exploring_log, movielens_artifact


def test_each_list_is_scored_against_the_visit_it_answered(tmp_path: Path) -> None:
    # the future: u takes a at t=100, b at 200, c at 300 (three visits); v takes a at 150 (one visit)
    future = tmp_path / "events.csv"
    pd.DataFrame(
        {
            "user_id": ["u", "v", "u", "u"],
            "item_id": ["a", "a", "b", "c"],
            "event_type": "rating",
            "timestamp": [100, 150, 200, 300],
            "value": 4.0,
        }
    ).to_csv(future, index=False)
    # the lists, served in the visits' order (wall time, unrelated to the data's clock)
    served = {"r0": ("u", "12:00"), "rv": ("v", "12:01"), "r1": ("u", "12:02"), "r2": ("u", "12:03")}
    raw = pd.DataFrame(
        [
            {
                "event_type": "impression",
                "recommendation_id": rec,
                "user_id": user,
                "item_id": "z",
                "timestamp": pd.Timestamp(f"2026-12-04 {at}", tz="UTC"),
                "value": 1,
                "arm": "champion",
                "model_version": "m",
                "policy": "champion:m:greedy",
                "propensity": 1.0,
            }
            for rec, (user, at) in served.items()
        ]
    )
    events = attribution.prepare_events(raw)
    lists = off_policy.list_frame(attribution.impressions(events))
    # r0 (u's first visit, t=100): b is taken later (clicked), x never; rv (t=150): a is taken then;
    # r1 (t=200): a was taken at 100, before this visit; r2 (t=300): c is taken at this visit
    eligible = {"r0": {"b", "x"}, "rv": {"a"}, "r1": {"a"}, "r2": {"c"}}
    clicks = ReplayClicks(events, future)
    assert clicks.value(lists, eligible) == 3 / 4
    # only u's later lists: their visits are still u's second and third
    later = lists[lists["recommendation_id"].isin(["r1", "r2"])]
    assert clicks.value(later, eligible) == 1 / 2


def test_main_estimates_a_candidate_on_an_event_log(settings: Settings, tmp_path: Path) -> None:
    """`ope_bench` end to end: an event-log folder of lists a Hybrid served with an explored last slot (and some
    clicks), the same Hybrid as the candidate, every estimator in the table and in the JSON."""
    art = movielens_artifact()
    write_to_storage(art, Storage.from_uri(settings.storage_uri), "candidates", "Hybrid")
    events = tmp_path / "events"
    events.mkdir()
    exploring_log(art, 300, np.random.default_rng(1)).to_csv(
        events / "events-20261201T100000-host-1-0001-a.csv", index=False
    )
    out = tmp_path / "ope.json"
    args = ["--storage-uri", settings.storage_uri, "--events-dir", str(events), "--models", "Hybrid"]
    assert ope_bench.main([*args, "--bootstrap", "100", "--json", str(out)]) == 0
    body = json.loads(out.read_text())
    table = pd.DataFrame(body["estimates"])
    assert sorted(table["estimator"]) == sorted(off_policy.ESTIMATORS)
    assert (table["lists"] == 300).all() and table["value"].notna().all()
    assert [row["lists"] for row in body["logged"]] == [300]
    # the logging policy's own model on its own lists: its estimate covers its logged clicks per list
    ips = table.set_index("estimator").loc["ips"]
    assert ips["ci_low"] <= ips["logged_value"] <= ips["ci_high"]
    with pytest.raises(SystemExit, match="no candidate artifact candidates/Missing"):
        ope_bench.main([*args[:4], "--models", "Missing"])
    with pytest.raises(SystemExit, match="no event-log segments"):
        ope_bench.main(["--storage-uri", settings.storage_uri, "--events-dir", str(tmp_path / "none")])
