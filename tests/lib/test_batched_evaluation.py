"""Evaluation in batches of users on MovieLens-100k: the same table as ranking the full score matrix,
the evaluated user sample, the confidence intervals, and the validation NDCG@10."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_assets.contract.scoring import topk_from_scores
from recsys_assets.contract.settings import get_settings
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.evaluation.batched import (
    EvaluationConfig,
    batch_size,
    mean_ci,
    ranked_lists,
    ranked_lists_by,
    sample_users,
)
from recsys_assets.lib.evaluation.metrics import evaluate_topk
from recsys_assets.lib.ingest import cleaning, readers
from recsys_assets.lib.models.candidates import native_candidate
from recsys_assets.lib.models.fitting import evaluate_model, evaluate_scores, evaluate_settings, prepare, valid_ndcg
from recsys_assets.lib.models.native import HybridModel, PopularityModel

# a budget so small that every batch holds a handful of users (1,682 items x 4 bytes ~ 6.6 kB per user)
TINY = EvaluationConfig(batch_memory_mb=1, ci_level=0.95)


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory):
    s = get_settings(storage_uri=str(tmp_path_factory.mktemp("batched")))
    raw, items, users = readers.read_movielens()
    inter = cleaning.clean_events(raw, s.cleaning()).interactions
    items, users = cleaning.build_items(inter, items), cleaning.build_users(inter, users)
    return prepare(inter, items, users, S.TEMPORAL)


@pytest.fixture(scope="module")
def content(temporal):
    return native_candidate("Content", temporal)


def _without_ci(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["ci_low", "ci_high"], errors="ignore")


@pytest.mark.parametrize("name", ["Popularity", "Content"])
def test_batched_evaluation_equals_the_full_matrix(temporal, content, name: str) -> None:
    cand = content if name == "Content" else native_candidate("Popularity", temporal)
    full = evaluate_scores(cand.scores(np.arange(temporal.data.n_users)), temporal, cand.name)
    calls: list[int] = []

    def score(users: np.ndarray) -> np.ndarray:
        calls.append(len(users))
        return cand.scores(users)

    batched = evaluate_model(score, temporal, cand.name, EvaluationConfig(batch_memory_mb=1))
    assert len(calls) > 1 and max(calls) <= batch_size(temporal.data.n_items, 1)
    pd.testing.assert_frame_equal(_without_ci(batched), full, check_exact=True)
    assert set(full["slice"]) >= {"all", S.NEW_ITEM_SLICE}


def test_ranked_lists_equal_one_ranking_of_every_user(temporal, content) -> None:
    users = np.arange(temporal.data.n_users)
    exclude = temporal.data.matrix
    whole = topk_from_scores(content.scores(users), 20, exclude=exclude)
    np.testing.assert_array_equal(ranked_lists(content.scores, users, 20, temporal.data.n_items, exclude, 1), whole)
    with pytest.raises(ValueError, match="exclude has shape"):
        ranked_lists(content.scores, users[:5], 20, temporal.data.n_items, exclude, 1)


def test_rankings_of_one_scoring_pass_equal_their_own_rankings(temporal, content) -> None:
    users = np.arange(temporal.data.n_users)
    n_items = temporal.data.n_items
    seen = temporal.data.matrix
    # one ranking takes every user and hides what they have seen; the other takes the odd users, hides nothing
    odd = users % 2 == 1
    calls: list[int] = []

    def score(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return content.scores(rows)

    out = ranked_lists_by(score, users, 20, n_items, {"seen": (np.ones(len(users), bool), seen), "odd": (odd, None)}, 1)
    assert sum(calls) == len(users)  # each user scored once
    np.testing.assert_array_equal(out["seen"], ranked_lists(content.scores, users, 20, n_items, seen, 1))
    np.testing.assert_array_equal(out["odd"][odd], ranked_lists(content.scores, users[odd], 20, n_items, None, 1))
    assert (out["odd"][~odd] == -1).all()
    # a batch no ranking takes is not scored
    calls.clear()
    ranked_lists_by(score, users, 20, n_items, {"few": (users < 3, None)}, 1)
    assert sum(calls) <= batch_size(n_items, 1)
    with pytest.raises(ValueError, match="'few': its mask has shape"):
        ranked_lists_by(score, users, 20, n_items, {"few": (odd[:5], None)}, 1)


def test_valid_ndcg_in_batches_equals_the_dense_one(temporal, content) -> None:
    users = np.flatnonzero(np.diff(temporal.valid_truth.indptr) > 0)
    topk = topk_from_scores(content.scores(users), 10, exclude=temporal.data.matrix[users])
    res = evaluate_topk(topk, temporal.valid_truth[users], (10,))
    dense = float(res.loc[res["metric"] == "ndcg", "value"].iloc[0])
    assert valid_ndcg(content.model.score, temporal, TINY) == dense
    assert content.valid_ndcg10 == dense


def test_a_user_sample_is_fixed_and_has_confidence_intervals(temporal) -> None:
    pop = PopularityModel().fit(temporal)
    everyone = evaluate_model(pop.score, temporal, "Popularity", TINY)
    sampled = evaluate_model(pop.score, temporal, "Popularity", EvaluationConfig(users=60, seed=7))
    again = evaluate_model(pop.score, temporal, "Popularity", EvaluationConfig(users=60, seed=7))
    pd.testing.assert_frame_equal(sampled, again)
    top = sampled[(sampled["slice"] == "all") & (sampled["metric"] == "ndcg") & (sampled["k"] == 10)].iloc[0]
    full = everyone[(everyone["slice"] == "all") & (everyone["metric"] == "ndcg") & (everyone["k"] == 10)].iloc[0]
    assert top["n_users"] == 60 < full["n_users"]
    # the sample's interval is wider than the whole population's, and both hold their own mean
    assert top["ci_low"] < top["value"] < top["ci_high"]
    assert full["ci_low"] < full["value"] < full["ci_high"]
    assert top["ci_high"] - top["ci_low"] > full["ci_high"] - full["ci_low"]
    coverage = everyone[everyone["metric"] == "itemcoverage"]
    assert coverage["ci_low"].isna().all()


def test_sample_users_and_mean_ci() -> None:
    users = np.arange(10, 1000, 3)
    np.testing.assert_array_equal(sample_users(users, 1000, 1), users)
    a, b = sample_users(users, 50, 1), sample_users(users, 50, 1)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 50 and np.isin(a, users).all() and (np.diff(a) > 0).all()
    low, high = mean_ci(np.array([0.0, 1.0] * 50), 0.95)
    assert low == pytest.approx(0.5 - 1.959964 * np.std([0.0, 1.0] * 50, ddof=1) / 10, rel=1e-5)
    assert high == pytest.approx(1 - low)
    assert np.isnan(mean_ci(np.array([0.3]))[0])


def test_the_bounded_hybrid_search_is_todays_search_on_ml100k(temporal) -> None:
    """MovieLens-100k is inside every bound of the blend search: same users, same grid, same choices."""
    bounded = HybridModel().fit(temporal)
    unbounded = HybridModel(tune_users=10**9, tune_cells=10**15, max_trials=10**9).fit(temporal)
    assert bounded.params() == unbounded.params()
    pd.testing.assert_frame_equal(bounded.tuning, unbounded.tuning)


def test_the_report_shows_the_confidence_interval(temporal) -> None:
    from recsys_assets.lib.reports.evaluation_report import render_evaluation_report

    res = evaluate_model(PopularityModel().fit(temporal).score, temporal, "Popularity")
    row = res[(res["slice"] == "all") & (res["metric"] == "ndcg") & (res["k"] == 10)].iloc[0]
    page = render_evaluation_report(res)
    assert "ndcg_ci" in page and f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]" in page


def test_popularity_evaluated_from_its_own_lists_equals_its_scores_ranked(temporal) -> None:
    """Popularity ranks everyone from one order (`lists_fn`): the same lists, metrics and validation NDCG@10 as
    its dense scores ranked, ties among equally popular items included (ml-100k has many)."""
    cand = native_candidate("Popularity", temporal)
    assert cand.lists_fn is not None
    pop = cand.model.component.arrays["popularity"]
    assert len(np.unique(pop)) < len(pop)  # ties
    conf = EvaluationConfig(users=100)  # a sample, as at scale
    for evaluation in (conf, EvaluationConfig()):
        scored = evaluate_settings(cand.scores, temporal, cand.name, evaluation)
        listed = evaluate_settings(cand.scores, temporal, cand.name, evaluation, lists_fn=cand.lists_fn)
        pd.testing.assert_frame_equal(listed, scored, check_exact=True)
        assert valid_ndcg(cand.scores, temporal, evaluation, cand.lists_fn) == valid_ndcg(
            cand.scores, temporal, evaluation
        )
    assert cand.valid_ndcg10 == valid_ndcg(cand.scores, temporal)
