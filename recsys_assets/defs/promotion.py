"""Promotion assets: the challenger (the best candidate with a serving artifact) and the champion, promoted
only past the blocking check `challenger_beats_baseline_and_champion` (in `checks`)."""

import datetime as dt
import json
import tempfile
import time

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.contract.artifact import CHALLENGER_POINTER, read_from_storage, save_artifact, write_to_storage
from recsys_assets.contract.settings import Settings
from recsys_assets.defs import runs
from recsys_assets.defs.evaluation import champion_ranking
from recsys_assets.defs.resources import STORAGE_RETRY, MlflowResource, StorageResource
from recsys_assets.defs.training import SEED, tuned_params
from recsys_assets.lib import champion as registry
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models.fitting import effective_target, metric_value, target_value

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
    the artifact goes to `artifacts/<version>/`, MLflow registers it with alias `champion`, and
    `artifacts/CHAMPION.json` follows the alias (the API hot-reloads from there; the change is
    recorded in `champion_changes`). The runner-up (as evaluated) gets alias `challenger`, and
    `artifacts/CHALLENGER.json` when it beats the popularity baseline (the API serves it to
    `RECSYS_AB_CHALLENGER_SHARE` of users)."""
    # the training stack loads in the step that refits, not with the code location
    from recsys_assets.lib.models.refit import refit_artifact

    store = storage.get()
    tuned = tuned_params(store)
    aliases = {}
    for rank, (_, row) in enumerate(challenger_model.head(2).iterrows()):
        alias = "champion" if rank == 0 else "challenger"
        evaluated = read_from_storage(store, "candidates", row["model"])
        if rank == 0:
            started = time.perf_counter()
            art = refit_artifact(
                str(row["model"]),
                interactions,
                items,
                users,
                tuned=tuned,
                budget=str(row.get("budget", "standard")),
                seed=SEED,
                reference=evaluated,
                hybrid_cf=str(row.get("collaborative", "")) or None,
                hybrid_repeat="buy_again" in evaluated.scorer.components,
                threads=settings.limits.training_threads(),
            )
            refit_seconds = time.perf_counter() - started
            context.log.info(
                f"refitted {row['model']} on {len(interactions)} events in {refit_seconds:.1f}s "
                f"(trained until {art.trained_until})"
            )
        else:
            art = evaluated
        write_to_storage(art, store, "artifacts", art.model_version)
        run_id = mlflow.tracker().log_training_run(
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
            version = mlflow.tracker().register_artifact(tmp, run_id, alias)
        aliases[alias] = {"model": row["model"], "model_version": art.model_version, "registry_version": version}
        pointer = {
            "model": row["model"],
            "model_version": art.model_version,
            "path": ["artifacts", art.model_version],
            "registry_version": version,
            "ndcg@10": float(row["ndcg@10"]),
            "trained_until": art.trained_until,
            "data_until": str(pd.to_datetime(interactions["timestamp"], utc=True).max().isoformat())
            if rank == 0
            else art.trained_until,
        }
        if rank == 0:
            pointer["refit_seconds"] = round(refit_seconds, 1)
        # kept with the version, so a later promotion or rollback of it writes the same pointer
        mlflow.tracker().set_version_tag(version, registry.TAG_POINTER, json.dumps(pointer))
        if rank == 1 and bool(row.get("beats_baseline", False)):
            registry.write_pointer(
                store, {**pointer, "promoted_at": dt.datetime.now(dt.UTC).isoformat()}, CHALLENGER_POINTER
            )
    change = registry.sync_champion(
        mlflow.tracker(),
        store,
        actor=f"dagster run {context.run_id}",
        action=registry.PIPELINE,
        reason=f"{aliases['champion']['model']} passed the promotion check",
    )
    context.log.info(f"champion pointer: {change or 'already at the alias'}")
    runs.write_model_registry(store, mlflow.tracker())
    context.log.info(f"promoted {aliases}")
    champion = aliases["champion"]
    return dg.MaterializeResult(
        metadata={
            "aliases": dg.MetadataValue.json(aliases),
            "model_version": champion["model_version"],
            "refit_seconds": round(refit_seconds, 1),
        }
    )
