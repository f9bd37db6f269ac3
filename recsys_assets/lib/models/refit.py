"""Refit the chosen model on the latest data for serving.

Evaluation trains on the earliest 80% of events, so a model promoted from there has never seen the
newest items. The refit trains the same model with the same hyper-parameters on every event, the
newest included: those are what a retrain after drift is for (the items that just launched, the
users who just arrived). A small, most recent validation slice (one global time cut) first tunes
the hybrid's blend weights and popularity half-life on a model trained without it; the served
components are then fitted on every event with those choices. RecBole models train on every event
with the slice as their (seen) validation data, so early stopping ends on the budget's epochs.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pandas as pd

from recsys_assets.contract.artifact import ServingArtifact
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models.base import ProtocolData, TrainData
from recsys_assets.lib.models.candidates import implicit_candidate, native_candidate, recbole_candidate
from recsys_assets.lib.models.catalog import EXPORTABLE, IMPLICIT, NATIVE
from recsys_assets.lib.models.fitting import Candidate, Timer, fingerprint, prepare, serving_artifact
from recsys_assets.lib.models.native import HybridModel
from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
from recsys_assets.lib.models.tuning import model_config

logger = logging.getLogger(__name__)

VALID_SHARE = 0.05


def refit_ratios(valid_share: float = VALID_SHARE) -> tuple[float, float, float]:
    """The (train, valid, test) ratios of a refit: no test part."""
    if not 0 < valid_share < 1:
        raise ValueError(f"valid_share must be in (0, 1), got {valid_share}")
    return (1.0 - valid_share, valid_share, 0.0)


def refit_artifact(
    model: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    *,
    tuned: dict[str, Any],
    budget: str,
    seed: int,
    reference: ServingArtifact | None = None,
    valid_share: float = VALID_SHARE,
    hybrid_cf: str | None = None,
    threads: int = 1,
    hybrid_repeat: bool = False,
) -> ServingArtifact:
    """`model` retrained on every event (the hybrid's blend tuned on all but the newest `valid_share`),
    as a serving artifact.

    RecBole models train with `tuning.model_config(model, budget, seed, tuned)`, as in the comparison;
    implicit's (`catalog.IMPLICIT`) with their defaults on `threads`.
    For `Hybrid`, `hybrid_cf` names its collaborative model (the one the evaluated hybrid blended,
    an exportable RecBole model other than Pop, or an implicit one), which is refitted too; None blends content
    and popularity only; `hybrid_repeat` blends BuyAgain too (tuned with seen items allowed), as a hybrid
    evaluated for the repeat setting does. `reference` is the evaluated candidate's artifact: its metrics are copied.
    The artifact covers every row of `users` and `items`, its history is every event, and
    `trained_until` is the time of the last event.
    """
    _check_model(model, hybrid_cf)
    if reference is not None and reference.model_name != model:
        raise ValueError(f"reference artifact is a {reference.model_name}, not a {model}")
    pdata = prepare(
        interactions, items, users, S.deciding_protocol(interactions), seed=seed, ratios=refit_ratios(valid_share)
    )
    if pdata.split.valid.empty:
        raise ValueError("the validation slice is empty: its first timestamp holds every later event")
    common: dict[str, Any] = dict(tuned=tuned, budget=budget, seed=seed, hybrid_cf=hybrid_cf, threads=threads)
    cand = refit_candidate(model, pdata, **common, hybrid_repeat=hybrid_repeat)
    full = every_event(pdata, interactions, items, users)
    served = _fit_on_every_event(model, cand, full, **common)
    art = serving_artifact(
        served,
        full.data,
        fingerprint(interactions),
        metrics=reference.metrics if reference is not None else None,
    )
    if art is None:  # _check_model admits exportable models only
        raise ValueError(f"{model} has no serving component")
    logger.info(
        "refit %s on %d events up to %s in %.1fs (tuned on %d, valid NDCG@10 %.4f on the %d newest)",
        model,
        len(full.split.train),
        art.trained_until,
        cand.train_seconds + served.train_seconds,
        len(pdata.split.train),
        cand.valid_ndcg10,
        len(pdata.split.valid),
    )
    return art


def refit_winner(
    winner: pd.Series,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    *,
    tuned: dict[str, Any],
    seed: int,
    threads: int = 1,
    reference: ServingArtifact | None = None,
) -> ServingArtifact:
    """`refit_artifact` of a row of the model ranking (`model`, and `budget` and `collaborative` as training
    recorded them; a row without them: the standard budget, no collaborative model). With `reference` (the
    row's evaluated artifact) its metrics are copied and a hybrid blends BuyAgain when the evaluated one did."""
    return refit_artifact(
        str(winner["model"]),
        interactions,
        items,
        users,
        tuned=tuned,
        budget=str(winner.get("budget", "standard")),
        seed=seed,
        reference=reference,
        hybrid_cf=str(winner.get("collaborative", "")) or None,
        threads=threads,
        hybrid_repeat=reference is not None and "buy_again" in reference.scorer.components,
    )


def every_event(
    pdata: ProtocolData, interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame
) -> ProtocolData:
    """`pdata` with every event as its training part; the validation slice stays (now seen)."""
    split = dataclasses.replace(pdata.split, train=interactions)
    return dataclasses.replace(pdata, split=split, data=TrainData.build(interactions, items, users))


def _fit_on_every_event(
    model: str,
    tuned_cand: Candidate,
    full: ProtocolData,
    *,
    tuned: dict[str, Any],
    budget: str,
    seed: int,
    hybrid_cf: str | None,
    threads: int = 1,
) -> Candidate:
    """The served candidate: `model` fitted on every event, with what `tuned_cand` chose."""

    def recbole(name: str) -> Candidate:
        if name in IMPLICIT:
            return implicit_candidate(name, full, threads=threads, seed=seed)
        return recbole_candidate(RecBoleModelConfig(**model_config(name, budget, seed, tuned=tuned)), full)

    if model != "Hybrid":
        return native_candidate(model, full) if model in NATIVE else recbole(model)
    chosen = tuned_cand.model
    assert isinstance(chosen, HybridModel)
    cf = recbole(hybrid_cf) if hybrid_cf else None
    with Timer() as t:
        hybrid = chosen.refit(full.data, cf.component if cf is not None else None)
    cand = dataclasses.replace(tuned_cand, model=hybrid, extra=dict(tuned_cand.extra))
    cand.train_seconds = t.seconds + (cf.train_seconds if cf is not None else 0.0)
    return cand


def refit_candidate(
    model: str,
    pdata: ProtocolData,
    *,
    tuned: dict[str, Any],
    budget: str,
    seed: int,
    hybrid_cf: str | None = None,
    threads: int = 1,
    hybrid_repeat: bool = False,
) -> Candidate:
    """Train `model` (and, for `Hybrid`, its collaborative model first) on `pdata`'s train part."""
    _check_model(model, hybrid_cf)

    def recbole(name: str) -> Candidate:
        if name in IMPLICIT:
            return implicit_candidate(name, pdata, threads=threads, seed=seed)
        return recbole_candidate(RecBoleModelConfig(**model_config(name, budget, seed, tuned=tuned)), pdata)

    if model == "Hybrid":
        cf = recbole(hybrid_cf) if hybrid_cf else None
        cand = native_candidate("Hybrid", pdata, cf, repeat=hybrid_repeat)
        if cf is not None:  # the hybrid's training time includes its collaborative model's
            cand.train_seconds += cf.train_seconds
        return cand
    if model in NATIVE:
        return native_candidate(model, pdata)
    return recbole(model)


def _check_model(model: str, hybrid_cf: str | None) -> None:
    servable = (*EXPORTABLE, *IMPLICIT, *NATIVE)
    if model not in servable:
        raise ValueError(f"{model} cannot be served; refit one of {list(servable)}")
    collaborative = [m for m in (*EXPORTABLE, *IMPLICIT) if m != "Pop"]
    if hybrid_cf is not None and (model != "Hybrid" or hybrid_cf not in collaborative):
        cf = collaborative
        raise ValueError(f"hybrid_cf is for Hybrid only, one of {cf}; got {hybrid_cf!r} for {model}")
