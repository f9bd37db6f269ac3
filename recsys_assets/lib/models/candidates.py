"""Candidates: every model the pipeline trains, fitted through the one `Recommender` interface on a
protocol's split and recorded with its validation NDCG@10, timings and serving component.

RecBole models come through their adapter (`RecBoleRecommender`), the others are the native ones
(Popularity, Content, BuyAgain, and the Hybrid blending the best collaborative candidate's component) and the
`implicit` library's (ALS, BPR, item-item).
"""

from __future__ import annotations

from recsys_assets.lib.evaluation.batched import DEFAULT_EVALUATION, EvaluationConfig
from recsys_assets.lib.models.base import ProtocolData, Recommender
from recsys_assets.lib.models.buy_again import BuyAgainModel
from recsys_assets.lib.models.catalog import IMPLICIT, NATIVE
from recsys_assets.lib.models.fitting import Candidate, Timer, valid_ndcg
from recsys_assets.lib.models.implicit_cf import implicit_model
from recsys_assets.lib.models.native import ContentModel, HybridModel, PopularityModel
from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
from recsys_assets.lib.models.recbole_recommender import RecBoleRecommender
from recsys_assets.lib.models.sizing import EASE_MAX_ITEMS

# Models whose serving component reproduces RecBole's own ranking exactly.


def fit_candidate(
    model: Recommender, pdata: ProtocolData, evaluation: EvaluationConfig = DEFAULT_EVALUATION
) -> Candidate:
    """Fit `model` on the protocol's split (timed) and score its validation part (in batches of users)."""
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
    cand.valid_ndcg10 = valid_ndcg(model.score, pdata, evaluation, cand.lists_fn)
    return cand


def recbole_candidate(
    config: RecBoleModelConfig,
    pdata: ProtocolData,
    evaluation: EvaluationConfig = DEFAULT_EVALUATION,
    max_dense_items: int = EASE_MAX_ITEMS,
) -> Candidate:
    """Train one RecBole model on the protocol's split; scores over our items (-inf where unknown). EASE is
    refused (MemoryError, before any work) above `max_dense_items` items."""
    model = RecBoleRecommender(config, evaluation, max_dense_items=max_dense_items)
    cand = fit_candidate(model, pdata, evaluation)
    cand.extra.update(epochs_trained=model.trained.epochs_trained, recbole_test=model.trained.test_metrics)
    return cand


def native_model(name: str, collaborative: Candidate | None = None, repeat: bool = False) -> Recommender:
    """Popularity, Content, BuyAgain or Hybrid (the latter blending `collaborative`'s component, and with
    `repeat` BuyAgain's, tuned on the repeat setting), not yet fitted."""
    if name == "Popularity":
        return PopularityModel()
    if name == "Content":
        return ContentModel()
    if name == "BuyAgain":
        return BuyAgainModel()
    if name == "Hybrid":
        return HybridModel(
            collaborative=collaborative.component if collaborative else None,
            collaborative_name=collaborative.name if collaborative else "",
            repeat=repeat,
        )
    raise ValueError(f"unknown native model {name!r}; known: {', '.join(NATIVE)}")


def native_candidate(
    name: str,
    pdata: ProtocolData,
    collaborative: Candidate | None = None,
    repeat: bool = False,
    evaluation: EvaluationConfig = DEFAULT_EVALUATION,
) -> Candidate:
    """Popularity, Content, BuyAgain or Hybrid (see `native_model`), fitted on `pdata`."""
    return fit_candidate(native_model(name, collaborative, repeat), pdata, evaluation)


def implicit_candidate(
    name: str,
    pdata: ProtocolData,
    threads: int = 1,
    seed: int = 2020,
    evaluation: EvaluationConfig = DEFAULT_EVALUATION,
) -> Candidate:
    """ALS, ImplicitBPR, ItemItemCosine or ItemItemBM25 (`catalog.IMPLICIT`) with its defaults, on `threads`."""
    if name not in IMPLICIT:
        raise ValueError(f"unknown implicit model {name!r}; known: {', '.join(IMPLICIT)}")
    return fit_candidate(implicit_model(name, threads=threads, seed=seed), pdata, evaluation)
