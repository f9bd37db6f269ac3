"""The replay simulator: the time split and what `prepare` writes for the pipeline, visits, the click and
conversion rules, the loop's pacing and drift hook against an in-process fake API, and one short
replay through the real API and Redis whose counts must match the API's own log exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from recsys_assets.contract.artifact import ServingArtifact, write_to_storage
from recsys_assets.contract.canary import in_challenger_arm
from recsys_assets.contract.events import ITEM_COLUMNS, REJECT_REASONS, USER_COLUMNS
from recsys_assets.contract.scoring import Component, Scorer
from recsys_assets.contract.settings import DEFAULT_EVENT_WEIGHTS, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.lib.ingest import cleaning, readers
from recsys_assets.tools.replay import data as replay_data
from recsys_assets.tools.replay.behaviour import (
    TAOBAO_FUNNEL,
    Funnel,
    RealEvent,
    UserFuture,
    feedback_mode,
    funnel_from_events,
    react,
)
from recsys_assets.tools.replay.data import Visit, apply_shift, build_visits, split_in_time
from recsys_assets.tools.replay.report import REPLAY_RUNS, phase_rows, store_phases, store_runs, summary_text
from recsys_assets.tools.replay.simulator import Phases, Progress, ReplayConfig, run_replay
from tests.api_support import API_KEY, API_KEYS, ApiProcess, RedisServer, movielens_artifact, publish, read_segments


def ev(user: str, item: str, ts: float, event_type: str = "rating", value: float | None = None) -> RealEvent:
    return RealEvent(user, item, event_type, ts, value)


# ---------------------------------------------------------------------------------------------
# Split and prepare
# ---------------------------------------------------------------------------------------------


def test_split_in_time_holds_out_the_last_fifth_and_keeps_an_instant_on_one_side() -> None:
    ts = pd.to_datetime([1, 2, 3, 4, 5, 6, 7, 8, 8, 8], unit="D", utc=True)
    events = pd.DataFrame({"user_id": list("abcdefghij"), "item_id": "x", "event_type": "view", "timestamp": ts})
    split = split_in_time(events, 0.2)
    # the cut is the 9th event's instant; the 8th shares it, so it goes to the future too
    assert len(split.past) == 7 and len(split.future) == 3
    assert split.past["timestamp"].max() < split.cut <= split.future["timestamp"].min()
    assert len(split_in_time(events, 0.5).future) == 5
    with pytest.raises(ValueError):
        split_in_time(events, 1.0)


def test_prepare_writes_a_past_the_pipeline_reads_and_a_future_the_replay_reads(tmp_path: Path) -> None:
    dataset = replay_data.load_dataset("ml-100k")
    prep = replay_data.prepare(dataset, tmp_path / "work")
    assert len(prep.split.past) + len(prep.split.future) == 100_000
    assert 0.19 < len(prep.split.future) / 100_000 < 0.21

    settings = get_settings(env_file=prep.env_file)
    assert settings.source == "event_log" and settings.local_root() == (tmp_path / "work" / "data").resolve()
    raw = readers.read_event_log(settings.event_log)
    clean = cleaning.clean_events(raw, settings.cleaning(), unit=settings.event_log.timestamp_unit)
    assert clean.n_raw == len(prep.split.past) and clean.reject_counts == dict.fromkeys(REJECT_REASONS, 0)
    assert clean.interactions["timestamp"].max() < prep.split.cut
    # ratings keep their values, titles and genres their text
    assert sorted(clean.interactions["value"].unique()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    items = readers.read_table_source(settings.event_log.items, ITEM_COLUMNS)
    star_wars = items.set_index("item_id").loc["50"]
    assert star_wars["title"] == "Star Wars" and "Sci-Fi" in star_wars["categories"].split("|")
    users = readers.read_table_source(settings.event_log.users, USER_COLUMNS)
    assert set(users["user_id"]) == set(prep.split.past["user_id"])

    future = replay_data.read_events(prep.future_events)
    assert len(future) == len(prep.split.future) and future["timestamp"].min() >= prep.split.cut
    summary = json.loads((tmp_path / "work" / "split.json").read_text())
    assert summary["future_users_new"] == len(set(future["user_id"]) - set(prep.split.past["user_id"]))


def test_a_held_out_category_has_no_past_and_launches_with_the_new_items(tmp_path: Path) -> None:
    dataset = replay_data.load_dataset("ml-100k")
    sci_fi = replay_data.category_items(dataset, "Sci-Fi")
    assert "50" in sci_fi and len(sci_fi) == 101  # Star Wars among ml-100k's 101 Sci-Fi films
    prep = replay_data.prepare(dataset, tmp_path / "work", hold_out_category="Sci-Fi")
    assert not prep.split.past["item_id"].isin(sci_fi).any()
    assert prep.split.future["item_id"].isin(sci_fi).sum() > 2000  # the future keeps them
    # the catalogue still lists them: a shop knows what it is about to launch
    items = pd.read_csv(tmp_path / "work" / "past" / "items.csv", dtype={"item_id": str})
    assert sci_fi <= set(items["item_id"])
    summary = json.loads((tmp_path / "work" / "split.json").read_text())
    assert summary["held_out_items"] == 101 and summary["hold_out_category"] == "Sci-Fi"

    past_items = set(prep.split.past["item_id"])
    future = replay_data.read_events(prep.future_events)
    visits = build_visits(replay_data.real_events(future), 1800, 1)
    kept, _ = apply_shift(visits, "newest-items", 0.5, set(prep.split.past["user_id"]), past_items)
    before = [e for v in kept if not v.shifted for e in v.events]
    after = [e for v in kept if v.shifted for e in v.events]
    assert before and all(e.item_id in past_items for e in before)
    assert after and all(e.item_id not in past_items for e in after)
    assert {e.item_id for e in after} & sci_fi
    with pytest.raises(ValueError, match="no item of ml-100k has it"):
        replay_data.prepare(dataset, tmp_path / "none", hold_out_category="Opera")


def test_taobao_funnel_is_the_samples_and_its_events_are_brought_forward(taobao_path: Path) -> None:
    dataset = replay_data.load_dataset("taobao", taobao_path)
    assert set(dataset.events["event_type"]) == {"view", "favorite", "add_to_cart", "purchase"}
    assert dataset.events["category"].notna().all()
    measured = funnel_from_events(dataset.events)
    for name in ("cart", "buy_after_cart", "buy_without_cart"):
        assert getattr(measured, name) == pytest.approx(getattr(TAOBAO_FUNNEL, name), abs=5e-4)
    assert feedback_mode(dataset.events["event_type"]) == "real"
    assert feedback_mode(["view", "click"]) == "funnel"


# ---------------------------------------------------------------------------------------------
# Visits and reactions
# ---------------------------------------------------------------------------------------------


def test_visits_are_cut_by_gap_and_size_and_ordered_by_start() -> None:
    events = [ev("u", str(i), 100 + i) for i in range(5)] + [ev("u", "x", 10_000), ev("v", "y", 150)]
    visits = build_visits(events, gap_seconds=1800, max_events=3)
    assert [(v.user_id, v.index, len(v.events)) for v in visits] == [("u", 0, 3), ("u", 1, 2), ("v", 0, 1), ("u", 2, 1)]


def test_a_click_is_a_served_item_the_user_really_takes_from_now_on_once() -> None:
    future = UserFuture(
        [
            ev("u", "before", 50, value=5),  # earlier than this visit: not clickable
            ev("u", "a", 100, value=5),
            ev("u", "z", 110, value=3),
            ev("u", "b", 900, value=2),
            ev("u", "later", 5000, value=4),
        ]
    )
    visit = [ev("u", "a", 100, value=5), ev("u", "z", 110, value=3)]
    posts = react(visit, ["before", "b", "a", "q"], "rec-1", future, "real")
    assert [(p.item_id, p.event_type, p.value, p.recommendation_id, p.kind) for p in posts] == [
        ("b", "click", None, "rec-1", "click"),
        ("b", "rating", 2, "rec-1", "follow"),  # brought forward, not a conversion
        ("a", "click", None, "rec-1", "click"),
        ("a", "rating", 5, "rec-1", "follow"),  # a conversion
        ("z", "rating", 3, None, "organic"),
    ]
    assert [p.converts for p in posts] == [False, False, False, True, False]
    assert future.used == {"a", "b"}
    # b's real rating was brought forward: its own visit posts nothing, and b is never clicked again
    assert react([ev("u", "b", 900, value=2)], ["b", "later"], "rec-2", future, "real") == [
        dataclasses.replace(posts[0], item_id="later", recommendation_id="rec-2", ts=900),
        dataclasses.replace(posts[3], item_id="later", value=4, recommendation_id="rec-2", ts=5000),
    ]


def test_typed_events_follow_a_click_and_organic_views_stay_views() -> None:
    real = [
        ev("u", "i1", 10, "view"),
        ev("u", "i1", 20, "add_to_cart"),
        ev("u", "i1", 30, "purchase"),
        ev("u", "i2", 10, "view"),
    ]
    future = UserFuture(real)
    posts = react([real[0], real[3]], ["i1"], "r", future, "real")
    assert [(p.item_id, p.event_type, p.recommendation_id) for p in posts] == [
        ("i1", "click", "r"),
        ("i1", "add_to_cart", "r"),
        ("i1", "purchase", "r"),
        ("i2", "view", None),
    ]
    assert posts[2].converts and not posts[1].converts


def test_the_funnel_draws_conversions_at_its_rates_reproducibly() -> None:
    funnel = Funnel(cart=0.3, buy_after_cart=0.5, buy_without_cart=0.1)
    items = [f"i{n}" for n in range(4000)]
    events = [ev("u", i, 10, "view") for i in items]

    def draw(seed: int) -> list[tuple[str, str]]:
        posts = react(events[:1], items, "r", UserFuture(events), "funnel", funnel, seed)
        return [(p.item_id, p.event_type) for p in posts if p.kind == "follow"]

    first = draw(7)
    assert first == draw(7) and first != draw(8)
    carts = {i for i, t in first if t == "add_to_cart"}
    buys = {i for i, t in first if t == "purchase"}
    assert len(carts) / len(items) == pytest.approx(0.3, abs=0.03)
    assert len(buys & carts) / len(carts) == pytest.approx(0.5, abs=0.05)
    assert len(buys - carts) / (len(items) - len(carts)) == pytest.approx(0.1, abs=0.02)


def test_the_shift_keeps_only_the_shifted_stream_after_its_point() -> None:
    visits = [Visit(u, 0, (ev(u, i, t),)) for u, i, t in [("old", "new-item", 1), ("old", "old-item", 2)]]
    visits += [
        Visit("old", 1, (ev("old", "old-item", 3), ev("old", "new-item", 3))),
        Visit("fresh", 0, (ev("fresh", "old-item", 4),)),
    ]
    kept, at = apply_shift(visits, "newest-items", 0.5, {"old"}, {"old-item"})
    # the new item launches at the shift: its event before it is held back
    assert at == 3 and [(v.user_id, v.index, [e.item_id for e in v.events], v.shifted) for v in kept] == [
        ("old", 0, ["old-item"], False),
        ("old", 1, ["new-item"], True),
    ]
    kept, at = apply_shift(visits, "new-users", 0.5, {"old"}, {"old-item"})
    assert at == 4 and [(v.user_id, v.index, v.shifted) for v in kept][2:] == [("fresh", 0, True)]


# ---------------------------------------------------------------------------------------------
# The loop, against an in-process fake API
# ---------------------------------------------------------------------------------------------


class FakeApi:
    """Serves items `0..k-1` not yet posted by the user; counts requests; records posted events."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self.posted: list[dict] = []
        self.n = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            batch = json.loads(request.content)
            self.posted += batch
            for e in batch:
                self.seen.setdefault(e["user_id"], set()).add(e["item_id"])
            return httpx.Response(202, json={"accepted": len(batch), "duplicates": 0, "duplicate_event_ids": []})
        user = request.url.path.split("/")[3]
        self.n += 1
        seen = self.seen.get(user, set())
        hidden = seen if request.url.params["exclude_seen"] == "true" else set()
        items = [str(i) for i in range(50) if str(i) not in hidden][: int(request.url.params["k"])]
        body = {
            "recommendation_id": f"rec{self.n}",
            "user_id": user,
            "model_version": "fake",
            "arm": "champion" if user < "m" else "challenger",
            "cold_start": not seen,
            "items": [{"item_id": i} for i in items],
        }
        return httpx.Response(200, json=body)


def events_frame(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": "rating",
            "timestamp": pd.to_datetime([r[2] for r in rows], unit="s", utc=True),
            "value": [r[3] for r in rows],
        }
    )


def test_the_loop_paces_marks_the_shift_and_counts_phases(tmp_path: Path) -> None:
    # two users, a visit each every 100 data seconds; item "9" is new: it launches at the shift, so
    # before it only alice's item "1" is replayed and from it on only zoe's "9"
    rows = [(u, item, t, 5.0) for t in range(0, 600, 100) for u, item in (("alice", "1"), ("zoe", "9"))]
    marks = []
    fake = FakeApi()
    phases = Phases(on_phase=marks.append)

    def after_the_fourth(progress: Progress) -> None:
        # what an orchestrator does once a retrained champion serves
        if progress.visits_done == 4:
            phases.mark("after")

    config = ReplayConfig(
        api_url="http://fake",
        api_key="k",
        events=events_frame(rows),
        speed=500.0,  # 500 data seconds per second: the 500 s of the window take ~1 s
        concurrency=2,
        visit_gap_seconds=10,
        shift="newest-items",
        shift_at=0.5,
        past_users=frozenset({"alice", "zoe"}),
        past_items=frozenset({"1"}),
        phases=phases,
        on_progress=after_the_fourth,
        progress=False,
        transport=httpx.MockTransport(fake),
    )
    t0 = time.monotonic()
    result = run_replay(config)
    assert 0.9 < time.monotonic() - t0 < 5
    assert result.stopped_by == "exhausted" and result.visits_done == result.visits_planned == 6
    assert [m.name for m in marks] == ["during", "after"] and marks[0].data_ts == 300
    assert [m.name for m in result.phases] == ["before", "during", "after"]
    by_phase = result.by_phase()
    assert by_phase["phase"].tolist() == ["during", "after", "before"]  # per arm, in phase order
    assert by_phase.set_index(["arm", "phase"])["lists"].to_dict() == {
        ("challenger", "during"): 1,
        ("challenger", "after"): 2,
        ("champion", "before"): 3,
    }
    # zoe's "9" is on her first list: one click brings all her real ratings of it forward
    zoe = result.lists[result.lists["user_id"] == "zoe"]
    assert zoe["clicks"].tolist() == [1, 0, 0] and zoe["converted"].tolist() == [True, False, False]

    # the drift scenario's table: per arm and phase, with the phase's start and the run's timeline
    rows = phase_rows(result, {"window": "2026-01-01T00:01", "drift_detected": 70.0, "served": 200.0})
    assert rows[["arm", "phase", "lists"]].values.tolist() == [
        ["challenger", "during", 1],
        ["challenger", "after", 2],
        ["champion", "before", 3],
    ]
    assert (rows["window"] == "2026-01-01T00:01").all() and (rows["served"] == 200.0).all()
    assert rows["promoted"].isna().all() and (rows["shift"] == "newest-items").all()
    assert (rows.set_index("phase")["phase_started_at"].sort_values().index == ["before", "during", "after"]).all()
    store = Storage.from_uri(str(tmp_path))
    store_phases(store, rows)
    store_phases(store, rows)  # stored again: replaced, not doubled
    assert len(store.read_table("replay_phases.parquet")) == 3
    assert [e["event_type"] for e in fake.posted if e["user_id"] == "zoe"][:2] == ["click", "rating"]
    assert result.freshness["requests"].tolist() == [1, 1] and result.log_lists is None


def test_the_shifted_stream_can_run_at_its_own_pace() -> None:
    from recsys_assets.tools.replay.simulator import _Replay

    rows = [("alice", "1", t, 4.0) for t in (0, 100, 200, 300)] + [("zoe", "9", t, 4.0) for t in (400, 1400)]
    config = ReplayConfig(
        api_url="http://fake",
        api_key="k",
        events=events_frame(rows),
        speed=100.0,
        shift="newest-items",
        shift_at=0.5,
        past_users=frozenset({"alice", "zoe"}),
        past_items=frozenset({"1"}),
        progress=False,
    )
    replay = _Replay(config)
    assert replay.shift_ts == 400 and [v.start for v in replay.visits] == [0, 100, 200, 400, 1400]
    # one pace: the 1,000 data seconds after the shift take 10 s
    assert [replay._due(v.start, 50.0, 0.0) for v in replay.visits] == [50.0, 51.0, 52.0, 54.0, 64.0]
    config.shift_speed = 500.0  # stretched or squeezed apart: they take 2 s
    replay = _Replay(config)
    assert [replay._due(v.start, 50.0, 0.0) for v in replay.visits] == [50.0, 51.0, 52.0, 54.0, 56.0]


def test_lists_that_repeat_seen_items_are_checked_for_freshness_by_the_cold_start_flag() -> None:
    rows = [("alice", item, t, 3.0) for item, t in (("1", 0), ("2", 100), ("1", 200))]
    config = ReplayConfig(
        api_url="http://fake",
        api_key="k",
        events=events_frame(rows),
        exclude_seen=False,
        visit_gap_seconds=10,
        progress=False,
        transport=httpx.MockTransport(FakeApi()),
    )
    result = run_replay(config)
    # list 1 (cold) takes both items; lists 2 and 3 still show them, and each real item is clicked once
    assert result.lists["items"].tolist() == [[str(i) for i in range(10)]] * 3
    assert result.lists["clicks"].tolist() == [2, 0, 0] and result.lists["hit"].tolist() == [True] * 3
    assert result.lists["cold_start"].tolist() == [True, False, False]
    assert result.freshness["requests"].tolist() == [1, 1]


def test_the_loop_stops_at_max_seconds() -> None:
    rows = [("alice", str(i), i * 1000.0, 3.0) for i in range(20)]
    config = ReplayConfig(
        api_url="http://fake",
        api_key="k",
        events=events_frame(rows),
        speed=1000.0,  # a visit a second
        visit_gap_seconds=10,
        max_seconds=1.5,
        progress=False,
        transport=httpx.MockTransport(FakeApi()),
    )
    result = run_replay(config)
    assert result.stopped_by == "max_seconds" and result.visits_done == 2 and result.visits_planned == 20


def test_runs_are_stored_per_arm_and_shown_by_the_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    rows = [(u, str(i), 100.0 * i, 4.0) for i in range(4) for u in ("alice", "zoe")]
    config = ReplayConfig(
        api_url="http://fake",
        api_key="k",
        events=events_frame(rows),
        dataset="fixture",
        visit_gap_seconds=10,
        progress=False,
        transport=httpx.MockTransport(FakeApi()),
    )
    result = run_replay(config)
    arms = result.arms().set_index("arm")
    # alice's first list (items 0-9) holds all four of her items: one list of four clicked, then none
    assert arms.loc["champion", ["lists", "clicks", "clicked_lists", "converted_lists"]].tolist() == [4, 4, 1, 1]
    assert arms.loc["champion", "counted_from"] == "simulator" and pd.isna(arms.loc["champion", "consistent"])

    for key in [k for k in os.environ if k.startswith("RECSYS_")]:
        monkeypatch.delenv(key)
    settings = get_settings(storage_uri=str(tmp_path / "data"))
    store = Storage.from_settings(settings)
    store_runs(store, result.arms())
    store_runs(store, result.arms())  # a run stored twice keeps one set of rows
    assert len(store.read_table(f"{REPLAY_RUNS}.parquet")) == 2

    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.session_state["settings"] = settings
    at = at.run().switch_page("app_pages/online.py").run()
    assert not at.exception and [h.value for h in at.subheader] == ["Replay runs"]
    shown = at.dataframe[0].value.set_index("arm")
    assert shown.loc["champion", "lists"] == 4 and shown.loc["champion", "ctr"] == pytest.approx(25.0)


# ---------------------------------------------------------------------------------------------
# End to end: the real API and Redis
# ---------------------------------------------------------------------------------------------


def popularity_artifact(art: ServingArtifact) -> ServingArtifact:
    """The popularity baseline on the same data: distinct users per item."""
    pop = np.asarray((art.history > 0).sum(axis=0)).ravel().astype(np.float32)
    scorer = Scorer({"popularity": Component("popularity", {"popularity": pop})}, {"popularity": 1.0})
    return dataclasses.replace(art, model_name="Popularity", model_version="Popularity-test", scorer=scorer)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.integration
def test_replay_through_the_api_counts_exactly_what_the_log_attributes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from serving.loaded import LoadedModel
    from serving.recommend import build_history, recommend
    from serving.schemas import LiveEvent

    champion = movielens_artifact()
    baseline = popularity_artifact(champion)
    root = tmp_path / "data"
    publish(root, champion)
    write_to_storage(baseline, Storage.from_uri(str(root)), "candidates", "Popularity")
    api = ApiProcess(
        {
            "RECSYS_STORAGE_URI": str(root),
            "RECSYS_REDIS_URL": redis_server.url,
            "RECSYS_API_KEYS": API_KEYS,
            "RECSYS_RATE_LIMIT_PER_MINUTE": "0",
            "RECSYS_AB_CHALLENGER_SHARE": "0.5",
            "RECSYS_AB_CHALLENGER_PATH": "candidates/Popularity",
            "OMP_NUM_THREADS": "1",
        },
        tmp_path / "api.log",
    ).start()
    try:
        # what the API will serve, computed in-process with its own code, to build a known fixture
        models = {"champion": LoadedModel.build(champion, "a"), "challenger": LoadedModel.build(baseline, "c")}

        def served(user: str, live: list[LiveEvent]) -> list[str]:
            model = models["challenger" if in_challenger_arm(user, 0.5) else "champion"]
            history = build_history(model, user, live, DEFAULT_EVENT_WEIGHTS)
            return [it.item_id for it in recommend(model, history, 10, None, True)]

        def first(arm: bool, candidates: list[str]) -> list[str]:
            return [u for u in candidates if in_challenger_arm(u, 0.5) == arm][:1]

        newcomers = [f"newcomer-{n}" for n in range(20)]
        known = [str(n) for n in range(1, 50)]
        users = first(False, newcomers) + first(False, known) + first(True, newcomers) + first(True, known)
        catalog = champion.item_ids.tolist()
        rows, expected_lists = [], {}
        for n, user in enumerate(users):
            t = 890_000_000 + 60 * n  # the users' visits interleave
            list1 = served(user, [])
            a, b = list1[2], list1[5]
            z = next(i for i in catalog if i not in list1)
            live = [LiveEvent(a, "click", None, 0), LiveEvent(a, "rating", 5.0, 0)]
            live += [LiveEvent(b, "click", None, 0), LiveEvent(b, "rating", 2.0, 0), LiveEvent(z, "rating", 3.0, 0)]
            list2 = served(user, live)
            w = next(i for i in list2 if i not in list1)
            list3 = served(user, [*live, LiveEvent(w, "click", None, 0), LiveEvent(w, "rating", 4.0, 0)])
            v = next(i for i in catalog if i not in {*list1, *list2, *list3, z})
            day = 86_400
            rows += [(user, a, t, 5.0), (user, z, t + 10, 3.0)]  # visit 1: a and b clicked (b's rating is later)
            rows += [(user, b, t + 2 * day, 2.0), (user, w, t + 2 * day + 5, 4.0)]  # visit 2: w clicked
            rows += [(user, v, t + 5 * day, 1.0)]  # visit 3: nothing served is taken
            expected_lists[user] = [list1, list2, list3]

        result = run_replay(
            ReplayConfig(
                api_url=api.url,
                api_key=API_KEY,
                events=events_frame(rows),
                dataset="fixture",
                max_events_per_visit=10,  # a user's events within half an hour are one visit
                concurrency=3,
                max_seconds=60,
                events_dir=root / "events",
                progress=False,
            )
        )
        assert result.stopped_by == "exhausted" and result.errors == {}
        lists = result.lists.sort_values(["user_id", "visit"])
        assert {u: g["items"].tolist() for u, g in lists.groupby("user_id")} == expected_lists
        newcomer_lists = lists[lists["user_id"].str.startswith("newcomer")]
        assert newcomer_lists["cold_start"].tolist() == [True, False, False] * 2

        # per arm: 2 users x 3 lists; clicks a, b (list 1) and w (list 2); conversions a (5) and w (4)
        arms = result.arms().set_index("arm")
        assert arms.loc[:, "counted_from"].tolist() == ["event_log"] * 2 and result.mismatches() == []
        for arm in ("champion", "challenger"):
            row = arms.loc[arm]
            assert (row["lists"], row["impressions"], row["clicks"]) == (6, 60, 6)
            assert (row["clicked_lists"], row["converted_lists"]) == (4, 4)
            assert row["ctr"] == pytest.approx(4 / 6) and row["hit_rate"] == pytest.approx(4 / 6)
            # every clicked item is gone from the very next list, and the newcomer is no longer cold
            assert (row["freshness_events"], row["freshness_requests_max"], row["freshness_unreflected"]) == (6, 1, 0)
        assert arms.loc["champion", "model_versions"] == "Hybrid-test-A"
        assert arms.loc["challenger", "model_versions"] == "Popularity-test"

        # the log: follow-ups carry the list's id, the visits' own events do not
        log = pd.DataFrame(read_segments(root / "events"))
        log = log[log["event_id"].str.startswith(f"rp-{result.run_id}-")]
        assert len(log) == result.events_posted == 4 * (5 + 2 + 1)
        assert (log["event_type"] == "click").sum() == 12
        organic = log[log["recommendation_id"] == ""]
        assert sorted(organic["value"].astype(float)) == [1.0] * 4 + [3.0] * 4

        store_runs(Storage.from_uri(str(root)), result.arms())
        stored = Storage.from_uri(str(root)).read_table(f"{REPLAY_RUNS}.parquet")
        assert len(stored) == 2 and set(stored["run_id"]) == {result.run_id}
        assert "event log agrees with the simulator" in summary_text(result)
    finally:
        api.stop()


def test_the_gate_replay_refuses_a_scenario_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from recsys_assets.tools.replay.__main__ import main

    with pytest.raises(SystemExit) as refused:
        main(["gate", "--workdir", str(tmp_path), "--scenario", "no-challenger=artifacts/A"])
    assert "expected NAME=CHAMPION_FOLDER,CHALLENGER_FOLDER" in str(refused.value)
    with pytest.raises(SystemExit) as refused:
        main(["gate", "--workdir", str(tmp_path), "--scenario", "s=artifacts/A,artifacts/B"])
    assert "run `replay prepare` there first" in str(refused.value)
    assert not (tmp_path / "gate").exists()  # refused before anything was written
