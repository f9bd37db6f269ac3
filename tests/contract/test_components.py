"""Scoring components: a batch of users scores each row exactly as that user alone, for every kind, on a small
(dense) and a large (sparse) catalog, and scoring leaves the caller's history arrays as they were."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_assets.contract.components import DENSE_LIMIT, KINDS, Component
from recsys_assets.contract.scoring import Scorer

N_USERS, DIM = 30, 8


def _component(kind: str, n: int, rng: np.random.Generator) -> Component:
    f32 = np.float32
    pop = rng.random(n).astype(f32)
    if kind == "popularity":
        return Component(kind, {"popularity": pop})
    if kind == "repeat":
        recency = sp.random(N_USERS, n, density=10 / n, format="csr", random_state=1, dtype=f32)
        return Component(kind, {"recency": recency, "repurchase_rate": rng.random(n).astype(f32), "popularity": pop})
    if kind == "item_item":
        sim = sp.random(n, n, density=20 / n, format="csr", random_state=2, dtype=f32)
        return Component(kind, {"similarity": sim}, {"binary": int(n % 2)})
    if kind == "content":
        return Component(kind, {"item_features": sp.random(n, 200, density=0.03, format="csr", random_state=3)})
    if kind == "embedding":
        users, items = rng.normal(size=(N_USERS, DIM)).astype(f32), rng.normal(size=(n, DIM)).astype(f32)
        return Component(kind, {"user_factors": users, "item_factors": items})
    layers = {"enc_w0": (2 * DIM, n), "enc_b0": (2 * DIM,), "dec_w0": (DIM, DIM), "dec_b0": (DIM,)}
    layers |= {"dec_w1": (n, DIM), "dec_b1": (n,)}
    arrays = {name: (0.1 * rng.normal(size=shape)).astype(f32) for name, shape in layers.items()}
    return Component(kind, arrays, {"n_enc": 1, "n_dec": 2, "latent": DIM})


@pytest.mark.parametrize("n", [DENSE_LIMIT // 10, DENSE_LIMIT + 501])
@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_scores_each_row_as_the_user_alone(kind: str, n: int) -> None:
    rng = np.random.default_rng(n)
    component = _component(kind, n, rng)
    history = sp.random(N_USERS, n, density=6 / n, format="csr", random_state=4, dtype=np.float32)
    history.data = np.ceil(3 * history.data)
    starts = history.indptr[:-1][np.diff(history.indptr) > 1]
    history.data[starts[::2]] = 0.0  # a stored zero weight beside others: no feature, no repeat
    users = np.where(np.arange(N_USERS) % 3 == 0, -1, np.arange(N_USERS))
    assert component.batched == (
        kind in ("popularity", "repeat") or (kind in ("item_item", "content") and n > DENSE_LIMIT)
    )
    before = (history.indptr.copy(), history.indices.copy(), history.data.copy())
    for user_idx in (users, None):
        batch = component.score_many(history, user_idx)
        assert batch.dtype == np.float32 and batch.shape == (N_USERS, n)
        for r in range(N_USERS):
            lo, hi = history.indptr[r], history.indptr[r + 1]
            user = -1 if user_idx is None else int(user_idx[r])
            # views of the matrix's own arrays, read-only, as the API passes a memory-mapped artifact's history
            idx, w = history.indices[lo:hi], history.data[lo:hi]
            idx.flags.writeable = w.flags.writeable = False
            one = component.score_one(idx[::-1], w[::-1], user)  # the order of a history does not matter
            np.testing.assert_array_equal(batch[r], component.score_one(idx, w, user))
            np.testing.assert_allclose(one, batch[r], rtol=1e-5, atol=1e-5)
            idx.flags.writeable = w.flags.writeable = True
    for got, want in zip((history.indptr, history.indices, history.data), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert (batch != 0).any()


def test_a_blend_of_every_kind_scores_a_batch_as_each_user_alone() -> None:
    n = DENSE_LIMIT + 501
    rng = np.random.default_rng(0)
    components = {kind: _component(kind, n, rng) for kind in KINDS}
    weights = {kind: 1.0 + i for i, kind in enumerate(KINDS)}
    scorer = Scorer(components, weights, {"0": {"popularity": 1.0}, "1-5": {"repeat": 0.5, "content": 1.0}})
    history = sp.random(N_USERS, n, density=6 / n, format="csr", random_state=5, dtype=np.float32)
    users = np.arange(N_USERS) - 5
    np.testing.assert_array_equal(scorer.score_many(history, users), scorer.score(history, user_idx=users))
    np.testing.assert_array_equal(scorer.score_many(history), scorer.score(history))


def test_repeat_the_stored_recency_and_then_the_last_weight_of_an_item_count() -> None:
    rate = np.full(4, 0.5, dtype=np.float32)
    recency = sp.csr_matrix(np.array([[0.0, 0.0, 2.0, 0.0]], dtype=np.float32))
    pop = np.array([3.0, 2.0, 1.0, 0.0], dtype=np.float32)
    component = Component("repeat", {"recency": recency, "repurchase_rate": rate, "popularity": pop})
    tail = pop / 4.0
    # item 1 listed twice: its last weight (0) counts; item 2's stored recency (2) overrides the history's 8
    got = component.score_one(np.array([1, 2, 1]), np.array([4.0, 8.0, 0.0], dtype=np.float32), 0)
    np.testing.assert_array_equal(got, np.array([tail[0], tail[1], 2.0, tail[3]], dtype=np.float32))
    unknown = component.score_one(np.array([1, 2, 1]), np.array([4.0, 8.0, 0.0], dtype=np.float32), -1)
    np.testing.assert_array_equal(unknown, np.array([tail[0], tail[1], 5.0, tail[3]], dtype=np.float32))


def test_an_unknown_user_with_nothing_liked_folds_in_to_no_preference() -> None:
    """Ratings of 0 are kept with weight 0: an embedding folds such a history in as no preference, finite
    scores, not the 0/0 of scaling by the largest weight."""
    rng = np.random.default_rng(0)
    component = _component("embedding", 50, rng)
    idx, w = np.array([3, 7], dtype=np.int32), np.zeros(2, dtype=np.float32)
    one = component.score_one(idx, w, -1)
    assert np.isfinite(one).all() and not one.any()
    history = sp.csr_matrix((np.array([0.0, 0.0, 2.0], np.float32), ([0, 0, 1], [3, 7, 5])), shape=(2, 50))
    assert history.nnz == 3  # the ratings of 0 are stored
    batch = component.score_many(history, None)
    assert np.isfinite(batch).all() and not batch[0].any() and batch[1].any()
