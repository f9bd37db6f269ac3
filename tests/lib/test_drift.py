"""The drift report on synthetic event logs with known answers: no drift between two windows of the same
traffic, drift on a launch of new items and on a new population, CTR/conversion counted exactly and its
floor, the champion's NDCG@10 on a hand-computed case, no verdict on too few events, an offline HTML."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys_assets.contract import shared_scripts
from recsys_assets.contract.artifact import ServingArtifact
from recsys_assets.contract.attribution import EVENT_LOG_COLUMNS
from recsys_assets.contract.scoring import Component, Scorer
from recsys_assets.contract.settings import DriftConfig, Settings
from recsys_assets.lib import drift

N_USERS, N_ITEMS = 200, 100
FEEDBACK = ("view", "click", "add_to_cart", "purchase", "rating")
FEEDBACK_P = (0.4, 0.25, 0.05, 0.05, 0.25)
START = pd.Timestamp("2026-03-02 10:00", tz="UTC")


def popularity_artifact(history: sp.csr_matrix, popularity: np.ndarray, users: list[str], items: list[str]):
    """A champion that ranks by a fixed popularity vector."""
    return ServingArtifact(
        model_name="Popularity",
        model_version="Popularity-test",
        scorer=Scorer({"pop": Component("popularity", {"popularity": np.asarray(popularity, float)})}, {"pop": 1.0}),
        user_ids=np.asarray(users, dtype=str),
        item_ids=np.asarray(items, dtype=str),
        history=sp.csr_matrix(history, dtype=np.float64),
        item_titles=np.asarray(items, dtype=str),
        item_categories=np.full(len(items), "", dtype=str),
    )


def item_weights(n: int) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** 0.8
    return w / w.sum()


@pytest.fixture(scope="module")
def champion() -> ServingArtifact:
    """200 users with 5-40 items each, drawn from a long-tailed item popularity."""
    rng = np.random.default_rng(7)
    p = item_weights(N_ITEMS)
    rows, cols = [], []
    for u in range(N_USERS):
        chosen = rng.choice(N_ITEMS, size=int(rng.integers(5, 41)), replace=False, p=p)
        rows += [u] * len(chosen)
        cols += chosen.tolist()
    history = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(N_USERS, N_ITEMS))
    popularity = np.diff(history.tocsc().indptr).astype(float)
    return popularity_artifact(
        history, popularity, [f"u{i}" for i in range(N_USERS)], [f"i{i}" for i in range(N_ITEMS)]
    )


def log_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as the API's CSV segments hold them: text, empty where absent."""
    return pd.DataFrame(rows, columns=list(EVENT_LOG_COLUMNS)).fillna("").astype(str)


def traffic(
    seed: int,
    n_events: int = 4000,
    new_user_share: float = 0.03,
    new_item_share: float = 0.02,
    n_lists: int = 300,
    tag: str = "w",
) -> pd.DataFrame:
    """A window of live traffic: feedback events on the champion's users and items (a share of them on
    users / items it never saw) and served lists of 10 items."""
    rng = np.random.default_rng(seed)
    p = item_weights(N_ITEMS)
    new_users = [f"new-user-{i}" for i in range(N_USERS)]
    new_items = [f"new-item-{i}" for i in range(50)]
    rows = []
    for n in range(n_events):
        user = new_users[rng.integers(len(new_users))] if rng.random() < new_user_share else f"u{rng.integers(N_USERS)}"
        item = (
            new_items[rng.integers(len(new_items))] if rng.random() < new_item_share else f"i{rng.choice(N_ITEMS, p=p)}"
        )
        event = str(rng.choice(FEEDBACK, p=FEEDBACK_P))
        rows.append(
            {
                "user_id": user,
                "item_id": item,
                "event_type": event,
                "timestamp": (START + pd.Timedelta(seconds=n)).isoformat(),
                "value": str(int(rng.integers(1, 6))) if event == "rating" else "",
                "event_id": f"{tag}-e{n}",
            }
        )
    for j in range(n_lists):
        rec = f"{tag}-r{j}"
        user = f"u{rng.integers(N_USERS)}"
        for pos, item in enumerate(rng.choice(N_ITEMS, size=10, replace=False, p=p), 1):
            rows.append(
                {
                    "user_id": user,
                    "item_id": f"i{item}",
                    "event_type": "impression",
                    "timestamp": (START + pd.Timedelta(seconds=j)).isoformat(),
                    "value": str(pos),
                    "event_id": f"{rec}:{pos}",
                    "recommendation_id": rec,
                    "model_version": "Popularity-test",
                    "arm": "A",
                }
            )
    return log_frame(rows)


@pytest.fixture
def quiet(settings: Settings) -> DriftConfig:
    """Default drift rules with no performance floor."""
    return settings.drift().model_copy(update={"min_ctr": None, "min_ndcg": None})


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return traffic(1, tag="ref")


def drifted_features(result: drift.DriftResult, kind: str = drift.DATA) -> set[str]:
    t = result.table
    return set(t.loc[(t["kind"] == kind) & t["drifted"], "metric"])


def test_same_traffic_does_not_drift(reference: pd.DataFrame, champion: ServingArtifact, quiet: DriftConfig) -> None:
    result = drift.detect_drift(reference, traffic(2, tag="cur"), champion, quiet)
    assert result.decided and not result.drifted
    assert result.data_drift_share == 0.0
    assert result.reasons == []
    t = result.table.set_index("metric")
    assert set(drift.DATA_FEATURES) | set(drift.PREDICTION_FEATURES) | set(drift.PERFORMANCE_METRICS) == set(t.index)
    assert list(result.table.columns) == list(drift.TABLE_COLUMNS)
    features = t[t["kind"] != drift.PERFORMANCE]
    assert (features["score"] < quiet.threshold).all(), features["score"].to_dict()
    assert set(features["stattest"]) == {drift.NUMERICAL_STATTEST, drift.CATEGORICAL_STATTEST}
    assert t.loc["new_item", "stattest"] == "jensenshannon" and t.loc["user_history", "stattest"] == "wasserstein"
    # the share of events on new items, in each window
    assert t.loc["new_item", "current_value"] == pytest.approx(0.02, abs=0.01)
    assert result.n_reference == result.n_current == 4000


def test_launch_of_new_items_drifts(reference: pd.DataFrame, champion: ServingArtifact, quiet: DriftConfig) -> None:
    result = drift.detect_drift(reference, traffic(3, new_item_share=0.65, tag="cur"), champion, quiet)
    assert result.drifted
    assert {"new_item", "item_popularity"} <= drifted_features(result)
    assert not {"new_user", "user_history"} & drifted_features(result)
    assert result.data_drift_share >= quiet.share
    assert any(r.startswith("new_item: jensenshannon") for r in result.reasons)
    assert any(r.startswith("item_popularity: wasserstein") for r in result.reasons)
    t = result.table.set_index("metric")
    assert t.loc["new_item", "current_value"] == pytest.approx(0.65, abs=0.03)


def test_new_population_drifts(reference: pd.DataFrame, champion: ServingArtifact, quiet: DriftConfig) -> None:
    result = drift.detect_drift(reference, traffic(4, new_user_share=0.7, tag="cur"), champion, quiet)
    assert result.drifted
    assert {"new_user", "user_history"} <= drifted_features(result)
    assert not {"new_item", "item_popularity"} & drifted_features(result)
    assert any(r.startswith("new_user: jensenshannon") for r in result.reasons)


def test_verdict_does_not_depend_on_window_length(
    reference: pd.DataFrame, champion: ServingArtifact, quiet: DriftConfig
) -> None:
    """The same traffic in a window four times shorter keeps its verdict (distances, not p-values)."""
    short = drift.detect_drift(reference, traffic(5, n_events=1000, n_lists=75, tag="cur"), champion, quiet)
    assert short.decided and not short.drifted
    launch = drift.detect_drift(reference, traffic(6, n_events=1000, new_item_share=0.65, tag="cur"), champion, quiet)
    assert launch.drifted


# ---------------------------------------------------------------------------------------------
# Performance
# ---------------------------------------------------------------------------------------------


def hand_made_window() -> pd.DataFrame:
    """4 lists of 3 items; r1 clicked, r2 nothing, r3 clicked twice on one item and bought, r4 rated 5
    without a click; plus organic feedback (no list, or a list never served) that must not count."""
    rows = []
    for j, user in enumerate(["u1", "u2", "u3", "u4"], 1):
        for pos, item in enumerate(["i1", "i2", "i3"], 1):
            ts = (START + pd.Timedelta(minutes=j)).isoformat()
            rows.append(
                {
                    "user_id": user,
                    "item_id": item,
                    "event_type": "impression",
                    "timestamp": ts,
                    "value": str(pos),
                    "event_id": f"r{j}:{pos}",
                    "recommendation_id": f"r{j}",
                    "model_version": "Popularity-test",
                    "arm": "A",
                }
            )

    def feedback(n: int, user: str, item: str, event: str, rec: str = "", value: str = "") -> None:
        ts = (START + pd.Timedelta(minutes=10 + n)).isoformat()
        rows.append(
            {
                "user_id": user,
                "item_id": item,
                "event_type": event,
                "timestamp": ts,
                "value": value,
                "event_id": f"f{n}",
                "recommendation_id": rec,
            }
        )

    feedback(1, "u1", "i2", "click", "r1")
    feedback(2, "u3", "i1", "click", "r3")
    feedback(3, "u3", "i1", "click", "r3")
    feedback(4, "u3", "i1", "purchase", "r3")
    feedback(5, "u4", "i3", "rating", "r4", "5")
    feedback(6, "u2", "i2", "click")  # organic
    feedback(7, "u2", "i3", "purchase", "never-served")
    return log_frame(rows)


def test_window_performance_counts_lists_exactly(champion: ServingArtifact, settings: Settings) -> None:
    perf = drift.window_performance(hand_made_window(), champion, settings.cleaning())
    assert perf["lists"] == 4 and perf["impressions"] == 12
    assert perf["ctr"] == pytest.approx(2 / 4)
    assert perf["conversion"] == pytest.approx(2 / 4)


def test_ctr_below_floor_drifts(champion: ServingArtifact, settings: Settings) -> None:
    window = hand_made_window()
    low_bar = settings.drift().model_copy(update={"min_rows": 5, "min_ctr": 0.4})
    high_bar = settings.drift().model_copy(update={"min_rows": 5, "min_ctr": 0.6})

    ok = drift.detect_drift(window, window, champion, low_bar)
    assert ok.decided and not ok.drifted and ok.data_drift_share == 0.0

    breached = drift.detect_drift(window, window, champion, high_bar)
    assert breached.drifted
    ctr = breached.table.set_index("metric").loc["ctr"]
    assert ctr["kind"] == drift.PERFORMANCE and bool(ctr["drifted"])
    assert (ctr["score"], ctr["threshold"], ctr["current_value"], ctr["reference_value"]) == pytest.approx(
        (0.5, 0.6, 0.5, 0.5)
    )
    assert "ctr: 0.5 < floor 0.6" in breached.reasons
    assert not drifted_features(breached)


# ---------------------------------------------------------------------------------------------
# The champion's NDCG@10 on a window, by hand
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> ServingArtifact:
    """3 users, 5 items ranked i0 > i1 > ... > i4; u0 trained on i0, u1 on i1 and i2, u2 on i0 and i1."""
    history = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=float))
    return popularity_artifact(history, [5, 4, 3, 2, 1], ["u0", "u1", "u2"], [f"i{i}" for i in range(5)])


def tiny_window() -> pd.DataFrame:
    events = [
        ("u0", "i2", "click", ""),
        ("u0", "i4", "rating", "2"),  # every event is a positive, as in the offline evaluation
        ("u1", "i0", "view", ""),
        ("u1", "i1", "purchase", ""),  # re-consumed: stays rankable, as in the offline evaluation
        ("u0", "x9", "click", ""),  # an item the champion does not know: not ranked
        ("stranger", "i3", "click", ""),  # a user the champion does not know: not ranked
    ]
    rows = [
        {
            "user_id": u,
            "item_id": i,
            "event_type": e,
            "timestamp": (START + pd.Timedelta(seconds=n)).isoformat(),
            "value": v,
            "event_id": f"t{n}",
        }
        for n, (u, i, e, v) in enumerate(events)
    ]
    return log_frame(rows)


def test_champion_ndcg_matches_hand_computation(tiny: ServingArtifact, settings: Settings) -> None:
    perf = drift.window_performance(tiny_window(), tiny, settings.cleaning())
    # u0: i0 masked, ranking i1 i2 i3 i4, positives i2 (rank 2) and i4 (rank 4)
    u0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    # u1: i2 masked, i1 is a positive again, ranking i0 i1 i3 i4: both positives on top
    u1 = 1.0
    assert perf["ndcg_users"] == 2
    assert perf["ndcg@10"] == pytest.approx((u0 + u1) / 2)
    assert perf["lists"] == 0 and math.isnan(perf["ctr"])


def test_ndcg_is_nan_without_known_users(tiny: ServingArtifact, settings: Settings) -> None:
    window = tiny_window()
    perf = drift.window_performance(window[window["user_id"] == "stranger"], tiny, settings.cleaning())
    assert math.isnan(perf["ndcg@10"]) and perf["ndcg_users"] == 0


def test_interaction_and_served_features(tiny: ServingArtifact, settings: Settings) -> None:
    feats = drift.interaction_features(tiny_window(), tiny, settings.cleaning())
    assert list(feats.columns) == list(drift.DATA_FEATURES)
    assert isinstance(feats["event_type"].dtype, pd.CategoricalDtype)
    window = tiny_window()  # in time order, the order of the features
    by_pair = feats.assign(pair=(window["user_id"] + "/" + window["item_id"]).to_numpy())
    by_pair = by_pair.set_index("pair")
    # u1 has 2 training items; i0 has 2 training users; x9 and stranger are unknown
    assert by_pair.loc["u1/i0", "user_history"] == pytest.approx(math.log1p(2))
    assert by_pair.loc["u1/i0", "item_popularity"] == pytest.approx(math.log1p(2))
    assert by_pair.loc["u0/x9", ["item_popularity", "new_item", "new_user"]].tolist() == [0.0, 1, 0]
    assert by_pair.loc["stranger/i3", ["user_history", "new_user"]].tolist() == [0.0, 1]
    assert by_pair.loc["u0/i4", "rating"] == 2.0 and math.isnan(by_pair.loc["u0/i2", "rating"])

    served = drift.served_features(hand_made_window(), tiny)
    assert len(served) == 12 and list(served.columns) == list(drift.PREDICTION_FEATURES)
    # i3 is in the catalog but has no training user: not among the most popular
    assert set(served["served_item"]) == {"i1", "i2", drift.OTHER_ITEM}
    assert served["served_popularity"].tolist()[:3] == pytest.approx([math.log1p(2), math.log1p(1), 0.0])


# ---------------------------------------------------------------------------------------------
# No verdict, and the HTML
# ---------------------------------------------------------------------------------------------


def test_too_few_events_gives_no_verdict(champion: ServingArtifact, quiet: DriftConfig) -> None:
    small_ref = traffic(8, n_events=50, n_lists=5, tag="ref")
    launch = traffic(9, n_events=50, n_lists=5, new_item_share=0.9, tag="cur")
    result = drift.detect_drift(small_ref, launch, champion, quiet)
    assert not result.decided and not result.drifted
    assert result.reasons and result.reasons[0].startswith(drift.TOO_FEW)
    assert (result.n_reference, result.n_current) == (50, 50)
    t = result.table.set_index("metric")
    # the distances are still computed and shown, but none counts
    assert t.loc["new_item", "score"] > quiet.threshold
    assert not result.table["drifted"].any()
    assert "no verdict" in result.html

    empty = drift.detect_drift(small_ref, log_frame([]), champion, quiet)
    assert not empty.decided and not empty.drifted and empty.n_current == 0
    assert "nothing to compare" in empty.html


def test_html_is_self_contained(reference: pd.DataFrame, champion: ServingArtifact, quiet: DriftConfig) -> None:
    result = drift.detect_drift(reference, traffic(3, new_item_share=0.65, tag="cur"), champion, quiet)
    page = result.html
    assert "Drift verdict: drift: retrain" in page and "new_item" in page
    assert "drawDashboard" in page  # Evidently's renderer is inline
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", page, re.IGNORECASE)


def test_the_stored_report_shares_evidently_s_renderer(
    reference: pd.DataFrame, champion: ServingArtifact, quiet: DriftConfig
) -> None:
    result = drift.detect_drift(reference, traffic(3, new_item_share=0.65, tag="cur"), champion, quiet)
    scripts = drift.renderer_scripts()
    (name,) = scripts
    assert re.fullmatch(r"evidently-[0-9][0-9a-z.]*\.js", name) and len(scripts[name]) > 1_000_000
    page, used = shared_scripts.detach(result.html, scripts)
    assert used == [name] and f'<script src="../lib/{name}"></script>' in page
    # the renderer was nearly all of it
    assert len(page) < len(result.html) / 5 and "Drift verdict" in page
    assert shared_scripts.inline(page, scripts.get) == result.html
