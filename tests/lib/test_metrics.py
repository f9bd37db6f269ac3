"""The shared top-K metrics: hand-computed cases, agreement with RecBole 1.2.1's metric classes, top-K helper."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recsys_assets.contract.scoring import topk_from_scores, truth_to_csr
from recsys_assets.lib.evaluation.metrics import (
    ACCURACY_METRICS,
    AVERAGE_POPULARITY,
    COVERAGE,
    HEAD_PERCENTAGE,
    RESULT_COLUMNS,
    evaluate_topk,
    exclusion_matrix,
    head_items,
    per_user_topk_metrics,
)

# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------

# 3 users, 10 items. User 0: positives {1, 2, 9}, hits at ranks 2 and 4. User 1: positive {4} at rank 1,
# then padding. User 2 has no positives: left out of every mean, coverage and popularity included.
HAND_TOPK = np.array(
    [
        [3, 1, 7, 2, 5],
        [4, -1, -1, -1, -1],
        [8, 9, 0, 6, 1],
    ]
)
HAND_TRUTH = [np.array([1, 2, 9]), np.array([4]), np.array([], dtype=int)]
HAND_POP = np.arange(10) * 10.0  # item i has popularity 10 i; item 0 never seen in training

L2, L3, L4, L5 = (math.log2(x) for x in (2, 3, 4, 5))
IDCG3 = 1 / L2 + 1 / L3 + 1 / L4  # user 0: min(3 positives, K) = 3 ideal slots
HAND_USER0 = {
    ("precision", 1): 0.0,
    ("precision", 2): 1 / 2,
    ("precision", 3): 1 / 3,
    ("precision", 5): 2 / 5,
    ("recall", 1): 0.0,
    ("recall", 2): 1 / 3,
    ("recall", 3): 1 / 3,
    ("recall", 5): 2 / 3,
    ("ndcg", 1): 0.0,
    ("ndcg", 2): (1 / L3) / (1 / L2 + 1 / L3),  # ideal DCG over min(3 positives, 2) slots
    ("ndcg", 3): (1 / L3) / IDCG3,
    ("ndcg", 5): (1 / L3 + 1 / L5) / IDCG3,
    ("map", 1): 0.0,
    ("map", 2): (1 / 2) / 2,  # divided by min(3 positives, 2), not by 3
    ("map", 3): (1 / 2) / 3,
    ("map", 5): (1 / 2 + 2 / 4) / 3,
    ("hit", 1): 0.0,
    ("hit", 2): 1.0,
    ("hit", 3): 1.0,
    ("hit", 5): 1.0,
    ("mrr", 1): 0.0,
    ("mrr", 2): 1 / 2,
    ("mrr", 3): 1 / 2,
    ("mrr", 5): 1 / 2,
}
HAND_USER1 = {
    ("precision", 1): 1.0,
    ("precision", 2): 1 / 2,
    ("precision", 3): 1 / 3,
    ("precision", 5): 1 / 5,  # padding slots are misses: Precision always divides by K
    **{(m, k): 1.0 for m in ("recall", "ndcg", "map", "hit", "mrr") for k in (1, 2, 3, 5)},
}


def _value(df: pd.DataFrame, metric: str, k: int) -> float:
    row = df[(df["metric"] == metric) & (df["k"] == k)]
    assert len(row) == 1, (metric, k)
    return float(row["value"].iloc[0])


@pytest.mark.parametrize("as_sparse", [False, True])
def test_hand_computed_accuracy(as_sparse: bool) -> None:
    truth = truth_to_csr(HAND_TRUTH, n_items=10) if as_sparse else HAND_TRUTH
    df = evaluate_topk(HAND_TOPK, truth, ks=(1, 2, 3, 5), n_items=10)
    assert tuple(df.columns) == RESULT_COLUMNS
    assert (df["n_users"] == 2).all()
    for (metric, k), v0 in HAND_USER0.items():
        expected = (v0 + HAND_USER1[(metric, k)]) / 2
        assert _value(df, metric, k) == pytest.approx(expected, abs=1e-12), (metric, k)
    per_user = per_user_topk_metrics(HAND_TOPK, truth, ks=(1, 2, 3, 5), n_items=10)
    assert per_user["user"].tolist() == [0, 1]
    assert per_user["n_pos"].tolist() == [3, 1]
    for (metric, k), v0 in HAND_USER0.items():
        assert per_user[f"{metric}@{k}"].tolist() == pytest.approx([v0, HAND_USER1[(metric, k)]], abs=1e-12)


def test_hand_computed_beyond_accuracy() -> None:
    df = evaluate_topk(HAND_TOPK, HAND_TRUTH, ks=(1, 3, 5), item_popularity=HAND_POP, head_fraction=0.4)
    # Coverage over the evaluated users only: @1 {3, 4}, @5 {3, 1, 7, 2, 5, 4}; user 2's items don't count.
    assert _value(df, COVERAGE, 1) == pytest.approx(2 / 10)
    assert _value(df, COVERAGE, 5) == pytest.approx(6 / 10)
    # Average popularity over each user's non-padding items: user 1 has only item 4 (40).
    assert _value(df, AVERAGE_POPULARITY, 1) == pytest.approx((30 + 40) / 2)
    assert _value(df, AVERAGE_POPULARITY, 5) == pytest.approx(((30 + 10 + 70 + 20 + 50) / 5 + 40) / 2)
    # Head: round(0.4 x 9 items with popularity > 0) = 4 items {6, 7, 8, 9}; user 0 has item 7 at rank 3.
    assert head_items(HAND_POP, 0.4).nonzero()[0].tolist() == [6, 7, 8, 9]
    assert _value(df, HEAD_PERCENTAGE, 1) == pytest.approx(0.0)
    assert _value(df, HEAD_PERCENTAGE, 3) == pytest.approx((1 / 3 + 0) / 2)
    assert _value(df, HEAD_PERCENTAGE, 5) == pytest.approx((1 / 5 + 0) / 2)


def test_user_slice_and_empty_slice() -> None:
    only_1 = evaluate_topk(HAND_TOPK, HAND_TRUTH, ks=(1, 5), n_items=10, users=[1, 2])
    assert (only_1["n_users"] == 1).all()
    assert _value(only_1, "precision", 5) == pytest.approx(0.2)
    nobody = evaluate_topk(HAND_TOPK, HAND_TRUTH, ks=(1, 5), n_items=10, users=np.array([False, False, True]))
    assert (nobody["n_users"] == 0).all()
    assert nobody["value"].isna().all()


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="twice"):
        evaluate_topk(np.array([[1, 1, 2]]), [np.array([1])], ks=(3,), n_items=5)
    with pytest.raises(ValueError, match="largest K"):
        evaluate_topk(np.array([[1, 2]]), [np.array([1])], ks=(3,), n_items=5)
    with pytest.raises(ValueError, match="indices"):
        evaluate_topk(np.array([[1, 7, 2]]), [np.array([1])], ks=(3,), n_items=5)


# ---------------------------------------------------------------------------------------------
# Cross-check against RecBole's own metric classes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recbole_metrics():
    """RecBole's metric module, importable and runnable on numpy 2.

    RecBole 1.2.1 uses `np.float` (removed in numpy 1.24) in MRR, MAP and NDCG. The project's
    `patch_recbole()` restores such aliases; if that module is not there yet the aliases are set
    here, for this module only.
    """
    with pytest.MonkeyPatch.context() as mp:
        try:
            from recsys_assets.lib.models.recbole_compat import patch_recbole
        except ImportError:
            patch_recbole = None
        if patch_recbole is not None:
            patch_recbole()
        for name, alias in {"float": float, "float_": np.float64, "int": int, "bool": bool}.items():
            if not hasattr(np, name):
                mp.setattr(np, name, alias, raising=False)
        import recbole.evaluator.metrics as rb

        yield rb


def _random_case(seed: int = 7, n_users: int = 200, n_items: int = 300):
    """Random scores, training items, held-out positives (disjoint from training) and popularity."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n_users, n_items)).astype(np.float32)
    train = sp.random(n_users, n_items, density=0.05, format="csr", random_state=seed)
    train.data[:] = 1
    # Held-out positives disjoint from training; about 1 user in 10 has none.
    test = sp.random(n_users, n_items, density=0.08, format="csr", random_state=seed + 1)
    test.data[:] = 1
    test = test - test.multiply(train)
    # Thin each user's positives at a different rate, so #positives spans both sides of every K.
    test = sp.csr_matrix(test)
    rows = np.repeat(np.arange(n_users), np.diff(test.indptr))
    keep_user = np.ones(n_users)
    keep_user[rng.choice(n_users, size=n_users // 10, replace=False)] = 0  # users without positives
    test.data = (rng.random(test.nnz) < rng.uniform(0.05, 1.0, size=n_users)[rows]) * keep_user[rows]
    test.eliminate_zeros()
    popularity = rng.poisson(3.0, size=n_items).astype(np.float64)
    return scores, sp.csr_matrix(train), sp.csr_matrix(test), popularity


def test_matches_recbole_metric_classes(recbole_metrics) -> None:
    from recbole.evaluator.collector import DataStruct

    rb = recbole_metrics
    ks = [5, 10, 20]
    scores, train, test, popularity = _random_case()
    n_users, n_items = scores.shape
    has_pos = np.diff(test.indptr) > 0
    assert 0 < has_pos.sum() < n_users

    # RecBole's side, as its Collector builds it in full-sort mode: history masked to -inf,
    # torch.topk, then the positive-index matrix with the #positives column appended.
    s = torch.from_numpy(scores.copy())
    s[torch.from_numpy(train.toarray() > 0)] = -np.inf
    s = s[torch.from_numpy(has_pos)]
    _, topk_idx = torch.topk(s, max(ks), dim=-1)
    pos_matrix = torch.from_numpy(test.toarray()[has_pos] > 0).to(torch.int)
    pos_len = pos_matrix.sum(dim=1, keepdim=True)
    pos_idx = torch.gather(pos_matrix, dim=1, index=topk_idx)
    data = DataStruct()
    data.set("rec.topk", torch.cat((pos_idx, pos_len), dim=1))
    data.set("rec.items", topk_idx)
    data.set("data.num_items", n_items)  # RecBole passes n_items + 1 ([PAD]); see the module docstring
    data.set("data.count_items", Counter({i: int(c) for i, c in enumerate(popularity) if c > 0}))
    config = {"topk": ks, "metric_decimal_place": 10}
    expected: dict[str, float] = {}
    for cls in (rb.Precision, rb.Recall, rb.NDCG, rb.MAP, rb.Hit, rb.MRR, rb.ItemCoverage, rb.AveragePopularity):
        expected.update(cls(config).calculate_metric(data))

    # Ours: the shared top-K helper on all users, the shared evaluation (which drops users without positives).
    topk = topk_from_scores(scores, max(ks), exclude=exclusion_matrix(train, test), batch_size=37)
    np.testing.assert_array_equal(topk[has_pos], topk_idx.numpy())
    df = evaluate_topk(topk, test, ks=ks, item_popularity=popularity)
    assert (df["n_users"] == has_pos.sum()).all()
    names = [*ACCURACY_METRICS, COVERAGE, AVERAGE_POPULARITY]
    assert len(expected) == len(names) * len(ks)
    for name in names:
        for k in ks:
            assert _value(df, name, k) == pytest.approx(expected[f"{name}@{k}"], abs=1e-4), (name, k)

    # Same numbers from RecBole's per-user curves (not just the means), for the accuracy metrics.
    per_user = per_user_topk_metrics(topk, test, ks=ks)
    pos_bool, lens = pos_idx.to(torch.bool).numpy(), pos_len.squeeze(-1).numpy()
    for name, cls in zip(ACCURACY_METRICS, (rb.Precision, rb.Recall, rb.NDCG, rb.MAP, rb.Hit, rb.MRR), strict=True):
        metric = cls(config)
        curve = (
            metric.metric_info(pos_bool) if name in ("precision", "hit", "mrr") else metric.metric_info(pos_bool, lens)
        )
        for k in ks:
            np.testing.assert_allclose(per_user[f"{name}@{k}"].to_numpy(), curve[:, k - 1], atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Top-K helper
# ---------------------------------------------------------------------------------------------


def _brute_topk(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None) -> np.ndarray:
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for u in range(scores.shape[0]):
        s = scores[u].astype(np.float64)
        s[np.isnan(s)] = -np.inf
        if exclude is not None:
            s[exclude[u].indices] = -np.inf
        order = [i for i in np.argsort(-s, kind="stable") if s[i] > -np.inf][:k]
        out[u, : len(order)] = order
    return out


def test_topk_from_scores_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items, k = 53, 40, 10
    scores = rng.normal(size=(n_users, n_items))
    scores[5, :3] = np.nan
    exclude = sp.random(n_users, n_items, density=0.2, format="lil", random_state=3)
    exclude[7, :35] = 1  # only 5 items left for user 7: the row ends with padding
    exclude = sp.csr_matrix(exclude)
    got = topk_from_scores(scores, k, exclude=exclude, batch_size=7)
    np.testing.assert_array_equal(got, _brute_topk(scores, k, exclude))
    assert (got[7, 5:] == -1).all() and (got[7, :5] >= 35).all()
    for u in range(n_users):
        assert not set(got[u][got[u] >= 0]) & set(exclude[u].indices)
    # No exclusion, k larger than the catalog, and a sparse score matrix (absent entries score 0).
    np.testing.assert_array_equal(topk_from_scores(scores, 50), _brute_topk(scores, 50, None))
    # Many implicit zeros tie at the k-th place, where the pick is arbitrary: compare the scores taken.
    sparse_scores = sp.random(n_users, n_items, density=0.3, format="csr", random_state=4)
    dense = sparse_scores.toarray()
    got = topk_from_scores(sparse_scores, k, exclude=exclude, batch_size=16)
    want = _brute_topk(dense, k, exclude)
    np.testing.assert_array_equal(got == -1, want == -1)
    np.testing.assert_array_equal(
        np.take_along_axis(dense, np.maximum(got, 0), axis=1), np.take_along_axis(dense, np.maximum(want, 0), axis=1)
    )
    for u in range(n_users):
        assert not set(got[u][got[u] >= 0]) & set(exclude[u].indices)


def test_exclusion_matrix_keeps_heldout_positives_rankable() -> None:
    seen = sp.csr_matrix(np.array([[1, 1, 0, 2], [0, 1, 1, 0]]))
    truth = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 1]]))
    assert exclusion_matrix(seen).toarray().tolist() == [[1, 1, 0, 1], [0, 1, 1, 0]]
    assert exclusion_matrix(seen, truth).toarray().tolist() == [[1, 0, 0, 1], [0, 1, 1, 0]]
