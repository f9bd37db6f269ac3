"""Asset checks, all in `CHECKS`: data quality of the ingestion tables, and the blocking promotion check.
Each result carries its numbers as metadata. (`drift_report` reports its own `no_drift` check.)"""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.contract.artifact import ServingArtifact, read_from_storage, read_pointer
from recsys_assets.contract.events import CANONICAL_EVENT_TYPES
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.promotion import BASELINES, challenger_model
from recsys_assets.defs.resources import StorageResource
from recsys_assets.defs.training import SEED, tuned_params
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.ingest.cleaning import time_problem
from recsys_assets.lib.models.base import ProtocolData
from recsys_assets.lib.models.fitting import (
    BLENDED,
    CHAMPION_METRIC,
    DISCOVERY,
    SETTINGS,
    effective_target,
    evaluate_artifact,
    has_repeats,
    metric_value,
    prepare,
    target_value,
)

# Fewest events newer than the champion's data for a like-with-like comparison on them.
MIN_FRESH_EVENTS = 50


@dg.asset_check(asset="interactions", blocking=True, description="At least one interaction survived cleaning.")
def interactions_not_empty(interactions: pd.DataFrame) -> dg.AssetCheckResult:
    empty = len(interactions) == 0
    return dg.AssetCheckResult(
        passed=not empty,
        metadata={"rows": len(interactions)},
        description="every row was rejected or filtered: see `rejected_events` and the `clean` step's log"
        if empty
        else None,
    )


@dg.asset_check(
    asset="interactions",
    blocking=True,
    description="The timestamps order the events: not all at one instant (an error, before any training), "
    "nor most of them, nor small numbers read as seconds since 1970 (warnings).",
)
def interactions_have_time(interactions: pd.DataFrame) -> dg.AssetCheckResult:
    mode = S.time_mode(interactions)
    problem = time_problem(interactions, mode)
    ts = interactions["timestamp"]
    return dg.AssetCheckResult(
        passed=problem is None,
        severity=dg.AssetCheckSeverity.ERROR if problem and problem[0] == "error" else dg.AssetCheckSeverity.WARN,
        description=problem[1] if problem else None if mode == "timestamp" else S.method_of(S.TEMPORAL, mode),
        metadata={
            "time_mode": mode,
            "distinct_timestamps": int(ts.nunique()),
            "time_min": str(ts.min()),
            "time_max": str(ts.max()),
        },
    )


@dg.asset_check(
    asset="interactions",
    blocking=True,
    description="No duplicate events: unique event_id where present, unique full rows otherwise.",
)
def interactions_unique(interactions: pd.DataFrame) -> dg.AssetCheckResult:
    with_id = interactions["event_id"].notna()
    dup_ids = int(interactions.loc[with_id, "event_id"].duplicated().sum())
    fields = ["user_id", "item_id", "event_type", "timestamp", "value"]
    fields += [S.SEQUENCE_COL] if S.SEQUENCE_COL in interactions.columns else []
    dup_rows = int(interactions.loc[~with_id].duplicated(subset=fields).sum())
    return dg.AssetCheckResult(
        passed=dup_ids == 0 and dup_rows == 0,
        metadata={"duplicate_event_ids": dup_ids, "duplicate_rows": dup_rows},
    )


@dg.asset_check(
    asset="interactions",
    blocking=True,
    description="Every event has a known type, a timestamp inside the configured range and a positive weight.",
)
def interactions_valid(settings: dg.ResourceParam[Settings], interactions: pd.DataFrame) -> dg.AssetCheckResult:
    ts = interactions["timestamp"]
    bad_type = int((~interactions["event_type"].isin(CANONICAL_EVENT_TYPES)).sum())
    bad_time = int(
        (ts.isna() | (ts < pd.Timestamp(settings.time_min)) | (ts > pd.Timestamp(settings.time_upper))).sum()
    )
    bad_weight = int((~(interactions["weight"] > 0)).sum())
    ratings = interactions[interactions["event_type"] == "rating"]["value"]
    bad_rating = int((~ratings.between(settings.rating_min, settings.rating_max)).sum())
    return dg.AssetCheckResult(
        passed=bad_type + bad_time + bad_weight + bad_rating == 0,
        metadata={
            "unknown_event_types": bad_type,
            "timestamps_out_of_range": bad_time,
            "non_positive_weights": bad_weight,
            "ratings_out_of_range": bad_rating,
            "time_min": str(ts.min()),
            "time_max": str(ts.max()),
        },
    )


@dg.asset_check(
    asset="interaction_matrix",
    blocking=True,
    additional_ins={"interactions": dg.AssetIn(), "items": dg.AssetIn(), "users": dg.AssetIn()},
    description="Every interaction's user and item is known; item and user ids are unique.",
)
def referential_integrity(
    interaction_matrix: pd.DataFrame, interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame
) -> dg.AssetCheckResult:
    unknown_items = int((~interactions["item_id"].isin(items["item_id"])).sum())
    unknown_users = int((~interactions["user_id"].isin(users["user_id"])).sum())
    dup_items = int(items["item_id"].duplicated().sum())
    dup_users = int(users["user_id"].duplicated().sum())
    unmapped = int(interaction_matrix[["user_idx", "item_idx"]].isna().any(axis=1).sum())
    return dg.AssetCheckResult(
        passed=unknown_items + unknown_users + dup_items + dup_users + unmapped == 0,
        metadata={
            "interactions_with_unknown_item": unknown_items,
            "interactions_with_unknown_user": unknown_users,
            "duplicate_item_ids": dup_items,
            "duplicate_user_ids": dup_users,
            "unmapped_matrix_entries": unmapped,
            "n_users": len(users),
            "n_items": len(items),
        },
    )


def _challenger_against_champion(
    store: Storage,
    best: pd.Series,
    current: dict[str, Any],
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    target: str = DISCOVERY,
    threads: int = 1,
) -> tuple[float, float, str]:
    """The champion's and the challenger's NDCG@10 (on the evaluation `target`) on the same events, and
    which events those are."""
    # the training stack loads in the step that refits, not with the code location
    from recsys_assets.lib.models.refit import refit_winner

    protocol = S.deciding_protocol(interactions)
    champion_art = read_from_storage(store, *current["path"])
    ts = pd.to_datetime(interactions["timestamp"], utc=True)
    data_until = pd.Timestamp(current["data_until"]) if current.get("data_until") else None
    old = interactions[(ts <= data_until).to_numpy()] if data_until is not None else interactions
    n_new = len(interactions) - len(old)
    challenger_art: ServingArtifact
    if data_until is not None and n_new >= MIN_FRESH_EVENTS and len(old):
        # Like with like: the challenger's model trained exactly as the champion was, on the
        # champion's data, both scored on the events that came after it.
        pdata = prepare(interactions, items, users, protocol, ratios=(len(old), 0, n_new))
        # as the promotion refits it: a hybrid blends BuyAgain when its evaluated artifact did
        evaluated = read_from_storage(store, "candidates", str(best["model"]))
        challenger_art = refit_winner(
            best, old, items, users, tuned=tuned_params(store), seed=SEED, threads=threads, reference=evaluated
        )
        compared_on = f"{n_new} events after the champion's data ({data_until}); both trained on it"
    else:
        # No new events: the temporal test part, where the champion may have trained on some
        # events (it can only look better there).
        pdata = prepare(interactions, items, users, protocol)
        challenger_art = read_from_storage(store, "candidates", str(best["model"]))
        compared_on = "the temporal test part (no newer events than the champion's data)"
    current_value = _artifact_value(champion_art, pdata, target)
    challenger_value = _artifact_value(challenger_art, pdata, target)
    return current_value, challenger_value, compared_on


def _artifact_value(art: ServingArtifact, pdata: ProtocolData, target: str) -> float:
    """An artifact's champion metric on `pdata`'s test part in the `target` setting (blended: the mean)."""
    metric, k, _ = CHAMPION_METRIC
    protocol = pdata.protocol
    settings = (DISCOVERY,) if not has_repeats(pdata) else SETTINGS if target == BLENDED else (target,)
    values = [
        metric_value(evaluate_artifact(art, pdata, "a", setting=s), "a", metric, k, protocol, setting=s)
        for s in settings
    ]
    return float(np.mean(values))


@dg.asset_check(
    asset=challenger_model,
    blocking=True,
    additional_ins={
        "evaluation_report": dg.AssetIn(),
        "interactions": dg.AssetIn(),
        "items": dg.AssetIn(),
        "users": dg.AssetIn(),
    },
    description="Refuses promotion if the challenger is worse than the popularity baseline, or worse than "
    "the current champion (by more than `promotion_margin`), on NDCG@10. Against the champion, the "
    "challenger's model is trained on the champion's data and both are scored on the events that came "
    "after it (the temporal test part when there are none).",
)
def challenger_beats_baseline_and_champion(
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    challenger_model: pd.DataFrame,
    evaluation_report: pd.DataFrame,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
) -> dg.AssetCheckResult:
    store = storage.get()
    target = effective_target(evaluation_report, settings.evaluation_target)
    best = challenger_model.iloc[0]
    baseline = max(
        (
            target_value(evaluation_report, m, target)
            for m in BASELINES
            if not np.isnan(target_value(evaluation_report, m, target))
        ),
        default=float("nan"),
    )
    current = read_pointer(store)
    current_value = challenger_value = float("nan")
    compared_on = "no champion yet"
    if current is not None:
        current_value, challenger_value, compared_on = _challenger_against_champion(
            store, best, current, interactions, items, users, target, settings.limits.training_threads()
        )
    beats_baseline = bool(best["ndcg@10"] >= baseline)
    floor = (1.0 - settings.promotion_margin) * current_value
    beats_champion = bool(np.isnan(current_value) or challenger_value >= floor)
    if np.isnan(baseline):
        verdict = f"no popularity baseline ({' or '.join(BASELINES)}) was evaluated: keep Popularity in native_models"
    elif not beats_baseline:
        verdict = f"{best['model']} NDCG@10 {best['ndcg@10']:.4f} < popularity {baseline:.4f}"
    elif not beats_champion:
        verdict = (
            f"{best['model']} NDCG@10 {challenger_value:.4f} < champion {current['model_version']} "
            f"{current_value:.4f} x (1 - {settings.promotion_margin}) on {compared_on}"
        )
    else:
        verdict = f"{best['model']} promoted"
    return dg.AssetCheckResult(
        passed=beats_baseline and beats_champion,
        metadata={
            "verdict": verdict,
            "challenger": str(best["model"]),
            "challenger_ndcg@10": float(best["ndcg@10"]),
            "popularity_ndcg@10": float(baseline),
            "current_champion": current["model_version"] if current else "none",
            "current_champion_ndcg@10": current_value,
            "challenger_ndcg@10_vs_champion": challenger_value,
            "compared_on": compared_on,
            "promotion_margin": settings.promotion_margin,
            "evaluation_target": target,
        },
    )


CHECKS = [
    interactions_not_empty,
    interactions_have_time,
    interactions_unique,
    interactions_valid,
    referential_integrity,
    challenger_beats_baseline_and_champion,
]
