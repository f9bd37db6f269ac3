"""Collaborative models that scale to a shop's catalog, trained with the `implicit` library on CPU
(multi-threaded, sparse throughout): ALS and BPR matrix factorisation, and item-item nearest
neighbours (cosine or BM25) keeping K neighbours per item.

Each one exports the serving component the API scores with (`contract.scoring`): user and item
factors (`embedding`) for ALS and BPR, the sparse K-neighbour item x item matrix (`item_item`) for
the neighbour models. Their memory grows with (users + items) x factors or items x K, never with
items squared, which is what lets them train at 100k-1M items where EASE cannot.

ALS: Hu, Koren, Volinsky, "Collaborative Filtering for Implicit Feedback Datasets" (ICDM 2008), with
the conjugate-gradient solver of Takács, Pilászy, Tikk, "Applications of the conjugate gradient method
for implicit feedback collaborative filtering" (RecSys 2011).
BPR: Rendle, Freudenthaler, Gantner, Schmidt-Thieme, "BPR: Bayesian Personalized Ranking from Implicit
Feedback" (UAI 2009).
Item-item: Sarwar, Karypis, Konstan, Riedl, "Item-based collaborative filtering recommendation
algorithms" (WWW 2001); BM25 weighting: Robertson, Zaragoza, "The Probabilistic Relevance Framework:
BM25 and Beyond" (2009).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys_assets.contract.scoring import Component, Scorer
from recsys_assets.lib.models.base import ProtocolData, TrainData
from recsys_assets.lib.models.native import ComponentModel

logger = logging.getLogger(__name__)

ALS, BPR, COSINE, BM25 = "ALS", "ImplicitBPR", "ItemItemCosine", "ItemItemBM25"
MODELS = (ALS, BPR, COSINE, BM25)


def _train_part(data: TrainData | ProtocolData) -> TrainData:
    return data.data if isinstance(data, ProtocolData) else data


def _threads(threads: int) -> int:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads} (implicit's 0 would take every core)")
    return threads


@dataclass
class ALSModel(ComponentModel):
    """Implicit ALS: confidence 1 + alpha x (summed event weight), factors solved by conjugate gradient.

    Defaults chosen on ml-100k's validation parts (docs/benchmarks.md, "Models that scale"): few factors
    with strong regularisation beat 64-128 lightly regularised ones on both protocols; 20 did better
    than 5 on ml-100k (about 100 events per user) but starves users with a handful of events.
    """

    factors: int = 32
    regularization: float = 5.0
    alpha: float = 1.0
    iterations: int = 15
    threads: int = 1
    seed: int = 2020
    name: str = ALS

    def fit(self, data: TrainData | ProtocolData) -> ALSModel:
        from implicit.cpu.als import AlternatingLeastSquares

        data = _train_part(data)
        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            num_threads=_threads(self.threads),
            random_state=self.seed,
        )
        # implicit's threads solve users (items) side by side; a BLAS pool inside each would contend with them
        with threadpool_limits(1, "blas"):
            model.fit(sp.csr_matrix(data.matrix, dtype=np.float32), show_progress=False)
        self.component = _embedding(model.user_factors, model.item_factors, self.regularization)
        self.scorer = Scorer({"collaborative": self.component}, {"collaborative": 1.0})
        self.history = data.matrix
        return self

    def params(self) -> dict[str, object]:
        keys = ("factors", "regularization", "alpha", "iterations", "threads")
        return {k: getattr(self, k) for k in keys}


@dataclass
class ImplicitBPRModel(ComponentModel):
    """BPR by multi-threaded SGD on the 0/1 matrix; the item bias is the factors' last column (a user with no
    event keeps a bias-only vector, so they get the items BPR learnt to rank high for everyone).

    Defaults chosen on ml-100k's validation parts: a small learning rate and weak regularisation."""

    factors: int = 64
    learning_rate: float = 0.005
    regularization: float = 0.001
    iterations: int = 100
    threads: int = 1
    seed: int = 2020
    name: str = BPR

    def fit(self, data: TrainData | ProtocolData) -> ImplicitBPRModel:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        data = _train_part(data)
        model = BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            num_threads=_threads(self.threads),
            random_state=self.seed,
        )
        model.fit(sp.csr_matrix(data.matrix, dtype=np.float32), show_progress=False)
        self.component = _embedding(model.user_factors, model.item_factors, 0.1)
        self.scorer = Scorer({"collaborative": self.component}, {"collaborative": 1.0})
        self.history = data.matrix
        return self

    def params(self) -> dict[str, object]:
        keys = ("factors", "learning_rate", "regularization", "iterations", "threads")
        return {k: getattr(self, k) for k in keys}


@dataclass
class ItemItemModel(ComponentModel):
    """Item-item neighbours (cosine or BM25 between item columns), K per item, computed sparsely.

    A user's score for an item sums the similarities of the items in their history (0/1), as implicit
    scores; the K x items matrix is what the artifact stores.
    """

    measure: Literal["cosine", "bm25"] = "cosine"
    neighbours: int = 100
    k1: float = 1.2
    b: float = 0.75
    threads: int = 1
    name: str = COSINE

    def fit(self, data: TrainData | ProtocolData) -> ItemItemModel:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
        from implicit.utils import ParameterWarning

        data = _train_part(data)
        if self.measure not in ("cosine", "bm25"):
            raise ValueError(f"measure must be 'cosine' or 'bm25', got {self.measure!r}")
        threads = _threads(self.threads)
        model = (
            CosineRecommender(K=self.neighbours, num_threads=threads)
            if self.measure == "cosine"
            else BM25Recommender(K=self.neighbours, K1=self.k1, B=self.b, num_threads=threads)
        )
        binary = data.matrix.sign().astype(np.float32)
        with warnings.catch_warnings():
            # implicit's own cosine and BM25 weighting hand a COO matrix to its kNN, which converts it
            # and warns each fit; the input given here is CSR already
            warnings.filterwarnings("ignore", "Method expects CSR input", ParameterWarning)
            model.fit(sp.csr_matrix(binary), show_progress=False)
        sim = sp.csr_matrix(model.similarity, dtype=np.float32)
        # an item never recommends itself (it is seen anyway); keeps the blend's scale honest. A subtraction,
        # not setdiag: that would insert explicit entries, one by one, for items with no self-similarity.
        sim = sp.csr_matrix(sim - sp.diags(sim.diagonal()), dtype=np.float32)
        sim.eliminate_zeros()
        self.component = Component("item_item", {"similarity": sim}, {"binary": 1})
        self.scorer = Scorer({"collaborative": self.component}, {"collaborative": 1.0})
        self.history = data.matrix
        return self

    def params(self) -> dict[str, object]:
        out: dict[str, object] = {"measure": self.measure, "neighbours": self.neighbours, "threads": self.threads}
        if self.measure == "bm25":
            out.update(k1=self.k1, b=self.b)
        return out


def _embedding(user_factors: np.ndarray, item_factors: np.ndarray, fold_in_reg: float) -> Component:
    return Component(
        "embedding",
        {
            "user_factors": np.asarray(user_factors, dtype=np.float32),
            "item_factors": np.asarray(item_factors, dtype=np.float32),
        },
        {"fold_in_reg": float(fold_in_reg)},
    )


def implicit_model(name: str, threads: int = 1, seed: int = 2020) -> ComponentModel:
    """One of `MODELS` with its defaults, not yet fitted; `threads` for implicit's native loops."""
    if name == ALS:
        return ALSModel(threads=threads, seed=seed)
    if name == BPR:
        return ImplicitBPRModel(threads=threads, seed=seed)
    if name == COSINE:
        return ItemItemModel(measure="cosine", threads=threads, name=COSINE)
    if name == BM25:
        return ItemItemModel(measure="bm25", threads=threads, name=BM25)
    raise ValueError(f"unknown implicit model {name!r}; known: {', '.join(MODELS)}")
