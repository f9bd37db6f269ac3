"""Candidates: every model the pipeline trains, fitted through the one `Recommender` interface on a
protocol's split and recorded with its validation NDCG@10, timings and serving component.

RecBole models come through their adapter (`RecBoleRecommender`), the others are the native ones
(Popularity, Content, and the Hybrid blending the best collaborative candidate's component) and the
`implicit` library's (ALS, BPR, item-item).
"""

from __future__ import annotations

import numpy as np

from recsys_assets.lib.models.base import ProtocolData, Recommender
from recsys_assets.lib.models.catalog import IMPLICIT, NATIVE
from recsys_assets.lib.models.fitting import Candidate, Timer, valid_ndcg
from recsys_assets.lib.models.implicit_cf import implicit_model
from recsys_assets.lib.models.native import ContentModel, HybridModel, PopularityModel
from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
from recsys_assets.lib.models.recbole_recommender import RecBoleRecommender
from recsys_assets.lib.models.sizing import EASE_MAX_ITEMS

# Models whose serving component reproduces RecBole's own ranking exactly.


def fit_candidate(model: Recommender, pdata: ProtocolData) -> Candidate:
    """Fit `model` on the protocol's split (timed) and score its validation part."""
    with Timer() as t:
        model.fit(pdata)
    scorer = model.scorer
    cand = Candidate(
        name=model.name,
        protocol=pdata.protocol,
        family=model.family,
        model=model,
        component=next(iter(scorer.components.values())) if scorer and len(scorer.components) == 1 else None,
        train_seconds=t.seconds,
        params=model.params(),
    )
    cand.valid_ndcg10 = valid_ndcg(model.score(np.arange(pdata.data.n_users)), pdata)
    return cand


def recbole_candidate(
    config: RecBoleModelConfig, pdata: ProtocolData, max_dense_items: int = EASE_MAX_ITEMS
) -> Candidate:
    """Train one RecBole model on the protocol's split; scores over our items (-inf where unknown). EASE is
    refused (MemoryError, before any work) above `max_dense_items` items."""
    model = RecBoleRecommender(config, max_dense_items=max_dense_items)
    cand = fit_candidate(model, pdata)
    cand.extra.update(epochs_trained=model.trained.epochs_trained, recbole_test=model.trained.test_metrics)
    return cand


def native_model(name: str, collaborative: Candidate | None = None) -> Recommender:
    """Popularity, Content or Hybrid (the latter blending `collaborative`'s component), not yet fitted."""
    if name == "Popularity":
        return PopularityModel()
    if name == "Content":
        return ContentModel()
    if name == "Hybrid":
        return HybridModel(
            collaborative=collaborative.component if collaborative else None,
            collaborative_name=collaborative.name if collaborative else "",
        )
    raise ValueError(f"unknown native model {name!r}; known: {', '.join(NATIVE)}")


def native_candidate(name: str, pdata: ProtocolData, collaborative: Candidate | None = None) -> Candidate:
    """Popularity, Content or Hybrid (the latter blending `collaborative`'s component)."""
    return fit_candidate(native_model(name, collaborative), pdata)


def implicit_candidate(name: str, pdata: ProtocolData, threads: int = 1, seed: int = 2020) -> Candidate:
    """ALS, ImplicitBPR, ItemItemCosine or ItemItemBM25 (`catalog.IMPLICIT`) with its defaults, on `threads`."""
    if name not in IMPLICIT:
        raise ValueError(f"unknown implicit model {name!r}; known: {', '.join(IMPLICIT)}")
    return fit_candidate(implicit_model(name, threads=threads, seed=seed), pdata)
