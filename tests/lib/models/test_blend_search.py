"""The Hybrid's blend search over each user's candidates (large catalogs): with every item a candidate it is
the whole-catalog search exactly; with fewer, a blend's top-k is ranked among the union of each component's
best items, seen items left out, each item once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys_assets.contract.scoring import Component, standardise, topk_from_scores
from recsys_assets.lib.models.blend_search import _SparseRows as SparseRows
from recsys_assets.lib.models.blend_search import blend_candidates
from recsys_assets.lib.models.native import HybridModel
from tests.lib.models.checkerboard import checkerboard
from tests.lib.models.test_native_models import item_item_component


def _components(n_users: int, n_items: int, seed: int = 0) -> dict[str, Component]:
    rng = np.random.default_rng(seed)
    return {
        "a": Component(
            "embedding",
            {
                "user_factors": rng.normal(size=(n_users, 4)).astype(np.float32),
                "item_factors": rng.normal(size=(n_items, 4)).astype(np.float32),
            },
        ),
        "popularity": Component("popularity", {"popularity": rng.random(n_items).astype(np.float32)}),
    }


def test_candidates_hold_each_components_best_items_once_and_never_a_seen_one() -> None:
    n_users, n_items = 40, 500
    comps = _components(n_users, n_items)
    rng = np.random.default_rng(1)
    history = sp.random(n_users, n_items, density=0.02, format="csr", random_state=rng, dtype=np.float32)
    users = np.arange(n_users)
    cands = blend_candidates(comps, ["a", "popularity"], history, users, exclude_seen=True, per_part=30)
    seen = history.toarray() != 0
    for u in range(n_users):
        kept = cands.items[u][cands.keep[u]]
        assert len(set(kept)) == len(kept) and not seen[u, kept].any()
        for name in ("a", "popularity"):
            full = standardise(comps[name].raw_scores(history[u], users[u : u + 1]))[0]
            full[seen[u]] = -np.inf
            assert set(np.argsort(-full, kind="stable")[:30]) <= set(kept)
            # the standardised score of the whole catalog, at each candidate
            cols = cands.items[u]
            np.testing.assert_allclose(
                cands.parts[name][u],
                standardise(comps[name].raw_scores(history[u], users[u : u + 1]))[0][cols],
                rtol=1e-5,
                atol=1e-5,
            )


def test_with_every_item_a_candidate_the_top_k_is_the_whole_catalogs() -> None:
    n_users, n_items = 30, 80
    comps = _components(n_users, n_items, seed=2)
    history = sp.random(n_users, n_items, density=0.05, format="csr", random_state=3, dtype=np.float32)
    users = np.arange(n_users)
    cands = blend_candidates(comps, list(comps), history, users, exclude_seen=True, per_part=n_items)
    weights = {"a": 0.7, "popularity": 0.3}
    total = sum(w * standardise(comps[n].raw_scores(history, users)) for n, w in weights.items())
    exact = topk_from_scores(total, 10, exclude=history)
    np.testing.assert_array_equal(cands.topk(weights, np.ones(n_users, dtype=bool), 10), exact)


def test_the_hybrid_chooses_the_same_blend_through_candidates_when_they_cover_the_catalog() -> None:
    build = checkerboard()  # 26 items: the default 200 candidates per component are every item
    cf = item_item_component(build.data)
    exact = HybridModel(collaborative=cf, collaborative_name="cooc").fit(build)
    through = HybridModel(collaborative=cf, collaborative_name="cooc", candidates_above=0).fit(build)
    assert through.params() == exact.params()
    pd.testing.assert_frame_equal(through.tuning, exact.tuning, check_exact=False, atol=1e-6)


def test_popularity_lists_equal_the_dense_ranking_with_ties_and_seen_items() -> None:
    from recsys_assets.lib.evaluation.batched import ranked_lists
    from recsys_assets.lib.models.native import popularity_lists

    rng = np.random.default_rng(3)
    n_users, n_items, k = 40, 30, 10
    pop = rng.integers(0, 5, n_items).astype(np.float32)  # many ties
    seen = sp.random(n_users, n_items, density=0.3, format="csr", random_state=4)
    seen[0] = 1.0  # a user who had every item: an all-padding list
    seen = sp.csr_matrix(seen)
    comp = Component("popularity", {"popularity": pop})
    users = np.arange(n_users)

    def dense(rows: np.ndarray) -> np.ndarray:
        return comp.raw_scores(seen[rows], rows)

    np.testing.assert_array_equal(popularity_lists(pop, seen, k, n_users), ranked_lists(dense, users, k, n_items, seen))
    np.testing.assert_array_equal(popularity_lists(pop, None, k, n_users), ranked_lists(dense, users, k, n_items))
    assert (popularity_lists(pop, seen, k, n_users)[0] == -1).all()


def test_the_tuning_sample_shrinks_with_the_catalog_so_the_search_cost_is_bounded() -> None:
    def valid(n_items: int, n_users: int = 6_000) -> sp.csr_matrix:
        rows = np.arange(n_users)
        return sp.csr_matrix((np.ones(n_users), (rows, rows % n_items)), shape=(n_users, n_items))

    hybrid = HybridModel()
    # exact path: users x items per component up to tune_cells, at most tune_users; candidates: up to
    # candidate_users and candidate_cells
    assert len(hybrid._tuning_users(valid(1_000))) == hybrid.tune_users == 5_000
    assert len(hybrid._tuning_users(valid(10_000))) == hybrid.tune_cells // 10_000 == 1_000
    assert len(hybrid._tuning_users(valid(100_000))) == hybrid.candidate_users == 2_500
    assert len(hybrid._tuning_users(valid(1_000_000))) == hybrid.candidate_cells // 1_000_000 == 2_000


def _dense_candidates(comps: dict[str, Component], names: list[str], history: sp.csr_matrix, per_part: int):
    """The candidates as every component's dense, standardised rows give them (seen items left out)."""
    users = np.arange(history.shape[0])
    std = {n: standardise(comps[n].raw_scores(history, users)) for n in names}
    seen = history.toarray() != 0
    cand = np.sort(
        np.concatenate([np.argsort(-np.where(seen, -np.inf, std[n]), axis=1)[:, :per_part] for n in names], axis=1),
        axis=1,
    )
    keep = np.ones(cand.shape, dtype=bool)
    keep[:, 1:] = cand[:, 1:] != cand[:, :-1]
    keep &= ~np.take_along_axis(seen, cand, axis=1)
    return cand, keep, {n: np.take_along_axis(std[n], cand, axis=1).astype(np.float32) for n in names}


def test_popularity_proposes_from_one_order_what_its_dense_rows_would() -> None:
    """A popularity component's candidates come from one global order (no users x items block): the same
    items, scores and kept columns as its standardised dense rows, seen items skipped (one user has seen
    its whole head)."""
    n_users, n_items, per_part = 50, 3_000, 40
    comps = _components(n_users, n_items, seed=3)
    rng = np.random.default_rng(4)
    history = sp.random(n_users, n_items, density=0.01, format="csr", random_state=rng, dtype=np.float32)
    history = sp.lil_matrix(history)
    history[0, np.argsort(-comps["popularity"].arrays["popularity"])[: per_part + 5]] = 1.0  # the head seen
    history = sp.csr_matrix(history)
    got = blend_candidates(
        comps, ["a", "popularity"], history, np.arange(n_users), exclude_seen=True, per_part=per_part
    )
    items, keep, parts = _dense_candidates(comps, ["a", "popularity"], history, per_part)
    np.testing.assert_array_equal(got.items, items)
    np.testing.assert_array_equal(got.keep, keep)
    for n in parts:
        np.testing.assert_array_equal(got.parts[n], parts[n])


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_sparse_components_propose_what_their_dense_standardised_rows_would(
    share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item-item and content scores are kept sparse (each row's mean and spread from its stored scores): the
    same candidates and kept columns as ranking their dense standardised rows (ties by item index, seen items
    last), and the same scores up to rounding; with negative similarities, users with no history (a row with no
    spread) and a user who has seen most of the catalog. `share` 1: every component kept sparse; 0: every
    one filled in (too many stored scores), the dense path."""
    import recsys_assets.lib.models.blend_search as blend_search
    from recsys_assets.contract.topk import top_k

    monkeypatch.setattr(blend_search, "SPARSE_SHARE", share)
    made: list[int] = []
    monkeypatch.setattr(blend_search, "_SparseRows", lambda raw: made.append(1) or SparseRows(raw))

    rng = np.random.default_rng(8)
    n_users, n_items, per_part = 60, 400, 25
    history = sp.random(n_users, n_items, density=0.03, format="csr", random_state=rng, dtype=np.float32)
    history.data[:] = rng.integers(1, 4, history.nnz)
    history = sp.lil_matrix(history)
    history[0, :] = 0
    history[1, : n_items - 10] = 1.0  # seen nearly everything: the row is filled up with seen items
    history = sp.csr_matrix(history)
    history.eliminate_zeros()
    sim = sp.random(n_items, n_items, density=0.02, format="csr", random_state=rng, dtype=np.float32)
    sim.data = np.round(sim.data * 4) / 4 - 0.25  # ties, and negative similarities
    sim.eliminate_zeros()
    feats = sp.random(n_items, 30, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    comps = {
        "binary": Component("item_item", {"similarity": sim}, {"binary": 1}),
        "weighted": Component("item_item", {"similarity": sim}),
        "content": Component("content", {"item_features": feats}),
        "popularity": Component("popularity", {"popularity": rng.integers(0, 9, n_items).astype(np.float32)}),
    }
    users = np.arange(n_users)
    for exclude_seen in (True, False):
        got = blend_candidates(comps, list(comps), history, users, exclude_seen=exclude_seen, per_part=per_part)
        seen = history.toarray() != 0
        std = {n: standardise(comps[n].raw_scores(history, users)) for n in comps}
        proposals = []
        for n in comps:
            rows = np.where(seen, -np.inf, std[n]) if exclude_seen else std[n]
            best = np.stack([top_k(row, per_part) for row in rows])
            for r in np.flatnonzero((best < 0).any(axis=1)):
                best[r, best[r] < 0] = np.flatnonzero(seen[r])[: (best[r] < 0).sum()]
            proposals.append(best)
        items = np.sort(np.concatenate(proposals, axis=1), axis=1)
        keep = np.ones(items.shape, dtype=bool)
        keep[:, 1:] = items[:, 1:] != items[:, :-1]
        if exclude_seen:
            keep &= ~np.take_along_axis(seen, items, axis=1)
        np.testing.assert_array_equal(got.items, items)
        np.testing.assert_array_equal(got.keep, keep)
        for n in comps:
            want = np.take_along_axis(std[n], items, axis=1).astype(np.float32)
            np.testing.assert_allclose(got.parts[n], want, rtol=1e-6, atol=1e-6)
    assert len(made) == (6 if share else 0)  # three components, one batch, both settings
