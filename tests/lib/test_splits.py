"""The two evaluation protocols and the cold-start slices, on small synthetic interaction logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.evaluation.splits import (
    RANDOM,
    TEMPORAL,
    USER_SLICES,
    cold_start_slices,
    interactions_to_csr,
    random_split,
    recbole_split_ids,
    temporal_split,
    user_slices,
)

USER_SIZES = [1, 2, 3, 4, 5, 7, 9, 10, 11, 19, 25, 50, 101]


def _interactions(seed: int = 0) -> pd.DataFrame:
    """Users with the sizes above, 30 items, timestamps on a coarse grid (so many ties), schema dtypes."""
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{i:03d}" for i in range(len(USER_SIZES))], USER_SIZES)
    n = users.size
    seconds = rng.integers(0, 200, size=n) * 3600
    return pd.DataFrame(
        {
            "user_id": users,
            "item_id": [f"i{j}" for j in rng.integers(0, 30, size=n)],
            "event_type": rng.choice(["view", "click", "purchase"], size=n),
            "timestamp": pd.to_datetime(seconds, unit="s", utc=True).astype("datetime64[us, UTC]"),
            "value": np.nan,
            "weight": 1.0,
        },
        index=pd.RangeIndex(1000, 1000 + n),
    )


def _assert_partition(inter: pd.DataFrame, parts: list[pd.DataFrame]) -> None:
    """Every event in exactly one part, unchanged."""
    joined = pd.concat(parts)
    assert len(joined) == len(inter)
    assert joined.index.is_unique
    pd.testing.assert_frame_equal(joined.sort_index(), inter.sort_index())


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (8, 1, 1), (0.6, 0.0, 0.4)])
def test_split_ids_match_recbole(ratios) -> None:
    from recbole.data.dataset.dataset import Dataset

    normalised = [r / sum(ratios) for r in ratios]  # RecBole normalises in split_by_ratio, then calls this
    for total in range(0, 120):
        assert recbole_split_ids(total, ratios) == list(Dataset._calcu_split_ids(None, total, normalised)), total


def test_split_ids_hand_values() -> None:
    sizes = {10: (8, 1, 1), 3: (1, 1, 1), 2: (1, 0, 1), 1: (1, 0, 0), 25: (21, 2, 2), 19: (17, 1, 1)}
    for total, expected in sizes.items():
        c1, c2 = recbole_split_ids(total, (0.8, 0.1, 0.1))
        assert (c1, c2 - c1, total - c2) == expected, total


def test_random_split_per_user_ratios() -> None:
    inter = _interactions()
    s = random_split(inter, seed=11)
    assert s.protocol == RANDOM
    _assert_partition(inter, [s.train, s.valid, s.test])
    counts = pd.DataFrame({name: part.groupby("user_id").size() for name, part in s.parts().items()})
    counts = counts.fillna(0).astype(int)
    for user, size in zip(sorted(inter["user_id"].unique()), USER_SIZES, strict=True):
        c1, c2 = recbole_split_ids(size, (0.8, 0.1, 0.1))
        assert tuple(counts.loc[user]) == (c1, c2 - c1, size - c2), user
    assert tuple(counts.loc["u012"]) == (81, 10, 10)  # 101 events


def test_random_split_is_reproducible_and_row_order_free() -> None:
    inter = _interactions()
    a = random_split(inter, seed=5)
    b = random_split(inter.sample(frac=1.0, random_state=1), seed=5)
    c = random_split(inter, seed=6)
    for name in ("train", "valid", "test"):
        assert sorted(a.parts()[name].index) == sorted(b.parts()[name].index)
    assert sorted(a.test.index) != sorted(c.test.index)


def test_temporal_split_never_trains_on_the_future() -> None:
    inter = _interactions()
    s = temporal_split(inter)
    assert s.protocol == TEMPORAL
    _assert_partition(inter, [s.train, s.valid, s.test])
    assert s.train["timestamp"].max() < s.valid["timestamp"].min()
    assert s.valid["timestamp"].max() < s.test["timestamp"].min()
    assert s.train["timestamp"].max() <= s.test["timestamp"].min()
    # Ties at a cut go to the later part, so the earlier parts are at most their rounded share.
    c1, c2 = recbole_split_ids(len(inter), (0.8, 0.1, 0.1))
    assert len(s.train) <= c1 and len(s.train) + len(s.valid) <= c2
    assert len(s.train) > 0.7 * len(inter) and len(s.test) >= len(inter) - c2


def test_temporal_split_ties_and_cold_start_kept() -> None:
    ts = pd.to_datetime(["2024-01-01"] * 7 + ["2024-01-02"] * 3, utc=True)
    inter = pd.DataFrame(
        {
            "user_id": ["a"] * 7 + ["a", "b", "c"],
            "item_id": ["x"] * 7 + ["x", "y", "z"],
            "event_type": "view",
            "timestamp": ts.astype("datetime64[us, UTC]"),
            "value": np.nan,
            "weight": 1.0,
        }
    )
    # The cuts fall after events 8 and 9 of 10; events 8 to 10 share one timestamp, so all three go to
    # test: train shrinks to 7 and valid is empty.
    s = temporal_split(inter)
    assert len(s.train) == 7 and len(s.valid) == 0 and len(s.test) == 3
    # Users b, c and items y, z exist only after the cut: kept in test as cold-start cases.
    assert set(s.test["user_id"]) == {"a", "b", "c"}
    summary = s.summary()
    assert summary["test_users_unseen_in_train"] == 2 and summary["test_items_unseen_in_train"] == 2


def test_cold_start_slices_hand_made() -> None:
    day = pd.Timestamp("2024-01-01", tz="UTC")
    train_counts = {"u1": 1, "u5": 5, "u6": 6, "u20": 20, "u21": 21}
    train = pd.DataFrame(
        {
            "user_id": [u for u, n in train_counts.items() for _ in range(n)],
            "item_id": "seen",
            "event_type": "view",
            "timestamp": day,
        }
    )
    test = pd.DataFrame(
        {
            "user_id": ["new", "u1", "u5", "u6", "u20", "u21", "u21"],
            "item_id": ["seen", "seen", "fresh", "seen", "seen", "seen", "fresh"],
            "event_type": "view",
            "timestamp": day + pd.Timedelta(days=1),
        }
    )
    out = cold_start_slices(train, test)
    assert out["n_train_events"].tolist() == [0, 1, 5, 6, 20, 21, 21]
    assert out["user_slice"].astype(str).tolist() == ["0", "1-5", "1-5", "6-20", "6-20", "20+", "20+"]
    assert list(out["user_slice"].cat.categories) == list(USER_SLICES)
    assert out["new_item"].tolist() == [False, False, True, False, False, False, True]
    per_user = user_slices(train, test)
    assert per_user.astype(str).to_dict() == {
        "new": "0",
        "u1": "1-5",
        "u5": "1-5",
        "u6": "6-20",
        "u20": "6-20",
        "u21": "20+",
    }


def test_interactions_to_csr() -> None:
    inter = pd.DataFrame({"user_id": ["a", "a", "b", "a"], "item_id": ["x", "y", "x", "x"]})
    m = interactions_to_csr(inter, ["a", "b", "c"], ["x", "y", "z"])
    assert m.toarray().tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="not in the given ids"):
        interactions_to_csr(inter, ["a"], ["x", "y"])


# --- the per-user sequence split (a log ordered per user, e.g. order numbers) --------------------


def _sequenced(rng: np.random.Generator, n_users: int = 40) -> pd.DataFrame:
    """Users with 1 to 12 orders of 1 to 3 items each; order numbers restart at 1 for every user and
    every event shares one timestamp, as a basket log without time is ingested."""
    rows = []
    for u in range(n_users):
        for order in range(1, 1 + int(rng.integers(1, 13))):
            for j in range(int(rng.integers(1, 4))):
                rows.append((f"u{u}", f"i{(u + 7 * order + j) % 50}", order))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", S.SEQUENCE_COL])
    df = df.assign(event_type="purchase", timestamp=pd.Timestamp("2000-01-01", tz="UTC"))
    df[S.TIME_MODE_COL] = pd.Categorical(["sequence"] * len(df))
    return df.sample(frac=1.0, random_state=3)  # the split must not depend on row order


def test_sequence_split_keeps_each_users_order_and_tests_their_last_orders() -> None:
    inter = _sequenced(np.random.default_rng(0))
    sp = S.split(inter, S.TEMPORAL)
    assert sp.protocol == S.TEMPORAL and sp.method == S.METHODS["sequence"]
    assert "per-user sequence" in sp.summary()["method"]
    assert len(sp.train) + len(sp.valid) + len(sp.test) == len(inter)
    seq = {name: part.groupby("user_id")[S.SEQUENCE_COL] for name, part in sp.parts().items()}
    last = inter.groupby("user_id")[S.SEQUENCE_COL].max()
    n_orders = inter.groupby("user_id")[S.SEQUENCE_COL].nunique()
    # every user with two orders or more has their last order, whole, in test
    tested = sp.test.groupby("user_id")[S.SEQUENCE_COL].min()
    assert set(tested.index) == set(n_orders[n_orders >= 2].index)
    assert (seq["test"].max() == last[tested.index]).all()
    whole_last = inter[inter[S.SEQUENCE_COL] == inter["user_id"].map(last)]
    assert whole_last[whole_last["user_id"].isin(tested.index)].index.isin(sp.test.index).all()
    # order within a user: train before valid before test, no order split across parts
    for user in inter["user_id"].unique():
        tr, va, te = (seq[p].get_group(user) if user in seq[p].groups else pd.Series([]) for p in seq)
        if len(tr) and len(va):
            assert tr.max() < va.min()
        if len(va) and len(te):
            assert va.max() < te.min()
        if len(tr) and len(te):
            assert tr.max() < te.min()
    # the per-user cut follows RecBole's rounding of 8:1:1 over the user's orders
    ids = {k: S.recbole_split_ids(int(k), S.DEFAULT_RATIOS) for k in n_orders.unique()}
    for user, k in n_orders.items():
        in_test = sp.test.loc[sp.test["user_id"] == user, S.SEQUENCE_COL].nunique()
        assert in_test == k - ids[k][1]


def test_sequence_split_puts_events_without_a_position_last() -> None:
    inter = pd.DataFrame(
        {
            "user_id": ["a"] * 4,
            "item_id": ["x", "y", "z", "live"],
            S.SEQUENCE_COL: [1.0, 2.0, 3.0, np.nan],
            "timestamp": pd.to_datetime(["2000-01-01"] * 3 + ["2025-01-01"], utc=True),
        }
    )
    inter[S.TIME_MODE_COL] = "sequence"
    sp = S.sequence_split(inter, (0.5, 0.0, 0.5))
    assert list(sp.train["item_id"]) == ["x", "y"] and list(sp.test["item_id"]) == ["z", "live"]


def test_global_time_cut_stays_the_temporal_split_of_a_timed_log() -> None:
    inter = _sequenced(np.random.default_rng(1)).drop(columns=[S.TIME_MODE_COL])
    inter["timestamp"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(inter)), unit="s")
    sp = S.split(inter, S.TEMPORAL)
    assert sp.method == S.METHODS[S.TEMPORAL] and sp.train["timestamp"].max() < sp.test["timestamp"].min()
