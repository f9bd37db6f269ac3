"""The API's two scoring paths: the threshold picks one, and the candidate path serves the exact list."""

from __future__ import annotations

import numpy as np

from serving.loaded import LoadedModel
from serving.recommend import UserHistory, recommend
from tests.contract.test_retrieval import N_ITEMS, _artifact, _scorer


def test_threshold_picks_the_path_and_both_serve_the_same_list() -> None:
    scorer, history = _scorer(seed=5)
    art = _artifact(scorer, history)
    exact = LoadedModel.build(art, "x", candidate_threshold=N_ITEMS)
    approx = LoadedModel.build(art, "x", candidate_threshold=N_ITEMS - 1)
    assert exact.retriever is None and approx.retriever is not None
    same = 0
    for u in range(20):
        lo, hi = history.indptr[u], history.indptr[u + 1]
        h = UserHistory(idx=history.indices[lo:hi], weights=history.data[lo:hi], user=u)
        a = recommend(exact, h, 10, None, exclude_seen=True)
        b = recommend(approx, h, 10, None, exclude_seen=True)
        assert len(b) == 10 and not {r.item_id for r in b} & {f"i{j}" for j in h.idx.tolist()}
        same += len({r.item_id for r in a} & {r.item_id for r in b})
        for x in b:  # a candidate's score is its exact score
            match = [y for y in a if y.item_id == x.item_id]
            if match:
                assert abs(match[0].score - x.score) < 1e-3
                assert x.reason_kind == match[0].reason_kind
    assert same / 200 >= 0.95


def test_old_artifact_without_retrieval_arrays_still_serves_candidates() -> None:
    scorer, history = _scorer(seed=6)
    art = _artifact(scorer, history)
    art.retrieval = {}
    model = LoadedModel.build(art, "x", candidate_threshold=0)
    assert model.retriever is not None
    h = UserHistory(idx=np.array([1, 2, 3]), weights=np.ones(3, dtype=np.float32), user=-1)
    assert len(recommend(model, h, 10, None, exclude_seen=True)) == 10
