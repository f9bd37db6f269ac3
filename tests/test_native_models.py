"""The shared behavioural contract on synthetic data with a known answer, for the native models, and
the hybrid's cold-start behaviour."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys_assets.contract.scoring import Component
from recsys_assets.lib.models.base import TrainData
from recsys_assets.lib.models.native import ContentModel, HybridModel, PopularityModel

N_USERS, N_ITEMS = 40, 20
HALF = N_ITEMS // 2


def checkerboard(extra_items: int = 0) -> TrainData:
    """Users 0..19 like items 0..9 (category `a`), users 20..39 like items 10..19 (category `b`); each
    user has seen all of their half but two items, which are the known answer. Item 0 is the most
    popular. `extra_items` adds catalog items with metadata and no interaction (new items)."""
    rng = np.random.default_rng(0)
    rows = []
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(N_USERS):
        half = range(HALF) if u < N_USERS // 2 else range(HALF, N_ITEMS)
        held = set(rng.choice(list(half), 2, replace=False)) - {0}
        for i in half:
            if i not in held or i == 0:
                rows.append((str(u), str(i), t0 + pd.Timedelta(minutes=len(rows))))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    events["event_type"], events["value"], events["weight"] = "click", np.nan, 1.0
    n_items = N_ITEMS + extra_items
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(n_items)],
            "title": [f"item {i}" for i in range(n_items)],
            "categories": ["a" if (i < HALF or (i >= N_ITEMS and i % 2 == 0)) else "b" for i in range(n_items)],
            "text": ["" for _ in range(n_items)],
            "year": pd.array([pd.NA] * n_items, dtype="Int32"),
        }
    )
    users = pd.DataFrame({"user_id": [str(u) for u in range(N_USERS)]})
    return TrainData.build(events, items, users)


def own_half_share(model, data: TrainData, k: int = 1) -> float:
    """Share of users whose top-k unseen items come from their own half (every user has one left)."""
    scores = model.score(np.arange(data.n_users))
    scores[data.matrix.nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    own = np.where(np.arange(data.n_users)[:, None] < N_USERS // 2, top < HALF, top >= HALF)
    return float(own.mean())


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: ContentModel().fit(d), id="Content"),
        pytest.param(lambda d: HybridModel().fit(d, valid=held_out(d)), id="Hybrid"),
        pytest.param(
            lambda d: HybridModel(collaborative=item_item_component(d), collaborative_name="cooc").fit(
                d, valid=held_out(d)
            ),
            id="Hybrid+item_item",
        ),
    ],
)
def test_personalised_models_recommend_from_the_users_half(make) -> None:
    data = checkerboard()
    assert own_half_share(make(data), data) == 1.0


def test_popularity_ranks_the_most_popular_item_first() -> None:
    data = checkerboard()
    model = PopularityModel().fit(data)
    assert int(np.argmax(model.score(np.array([0]))[0])) == 0
    assert own_half_share(model, data) < 1.0  # the same list for everyone


def item_item_component(data: TrainData) -> Component:
    co = (data.matrix.T @ data.matrix).tocsr().astype(np.float32)
    co.setdiag(0)
    co.eliminate_zeros()
    return Component("item_item", {"similarity": co}, {"binary": 1})


def test_hybrid_cold_start_paths() -> None:
    data = checkerboard(extra_items=4)  # items 20..23: metadata, no interaction
    model = HybridModel(collaborative=item_item_component(data), collaborative_name="cooc").fit(data)
    scorer = model.scorer  # untuned: equal weights
    empty = sp.csr_matrix((1, data.n_items), dtype=np.float32)
    # no history: popularity decides (item 0 first), optionally within a category
    top = scorer.topk(empty, 3, user_idx=np.array([-1]))
    assert top[0, 0] == 0
    in_b = (data.items["categories"] == "b").to_numpy()
    top_b = scorer.topk(empty, 3, user_idx=np.array([-1]), allowed=in_b)
    assert in_b[top_b[0]].all()
    # a few events in half `b`: content and item-item evidence bring half `b` first
    few = sp.csr_matrix((np.ones(3, dtype=np.float32), ([0, 0, 0], [11, 12, 13])), shape=(1, data.n_items))
    top = scorer.topk(few, 5, user_idx=np.array([-1]), exclude=few)
    assert (top[0] >= HALF).all() and in_b[top[0]].all()
    # a new item with metadata is reachable through content similarity
    content = model.components["content"].raw_scores(few, None)[0]
    assert content[21] > content[20]  # item 21 is in category b, item 20 in category a


def held_out(data: TrainData) -> sp.csr_matrix:
    """The known answer: each user's unseen items of their own half."""
    held = sp.lil_matrix((data.n_users, data.n_items), dtype=np.int8)
    seen = data.matrix.toarray() > 0
    for u in range(data.n_users):
        for i in range(HALF) if u < N_USERS // 2 else range(HALF, N_ITEMS):
            if not seen[u, i]:
                held[u, i] = 1
    return held.tocsr()


def test_hybrid_weights_are_tuned_on_validation_only() -> None:
    data = checkerboard()
    model = HybridModel(collaborative=item_item_component(data), collaborative_name="cooc", min_bucket_users=1000)
    model.fit(data, valid=held_out(data))
    assert model.tuning is not None and len(model.tuning) == 66  # 3 components on a 0.1 grid
    assert abs(sum(model.weights.values()) - 1) < 1e-9
    assert model.weights["popularity"] < 1.0  # the personalised components earn weight
