"""The replay diagnostic of `tools/ope_bench`: a candidate's first showings scored with the replay's click rule."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recsys_assets.contract import attribution
from recsys_assets.lib import off_policy
from recsys_assets.tools.ope_bench import ReplayClicks


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
