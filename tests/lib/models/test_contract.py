"""The model contract: every model the pipeline can train passes the same behavioural checks on one tiny
checkerboard (`checkerboard.py`), through the one `Recommender` interface and the pipeline's own calls.

Each model fits; ranks the obvious items first (its own half of the catalog, or training popularity for a
model that does not personalise); never returns an item the user has seen; handles users with no history,
in process and through the served artifact, where an unknown user is scored from their history alone; and
serialises to the serving artifact, which scores identically after reload through `contract.scoring.Scorer`,
as the API does. What a model cannot do is written in its `Case`, and checked: a model with no serving form
must produce no artifact, a model that abstains for a user it never saw must return nothing for them.

A new model joins by adding one line to `CASES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_assets.contract.artifact import ServingArtifact, dump_artifact, parse_artifact
from recsys_assets.contract.scoring import history_buckets, top_k
from recsys_assets.lib.models.base import ProtocolData, Recommender, recommend
from recsys_assets.lib.models.candidates import fit_candidate, native_model
from recsys_assets.lib.models.catalog import IMPLICIT, NATIVE
from recsys_assets.lib.models.fitting import Candidate, serving_artifact
from recsys_assets.lib.models.implicit_cf import implicit_model
from recsys_assets.lib.models.native import PopularityModel
from recsys_assets.lib.models.recbole_adapter import SUPPORTED_MODELS, RecBoleModelConfig
from recsys_assets.lib.models.recbole_recommender import RecBoleRecommender

from .checkerboard import COLD_USERS, TINY_SETTINGS, checkerboard, own_half

# What a model returns for a user with no history: nothing (it abstains), the most popular items first, or any
# items (it has nothing to say, so no order is promised).
Cold = Literal["abstains", "popular", "any"]


@dataclass(frozen=True)
class Case:
    """One model and what the contract expects of it."""

    make: Callable[[ProtocolData], Recommender]
    personalised: bool = True  # False: the same list for everyone, by training popularity
    serves: bool = True  # False: no serving form, so no artifact (NeuMF's MLP, NGCF, SASRec's sequence)
    cold: Cold = "any"  # a user with no history, in process
    cold_served: Cold = "any"  # an unknown user with no history, through the served artifact (the API)
    folds_in: bool = True  # served: an unknown user with a history gets items like that history's
    repeats: bool = False  # the user's own items first (seen allowed), then by popularity: with seen hidden, popular


def recbole(name: str) -> Callable[[ProtocolData], Recommender]:
    return lambda _build: RecBoleRecommender(RecBoleModelConfig(model=name, **TINY_SETTINGS[name]))


def implicit(name: str, **params: object) -> Callable[[ProtocolData], Recommender]:
    """An `implicit` model with the pipeline's defaults but `params`: the factorisations get 16 factors here, as
    RecBole's do in `TINY_SETTINGS` (64 factors for 26 items only reproduce the training matrix), and BPR the
    learning rate RecBole's BPR gets there (192 events x 100 epochs at the default 0.005 do not separate the halves)."""

    def make(_build: ProtocolData) -> Recommender:
        model = implicit_model(name)
        for key, value in params.items():
            setattr(model, key, value)
        return model

    return make


def native(name: str, collaborative: str | None = None) -> Callable[[ProtocolData], Recommender]:
    """A native model; a hybrid blends `collaborative`, fitted first the way the pipeline does."""

    def make(build: ProtocolData) -> Recommender:
        cf_model = None
        if collaborative:
            cf_model = implicit(collaborative, factors=16) if collaborative in IMPLICIT else recbole(collaborative)
        cf = fit_candidate(cf_model(build), build) if cf_model else None
        return native_model(name, cf)

    return make


# RecBole abstains for a user it never saw (in process); its served component scores them like anyone else.
CASES: dict[str, Case] = {
    "Pop": Case(recbole("Pop"), personalised=False, cold="abstains", cold_served="popular", folds_in=False),
    "ItemKNN": Case(recbole("ItemKNN"), cold="abstains"),
    "EASE": Case(recbole("EASE"), cold="abstains"),
    "BPR": Case(recbole("BPR"), cold="abstains"),
    "NeuMF": Case(recbole("NeuMF"), serves=False, cold="abstains"),
    "LightGCN": Case(recbole("LightGCN"), cold="abstains"),
    "NGCF": Case(recbole("NGCF"), serves=False, cold="abstains"),
    "MultiVAE": Case(recbole("MultiVAE"), cold="abstains"),
    "SASRec": Case(recbole("SASRec"), serves=False, cold="abstains"),
    "Popularity": Case(native("Popularity"), personalised=False, cold="popular", cold_served="popular", folds_in=False),
    "Content": Case(native("Content")),
    "BuyAgain": Case(
        native("BuyAgain"), personalised=False, repeats=True, cold="popular", cold_served="popular", folds_in=False
    ),
    "Hybrid": Case(native("Hybrid"), cold="popular", cold_served="popular"),
    "Hybrid+EASE": Case(native("Hybrid", collaborative="EASE"), cold="popular", cold_served="popular"),
    # implicit's models: a user with no history has an all-zero (ALS) or untrained random (BPR) vector, or no
    # neighbour evidence (item-item), so no order is promised for them; served, an unknown user is folded in.
    "ALS": Case(implicit("ALS", factors=16)),
    "ImplicitBPR": Case(implicit("ImplicitBPR", factors=16, learning_rate=0.05)),
    "ItemItemCosine": Case(implicit("ItemItemCosine")),
    "ItemItemBM25": Case(implicit("ItemItemBM25")),
    "Hybrid+ALS": Case(native("Hybrid", collaborative="ALS"), cold="popular", cold_served="popular"),
}


def test_every_model_the_pipeline_can_train_is_in_the_contract() -> None:
    names = {name.split("+")[0] for name in CASES}
    assert names == set(SUPPORTED_MODELS) | set(NATIVE) | set(IMPLICIT)
    assert set(TINY_SETTINGS) == set(SUPPORTED_MODELS)


@dataclass
class Fitted:
    case: Case
    build: ProtocolData
    cand: Candidate
    artifact: ServingArtifact | None

    @property
    def model(self) -> Recommender:
        return self.cand.model

    @property
    def warm(self) -> np.ndarray:
        """Users with training events."""
        return np.flatnonzero(np.diff(self.build.data.matrix.indptr) > 0)

    @property
    def cold(self) -> np.ndarray:
        return self.build.data.users.index[self.build.data.users["user_id"].isin(COLD_USERS)].to_numpy()

    @property
    def popularity(self) -> np.ndarray:
        """Distinct training users per item."""
        return np.diff(self.build.data.matrix.tocsc().indptr).astype(np.float64)


@pytest.fixture(scope="module", params=list(CASES))
def fitted(request: pytest.FixtureRequest) -> Fitted:
    """The model fitted as the pipeline fits a candidate, and its serving artifact (None without a serving form)."""
    case, build = CASES[request.param], checkerboard()
    cand = fit_candidate(case.make(build), build)
    return Fitted(case, build, cand, serving_artifact(cand, build.data, "checkerboard"))


def test_fits(fitted: Fitted) -> None:
    model, build = fitted.model, fitted.build
    assert isinstance(model, Recommender)
    assert fitted.cand.name == model.name
    assert fitted.cand.family == model.family
    assert model.family in ("recbole", "native")
    assert model.history.shape == (build.data.n_users, build.data.n_items)
    scores = model.score(np.arange(build.data.n_users))
    assert scores.shape == (build.data.n_users, build.data.n_items) and scores.dtype.kind == "f"
    assert not np.isnan(scores).any()
    trained_items = fitted.popularity > 0
    assert np.isfinite(scores[np.ix_(fitted.warm, trained_items)]).all()
    assert np.isfinite(fitted.cand.valid_ndcg10)


def test_optional_capabilities(fitted: Fitted) -> None:
    """Every model states `lists` and `search_seconds`; its own lists, where it has them, rank as its scores do."""
    model, users = fitted.model, np.arange(fitted.build.data.n_users)
    assert model.search_seconds >= 0.0
    assert (model.lists is not None) == isinstance(model, PopularityModel)  # one order for everyone
    if model.lists is not None:
        np.testing.assert_array_equal(model.lists(users, 5, model.history[users]), recommend(model, users, 5))


def test_ranks_the_obvious_items_first(fitted: Fitted) -> None:
    """Each user's own half of the catalog; by training popularity for a model that does not personalise."""
    users = fitted.warm
    top = recommend(fitted.model, users, 5)
    if fitted.case.repeats:
        scores, seen = fitted.model.score(users), fitted.build.data.matrix[users]
        for row, own, hidden in zip(scores, np.split(seen.indices, seen.indptr[1:-1]), top, strict=True):
            assert set(top_k(row, len(own)).tolist()) == set(own.tolist())  # the user's own items first
            popular = fitted.popularity.copy()
            popular[own] = -np.inf
            np.testing.assert_array_equal(hidden, top_k(popular, 5))  # with them hidden: the most popular
    elif fitted.case.personalised:
        own = own_half(fitted.build, users, top)
        assert own[:, 0].all(), f"{(~own[:, 0]).sum()} users get an item of the other half first"
        assert own.mean() >= 0.95
    else:
        scores = fitted.model.score(users)
        np.testing.assert_array_equal(scores, np.broadcast_to(scores[0], scores.shape))  # the same for everyone
        n_popular = int((fitted.popularity > 0).sum())
        np.testing.assert_array_equal(top_k(scores[0], n_popular), top_k(fitted.popularity, n_popular))


def test_never_returns_seen_items(fitted: Fitted) -> None:
    """Asked for more items than there are, a user gets every item they have not seen, once, then -1."""
    users, n_items = fitted.warm, fitted.build.data.n_items
    top = recommend(fitted.model, users, n_items + 5)
    seen = fitted.build.data.matrix[users]
    for row, user_seen in zip(top, np.split(seen.indices, seen.indptr[1:-1]), strict=True):
        items = row[row >= 0]
        assert not set(items) & set(user_seen)
        assert len(set(items)) == len(items) and (row[len(items) :] == -1).all()
        assert len(items) > 0


def _expect_cold(got: np.ndarray, expected: Cold, popularity: np.ndarray) -> None:
    if expected == "abstains":
        assert (got == -1).all(), f"expected no item, got {got}"
        return
    assert (got >= 0).all() and len(set(got.tolist())) == len(got)
    if expected == "popular":
        np.testing.assert_array_equal(got, top_k(popularity, len(got)))


def test_handles_users_with_no_history(fitted: Fitted) -> None:
    top = recommend(fitted.model, fitted.cold, 3)
    assert top.shape == (len(fitted.cold), 3)
    for row in top:
        _expect_cold(row, fitted.case.cold, fitted.popularity)


def test_serves_unknown_users_from_their_history(fitted: Fitted) -> None:
    """Through the served artifact, as the API scores a user it does not know (index -1)."""
    if not fitted.case.serves:
        assert fitted.artifact is None and fitted.model.scorer is None
        return
    scorer, data = fitted.artifact.scorer, fitted.build.data
    nothing = np.array([], dtype=np.int64)
    top = scorer.topk_one(nothing, nothing.astype(np.float32), 3, user=-1)
    _expect_cold(top, fitted.case.cold_served, fitted.popularity)

    # A visitor who touched three items of half 1.
    half_1 = np.flatnonzero(data.items["categories"].eq("Genre1").to_numpy() & (fitted.popularity > 0))[:3]
    top = scorer.topk_one(half_1, np.ones(3, dtype=np.float32), 5, user=-1, exclude=half_1)
    assert not set(top.tolist()) & set(half_1.tolist())
    if fitted.case.folds_in:
        in_half_1 = data.items["categories"].to_numpy()[top] == "Genre1"
        assert in_half_1[0] and in_half_1.mean() >= 0.8, f"served {data.items['item_id'].to_numpy()[top]}"
    else:
        popular = fitted.popularity.copy()
        popular[half_1] = -np.inf
        np.testing.assert_array_equal(top, top_k(popular, 5))


def test_serialises_to_the_serving_artifact_and_scores_identically_after_reload(fitted: Fitted) -> None:
    if not fitted.case.serves:
        assert fitted.artifact is None and fitted.model.scorer is None
        return
    art = fitted.artifact
    reloaded = parse_artifact(dump_artifact(art))
    assert reloaded.model_name == fitted.model.name and reloaded.checksum == art.checksum
    users = np.arange(len(art.user_ids))
    history = reloaded.history
    np.testing.assert_array_equal(reloaded.scorer.score(history, users), art.scorer.score(art.history, users))
    unknown = np.full(len(users), -1)
    np.testing.assert_array_equal(reloaded.scorer.score(history, unknown), art.scorer.score(history, unknown))

    # What the API serves a known user: the obvious items first, never one the user has seen.
    warm = fitted.warm
    served = reloaded.topk_for_users(warm, 5)
    assert not (sp.csr_matrix(history[warm]).multiply(_as_matrix(served, history.shape[1])).nnz)
    if fitted.case.personalised:
        assert own_half(fitted.build, warm, served)[:, 0].all()
    # ... and the model's own ranking (up to near-ties of floats: the artifact scores in NumPy, RecBole in torch).
    same = (served == recommend(fitted.model, warm, 5)).all(axis=1).mean()
    assert same >= 0.9, f"only {same:.0%} of the served top-5 lists are the model's own"


def _as_matrix(top: np.ndarray, n_items: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    keep = top.ravel() >= 0
    return sp.csr_matrix((np.ones(keep.sum()), (rows[keep], top.ravel()[keep])), shape=(top.shape[0], n_items))


def test_a_block_ranked_at_once_equals_each_row_ranked_alone() -> None:
    from recsys_assets.contract.scoring import top_k, top_k_rows

    rng = np.random.default_rng(7)
    for case in range(300):
        n, rows, k = int(rng.integers(1, 60)), int(rng.integers(1, 20)), int(rng.integers(1, 15))
        block = rng.integers(0, 6, (rows, n)).astype(np.float64)  # many ties, at the k-th place too
        block[rng.random((rows, n)) < 0.2] = -np.inf
        if case % 7 == 0:
            block[:] = -np.inf  # nothing recommendable: all padding
        want = np.stack([top_k(row, k) for row in block])
        np.testing.assert_array_equal(top_k_rows(block, k), want, err_msg=f"case {case}: n={n} k={k}")


def test_a_wide_block_ranked_from_a_threshold_equals_each_row_ranked_alone() -> None:
    from recsys_assets.contract.topk import top_k, top_k_wide

    rng = np.random.default_rng(11)
    for case in range(300):
        n, rows, k = int(rng.integers(1, 5_000)), int(rng.integers(1, 8)), int(rng.integers(1, 25))
        kind = case % 6
        if kind == 0:  # mostly zeros (item-item scores), ties at the k-th place
            block = np.where(rng.random((rows, n)) < 0.01, rng.integers(1, 4, (rows, n)), 0).astype(np.float32)
        elif kind == 1:  # few distinct values
            block = rng.integers(0, 6, (rows, n)).astype(np.float64)
        elif kind == 2:  # continuous
            block = rng.standard_normal((rows, n)).astype(np.float32)
        elif kind == 3:  # sorted by index (popularity-like), many items hidden
            block = np.tile(-np.arange(n, dtype=np.float32), (rows, 1))
        elif kind == 4:  # almost everything hidden: fewer finite scores than k
            block = np.full((rows, n), -np.inf)
            block[rng.random((rows, n)) < 0.001] = 1.0
        else:  # one +inf
            block = rng.standard_normal((rows, n))
            block[0, rng.integers(0, n)] = np.inf
        if kind in (0, 1, 3):
            block[rng.random((rows, n)) < 0.3] = -np.inf
        want = np.stack([top_k(row, k) for row in block])
        np.testing.assert_array_equal(top_k_wide(block, k), want, err_msg=f"case {case}: n={n} k={k} kind={kind}")


@pytest.mark.parametrize(
    "name", ["ItemItemCosine", "ItemItemBM25", "Content", "Popularity", "BuyAgain", "Hybrid", "weighted", "repeat"]
)
def test_batched_scores_equal_one_user_at_a_time_bit_for_bit(name: str) -> None:
    """Above `DENSE_LIMIT` items the neighbour models, Content and a Hybrid of them score a batch of users in
    sparse products (`Scorer.score_many`); they must equal the scorer's one-user path exactly (the evaluation's
    lists, ties included, come from them). `weighted`: an item-item component on event weights, not 0/1;
    `repeat`: a Hybrid blending BuyAgain too."""
    import pandas as pd

    from recsys_assets.contract.scoring import DENSE_LIMIT, Component, Scorer
    from recsys_assets.lib.models.base import TrainData
    from recsys_assets.lib.models.native import HybridModel

    rng = np.random.default_rng(5)
    n_users, n_items, n_events = 300, DENSE_LIMIT + 1_000, 6_000
    events = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users - 10, n_events).astype(str),  # the last 10 users have no history
            "item_id": (rng.zipf(1.3, n_events) % n_items).astype(str),
            "weight": rng.choice([1.0, 2.0, 3.0], n_events),
            "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n_events), "s"),
        }
    )
    words = np.array([f"w{i}" for i in range(400)])
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items).astype(str),
            "categories": [f"c{a}|c{a}-{a * b}" for a, b in rng.integers(0, 30, (n_items, 2))],
            "title": [" ".join(rng.choice(words, 3)) for _ in range(n_items)],
        }
    )
    users = pd.DataFrame({"user_id": np.arange(n_users).astype(str)})
    data = TrainData.build(events, items, users)
    if name in ("Hybrid", "weighted", "repeat"):
        sim = implicit_model("ItemItemBM25").fit(data).component
        if name == "weighted":
            sim = Component("item_item", dict(sim.arrays))
        model = HybridModel(collaborative=sim, repeat=name == "repeat").fit(data)  # equal weights; then buckets
        model.bucket_weights = {
            "0": {"popularity": 1.0},
            "1-5": {"content": 0.3, "popularity": 0.7},
            "6-20": {"collaborative": 0.5, "content": 0.25, "popularity": 0.25},
        }
        if name == "repeat":
            model.bucket_weights["20+"] = {"buy_again": 0.6, "collaborative": 0.4}
        model.scorer = Scorer(model.components, model.weights, model.bucket_weights)
    elif name == "BuyAgain":
        from recsys_assets.lib.models.buy_again import BuyAgainModel

        model = BuyAgainModel().fit(data)
    else:
        model = (native_model(name) if name in NATIVE else implicit_model(name)).fit(data)
    batch = np.r_[rng.permutation(n_users)[:120], n_users - 1]
    assert all(c.batched for c in model.scorer.components.values())  # the batched path, not row by row
    got = model.score(batch)
    want = model.scorer.score(model.history[batch], user_idx=batch)
    unknown = model.history[batch]  # the same histories, no user index (the API's unknown users)
    np.testing.assert_array_equal(model.scorer.score_many(unknown), model.scorer.score(unknown))
    if name in ("Hybrid", "weighted"):
        assert len(set(model.scorer.components)) == 3 and len(np.unique(history_buckets(model.history[batch]))) > 2
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert (got > 0).sum(axis=1).max() > 0


def test_standardise_rows_with_and_without_a_constant_one() -> None:
    from recsys_assets.contract.scoring import standardise

    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        block = rng.standard_normal((20, 500)).astype(dtype)
        with_constant = block.copy()
        with_constant[3] = 1.0
        for scores in (block, with_constant):
            got = standardise(scores)
            mean, std = scores.mean(axis=1, keepdims=True), scores.std(axis=1, keepdims=True)
            want = np.where(std > 1e-12, (scores - mean) / np.where(std > 1e-12, std, 1), 0).astype(dtype)
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, want)
