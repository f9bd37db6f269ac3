"""Promotion assets: the challenger (the best candidate with a serving artifact) and the champion, promoted
only past the blocking check `challenger_beats_baseline_and_champion` (in `checks`)."""

import datetime as dt
import json
import tempfile
import time
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.contract.artifact import (
    CHALLENGER_POINTER,
    ServingArtifact,
    read_from_storage,
    save_artifact,
    write_to_storage,
)
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.defs.evaluation import champion_ranking
from recsys_assets.defs.resources import STORAGE_RETRY, MlflowResource, StorageResource
from recsys_assets.defs.training import SEED, tuned_params
from recsys_assets.lib import canary as gate
from recsys_assets.lib import champion as registry
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models.fitting import effective_target, metric_value, target_value
from recsys_assets.lib.tracking import CHAMPION, TAG_MODEL, MlflowTracking

SERVING = "serving_artifacts"
# the popularity baselines every candidate must beat (the offline gate, with the blocking check)
BASELINES = ("Pop", "Popularity")


def _refit_params(results: pd.DataFrame, model: str) -> dict[str, str]:
    rows = results[results["model"] == model]
    out = {"budget": "standard", "collaborative": ""}
    for col in out:
        if col in rows and len(rows) and pd.notna(rows[col].iloc[0]):
            out[col] = str(rows[col].iloc[0])
    return out


@dg.asset(group_name=SERVING)
def challenger_model(
    context: dg.AssetExecutionContext,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    evaluation_report: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """The best exportable candidate on the champion metric (NDCG@10, temporal split, on the configured
    `evaluation_target`: discovery, repeat or blended) and the runner-up, with their serving artifacts;
    promotion is decided by the blocking check below. `ndcg@10` is the value on that target."""
    store = storage.get()
    protocol = S.champion_protocol(evaluation_report["protocol"])
    target = effective_target(evaluation_report, settings.evaluation_target)
    ranked = champion_ranking(evaluation_report, target)
    # the popularity baseline on the same target as the blocking check's
    baseline = max(
        (v for m in BASELINES if not np.isnan(v := target_value(evaluation_report, m, target))),
        default=float("nan"),
    )
    rows = []
    for model in ranked["model"]:
        if store.exists("candidates", model, "manifest.json"):
            art = read_from_storage(store, "candidates", model)
            rows.append(
                {
                    "model": model,
                    "model_version": art.model_version,
                    "ndcg@10": target_value(evaluation_report, model, target),
                    "map@10": target_value(evaluation_report, model, target, "map"),
                    "discovery_ndcg@10": metric_value(evaluation_report, model, "ndcg", 10, protocol),
                    "evaluation_target": target,
                    "artifact": store.uri("candidates", model),
                    "dataset_fingerprint": art.dataset_fingerprint,
                    # the offline gate's first half; a runner-up past it becomes the challenger pointer
                    "beats_baseline": bool(
                        np.isnan(baseline) or target_value(evaluation_report, model, target) >= baseline
                    ),
                    **_refit_params(evaluation_report, model),
                }
            )
    if not rows:
        raise dg.Failure("no candidate has a serving artifact: nothing to promote")
    table = pd.DataFrame(rows)
    context.log.info(f"challenger {table.iloc[0]['model']} (NDCG@10 {table.iloc[0]['ndcg@10']:.4f}, {target})")
    return dg.Output(
        table,
        metadata={
            "challenger": str(table.iloc[0]["model"]),
            "ranked": dg.MetadataValue.md(table.to_markdown(index=False)),
        },
    )


@dg.asset(group_name=SERVING, kinds={"mlflow"}, deps=[challenger_model], retry_policy=STORAGE_RETRY)
def champion_model(
    context: dg.AssetExecutionContext,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    mlflow: MlflowResource,
    challenger_model: pd.DataFrame,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
) -> dg.MaterializeResult:
    """Promotes the challenger (it passed the blocking check). Its model is refitted with the same
    hyper-parameters on every event, the newest included (a hybrid's blend is tuned on the newest
    5% first), so new items and the latest behaviour are served, and every event is its history;
    the artifact goes to `artifacts/<version>/` and MLflow registers it.

    With the canary gate on (`RECSYS_CANARY__SHARE` > 0, the default) and a champion already serving, a
    challenger that is another model than the champion's is registered with alias `challenger` and opens a
    canary (`lib/canary.py`): the API serves it to that share of users, and `canary_sensor` promotes or
    withdraws it on what users do. Otherwise (the first champion, a refit of the champion's own model with
    `canary.refresh: direct`, or the gate off) it gets alias `champion` at once and `artifacts/CHAMPION.json`
    follows the alias (the API hot-reloads from there; the change is recorded in `champion_changes`); the
    previous champion then keeps `canary.holdout_share` of users as a holdout, watched the same way. Without
    a holdout the runner-up (as evaluated) gets alias `challenger`, and `artifacts/CHALLENGER.json` when it
    beats the popularity baseline (the API serves it to `RECSYS_AB_CHALLENGER_SHARE` of users)."""
    # the training stack loads in the step that refits, not with the code location
    from recsys_assets.lib.models.refit import refit_winner

    store = storage.get()
    tracker = mlflow.tracker()
    gate_config = settings.canary
    serving = tracker.alias_version(CHAMPION)
    winner = challenger_model.iloc[0]
    evaluated = read_from_storage(store, "candidates", winner["model"])
    started = time.perf_counter()
    art = refit_winner(
        winner,
        interactions,
        items,
        users,
        tuned=tuned_params(store),
        seed=SEED,
        threads=settings.limits.training_threads(),
        reference=evaluated,
    )
    refit_seconds = time.perf_counter() - started
    context.log.info(
        f"refitted {winner['model']} on {len(interactions)} events in {refit_seconds:.1f}s "
        f"(trained until {art.trained_until})"
    )
    same_model = serving is not None and serving["tags"].get(TAG_MODEL) == art.model_name
    canary = gate_config.share > 0 and serving is not None and not (same_model and gate_config.refresh == "direct")
    data_until = str(pd.to_datetime(interactions["timestamp"], utc=True).max().isoformat())
    aliases = {}
    published = [(winner, art, "challenger" if canary else "champion")]
    if not canary and not (serving is not None and gate_config.holdout_share > 0) and len(challenger_model) > 1:
        runner_up = challenger_model.iloc[1]
        published.append((runner_up, read_from_storage(store, "candidates", runner_up["model"]), "challenger"))
    for rank, (row, artifact, alias) in enumerate(published):
        version = _register(store, tracker, row, artifact, alias, interactions)
        aliases[alias] = {"model": row["model"], "model_version": artifact.model_version, "registry_version": version}
        if rank == 0:
            pointer = _pointer(row, artifact, version, data_until, refit_seconds)
        else:
            pointer = _pointer(row, artifact, version, artifact.trained_until, None)
        # kept with the version, so a later promotion or rollback of it writes the same pointer
        tracker.set_version_tag(version, registry.TAG_POINTER, json.dumps(pointer))
        if rank == 1 and bool(row.get("beats_baseline", False)):
            registry.write_pointer(
                store, {**pointer, "promoted_at": dt.datetime.now(dt.UTC).isoformat()}, CHALLENGER_POINTER
            )
    reason = f"{winner['model']} passed the promotion check (NDCG@10 {float(winner['ndcg@10']):.4f})"
    if canary:
        assert serving is not None
        state = gate.start_canary(tracker, store, gate_config, aliases["challenger"]["registry_version"], reason)
        context.log.info(
            f"canary opened: {winner['model']} (version {state.challenger['registry_version']}) serves "
            f"{gate_config.share:.0%} of users beside champion version {serving['version']}; canary_sensor decides"
        )
    else:
        change = registry.sync_champion(
            tracker, store, actor=f"dagster run {context.run_id}", action=registry.PIPELINE, reason=reason
        )
        context.log.info(f"champion pointer: {change or 'already at the alias'}")
        if change is not None and serving is not None and change["from_version"]:
            held = gate.start_holdout(tracker, store, gate_config, str(change["from_version"]), reason)
            if held is not None:
                context.log.info(f"holdout: version {change['from_version']} keeps {gate_config.holdout_share:.0%}")
    runs.write_model_registry(store, tracker)
    context.log.info(f"published {aliases}")
    return dg.MaterializeResult(
        metadata={
            "aliases": dg.MetadataValue.json(aliases),
            "model_version": art.model_version,
            "refit_seconds": round(refit_seconds, 1),
            "canary": canary,
        }
    )


def _register(
    store: Storage,
    tracker: MlflowTracking,
    row: pd.Series,
    art: ServingArtifact,
    alias: str,
    interactions: pd.DataFrame,
) -> str:
    """Write `art` under `artifacts/<version>/`, log its run and register it with `alias`; the registry version."""
    write_to_storage(art, store, "artifacts", art.model_version)
    run_id = tracker.log_training_run(
        model_name=f"{row['model']} ({alias})",
        params={"model_version": art.model_version, "trained_until": art.trained_until},
        metrics=pd.DataFrame(
            [
                {
                    "model": row["model"],
                    "metric": m,
                    "k": 10,
                    "protocol": S.deciding_protocol(interactions),
                    "slice": "all",
                    "setting": row.get("evaluation_target", "discovery"),
                    "value": row[f"{m}@10"],
                }
                for m in ("ndcg", "map")
            ]
        ),
        dataset_fingerprint=art.dataset_fingerprint,
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(art, tmp)
        return tracker.register_artifact(tmp, run_id, alias)


def _pointer(
    row: pd.Series, art: ServingArtifact, version: str, data_until: str, refit_seconds: float | None
) -> dict[str, Any]:
    """The pointer kept with a registry version, so a later promotion or rollback of it writes the same one."""
    pointer: dict[str, Any] = {
        "model": row["model"],
        "model_version": art.model_version,
        "path": ["artifacts", art.model_version],
        "registry_version": version,
        "ndcg@10": float(row["ndcg@10"]),
        "trained_until": art.trained_until,
        "data_until": data_until,
    }
    if refit_seconds is not None:
        pointer["refit_seconds"] = round(refit_seconds, 1)
    return pointer
