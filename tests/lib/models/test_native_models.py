"""The hybrid's own behaviour on the model tests' checkerboard: its cold-start paths and its tuning on the
validation part. What every model must do (Popularity, Content and Hybrid included) is the model contract's
check (`tests/lib/models/test_contract.py`)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.scoring import Component, top_k
from recsys_assets.lib.models.base import TrainData
from recsys_assets.lib.models.native import HybridModel, grid_steps
from tests.lib.models.checkerboard import NEW_ITEMS, checkerboard


def item_item_component(data: TrainData) -> Component:
    co = (data.matrix.T @ data.matrix).tocsr().astype(np.float32)
    co.setdiag(0)
    co.eliminate_zeros()
    return Component("item_item", {"similarity": co}, {"binary": 1})


def test_hybrid_cold_start_paths() -> None:
    data = checkerboard().data
    model = HybridModel(collaborative=item_item_component(data), collaborative_name="cooc").fit(data)
    scorer = model.scorer  # untuned (no validation part given): equal weights
    popularity = np.diff(data.matrix.tocsc().indptr)
    empty = sp.csr_matrix((1, data.n_items), dtype=np.float32)
    # no history: popularity decides, optionally within a category
    top = scorer.topk(empty, 3, user_idx=np.array([-1]))
    np.testing.assert_array_equal(top[0], top_k(popularity.astype(float), 3))
    in_1 = (data.items["categories"] == "Genre1").to_numpy()
    top_1 = scorer.topk(empty, 3, user_idx=np.array([-1]), allowed=in_1)
    assert in_1[top_1[0]].all()
    # a few events in half 1: content and item-item evidence bring half 1 first
    three = np.flatnonzero(in_1 & (popularity > 0))[:3]
    few = sp.csr_matrix((np.ones(3, dtype=np.float32), ([0, 0, 0], three)), shape=(1, data.n_items))
    top = scorer.topk(few, 5, user_idx=np.array([-1]), exclude=few)
    assert in_1[top[0]].all()
    # a new item with metadata (no event) is reachable through content similarity
    content = model.components["content"].raw_scores(few, None)[0]
    new_0, new_1 = (data.items.index[data.items["item_id"] == item][0] for item in NEW_ITEMS)
    assert content[new_1] > content[new_0]


def test_hybrid_weights_are_tuned_on_validation_only() -> None:
    build = checkerboard()
    data = build.data
    model = HybridModel(collaborative=item_item_component(data), collaborative_name="cooc", min_bucket_users=1000)
    model.fit(build)  # tunes on the split's validation part
    assert model.tuning is not None and len(model.tuning) == 66  # 3 components on a 0.1 grid, one bucket
    assert abs(sum(model.weights.values()) - 1) < 1e-9
    assert model.weights["popularity"] < 1.0  # the personalised components earn weight
    assert model.params()["weights"] == model.weights


def test_hybrid_search_is_bounded() -> None:
    build = checkerboard()
    data = build.data
    everyone = np.flatnonzero(np.diff(build.valid_truth.indptr) > 0)
    model = HybridModel(collaborative=item_item_component(data), tune_users=5, max_trials=20, min_bucket_users=1000)
    model.fit(build)
    # a fixed sample of 5 validation users, and a 5-step grid (21 points) is over budget: 4 steps, 15 points
    users = model._tuning_users(build.valid_truth)
    assert len(users) == 5 and np.isin(users, everyone).all()
    np.testing.assert_array_equal(users, model._tuning_users(build.valid_truth))
    assert model.tuning is not None and len(model.tuning) == 15
    # a cell budget bounds the sample too: two users' worth of items
    cells = HybridModel(tune_cells=2 * data.n_items)._tuning_users(build.valid_truth)
    assert len(cells) == 2
    assert grid_steps(3, 10, 66) == 10 and grid_steps(3, 10, 65) == 9 and grid_steps(3, 10, 0) == 1
