"""Training assets: the budgeted hyper-parameter search and the candidates, every model trained and
evaluated on the same splits of both protocols."""

import json
import sys
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from recsys_assets.contract.artifact import write_to_storage
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models import catalog, sizing
from recsys_assets.lib.models.base import ProtocolData
from recsys_assets.lib.models.fitting import (
    Candidate,
    artifact_metrics,
    evaluate_scores,
    fingerprint,
    metric_value,
    prepare,
    serving_artifact,
)

TRAINING = "training"
TUNED_PARAMS = ("tuning", "best_params.json")
SEED = 2020


class TuningConfig(dg.Config):
    """The hyper-parameter search: which models, and trials per model (default: the documented budget)."""

    models: list[str] = Field(default_factory=lambda: list(catalog.TUNED))
    trials: int | None = Field(default=None, description="Trials per model; None uses `tuning.TRIALS`.")
    seed: int = SEED


class CandidatesConfig(dg.Config):
    """Which models to train and compare, on which protocols, with which budget."""

    models: list[str] = Field(
        default_factory=lambda: [*catalog.RECBOLE_DEFAULT, *catalog.IMPLICIT],
        description="Collaborative models: RecBole's and the `implicit` library's (ALS, ImplicitBPR, ItemItemCosine, "
        "ItemItemBM25).",
    )
    protocols: list[str] = Field(default_factory=lambda: list(S.PROTOCOLS), description="random and/or temporal.")
    native_models: list[str] = Field(
        default_factory=lambda: list(catalog.NATIVE), description="Models trained without RecBole."
    )
    budget: str = Field(default="standard", description="`standard` (documented budgets) or `smoke` (tests).")
    seed: int = SEED


def tuned_params(store: Storage) -> dict[str, Any]:
    """The search's best parameters per model (`tuned_hyperparameters`), empty before the first search."""
    return json.loads(store.read_bytes(*TUNED_PARAMS)) if store.exists(*TUNED_PARAMS) else {}


@dg.asset(group_name=TRAINING, kinds={"optuna"})
def tuned_hyperparameters(
    context: dg.AssetExecutionContext,
    config: TuningConfig,
    storage: StorageResource,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
) -> dg.MaterializeResult:
    """A small, budgeted Optuna search per model on the temporal split's validation part (never the test
    part). The best parameters go to `tuning/best_params.json`, which `model_candidates` reads. Run it
    with `make tune`; it is not part of the default pipeline job."""
    # RecBole, torch and Optuna load in the step that trains, not with the code location
    from recsys_assets.lib.models.candidates import recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config, search

    store = storage.get()
    pdata = prepare(interactions, items, users, S.TEMPORAL, seed=config.seed)
    best: dict[str, Any] = {}
    report = []
    for name in config.models:

        def objective(overrides: dict[str, Any], name: str = name) -> float:
            kwargs = model_config(name, "standard", config.seed, tuned={name: overrides})
            value = recbole_candidate(RecBoleModelConfig(**kwargs), pdata).valid_ndcg10
            context.log.info(f"{name} {overrides}: valid NDCG@10 {value:.4f}")
            return value

        params, study = search(name, objective, config.trials, config.seed)
        best[name] = params
        report.append(
            {
                "model": name,
                "trials": len(study.trials),
                "best_valid_ndcg@10": study.best_value,
                "params": json.dumps(params),
            }
        )
    store.write_text(json.dumps(best, indent=2), *TUNED_PARAMS)
    return dg.MaterializeResult(
        metadata={
            "best": dg.MetadataValue.md(pd.DataFrame(report).to_markdown(index=False)),
            "path": store.uri(*TUNED_PARAMS),
        }
    )


SKIPPED = ("reports", "skipped_candidates.json")


def skipped_table(skipped: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(skipped, columns=["model", "protocol", "reason"])


def size_gate(
    context: dg.AssetExecutionContext,
    settings: Settings,
    config: CandidatesConfig,
    pdata: ProtocolData,
    tuned: dict[str, Any],
) -> dict[str, sizing.Estimate]:
    """Every candidate's estimated peak memory and minutes on this split, checked against `settings.limits`;
    each refused one is logged with its reason (it is then skipped, not trained)."""
    from recsys_assets.lib.models.tuning import model_config

    lim = settings.limits
    limits = sizing.Limits(lim.max_memory_gb, lim.max_minutes, lim.ease_max_items)
    names = [*config.models, *config.native_models]
    epochs = {n: int(model_config(n, config.budget, config.seed, tuned=tuned).get("epochs", 1)) for n in names}
    shape = sizing.DataShape.of(pdata.data.matrix, len(pdata.split.train))
    out = {e.model: e for e in sizing.plan(names, shape, limits, threads=lim.training_threads(), epochs=epochs)}
    for e in out.values():
        if not e.fits:
            context.log.warning(f"skipping {e.model} on the {pdata.protocol} split: {e.reason}")
    return out


@dg.asset(group_name=TRAINING, kinds={"recbole", "mlflow"})
def model_candidates(
    context: dg.AssetExecutionContext,
    config: CandidatesConfig,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    mlflow: MlflowResource,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Trains every candidate (RecBole models, popularity, content, hybrid) on the same splits of both
    protocols and evaluates each with one metrics implementation: model x metric x K x protocol x slice.
    Each training run is tracked in MLflow; the temporal protocol's exportable candidates are saved
    as serving artifacts under `candidates/`. A candidate whose estimated memory or time is over
    `RECSYS_LIMITS__*` is skipped before it trains, with the reason (metadata `skipped`, and the report)."""
    # RecBole, torch and Optuna load in the step that trains, not with the code location
    from recsys_assets.lib.models.candidates import implicit_candidate, native_candidate, recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config

    store = storage.get()
    fp = fingerprint(interactions)
    tuned = tuned_params(store)
    if tuned:
        context.log.info(f"using tuned hyper-parameters for {sorted(tuned)}")
    results: list[pd.DataFrame] = []
    summary: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    steps = len(config.protocols) * (len(config.models) + len(config.native_models))
    done = 0
    # a progress bar on a terminal (`make pipeline`); the Dagster log gets one line per step either way
    bar = tqdm(total=steps, desc="candidates", unit="model", disable=not sys.stderr.isatty())
    for protocol in config.protocols:
        pdata = prepare(interactions, items, users, protocol, seed=config.seed)
        context.log.info(f"{protocol}: {pdata.split.summary()}")
        cands: list[Candidate] = []
        estimates = size_gate(context, settings, config, pdata, tuned)
        for name in [*config.models, *config.native_models]:
            done += 1
            if not estimates[name].fits:
                skipped.append({"model": name, "protocol": protocol, "reason": estimates[name].reason})
                bar.update(1)
                continue
            context.log.info(f"[{done}/{steps}] training {name} on the {protocol} split")
            if name == "Hybrid":
                collaborative = (*catalog.EXPORTABLE, *catalog.IMPLICIT)
                cf = [c for c in cands if c.component is not None and c.name in collaborative and c.name != "Pop"]
                best_cf = max(cf, key=lambda c: c.valid_ndcg10) if cf else None
                cand = native_candidate("Hybrid", pdata, best_cf)
            elif name in ("Popularity", "Content"):
                cand = native_candidate(name, pdata)
            elif name in catalog.IMPLICIT:
                cand = implicit_candidate(name, pdata, threads=settings.limits.training_threads(), seed=config.seed)
            else:
                kwargs = model_config(name, config.budget, config.seed, tuned=tuned)
                cand = recbole_candidate(RecBoleModelConfig(**kwargs), pdata, settings.limits.ease_max_items)
            res = evaluate_scores(cand.scores(np.arange(pdata.data.n_users)), pdata, cand.name)
            # what the promotion needs to refit this model on the latest data
            res["budget"] = config.budget
            res["collaborative"] = str(cand.params.get("collaborative", ""))
            results.append(res)
            cands.append(cand)
            ndcg = metric_value(res, cand.name, "ndcg", 10, protocol)
            context.log.info(
                f"[{done}/{steps}] {name} ({protocol}): NDCG@10 {ndcg:.4f}, valid {cand.valid_ndcg10:.4f}, "
                f"{cand.train_seconds:.1f}s"
            )
            bar.update(1)
            bar.set_postfix_str(f"{name} ({protocol}) NDCG@10 {ndcg:.3f}")
            summary.append(
                {"model": cand.name, "protocol": protocol, "ndcg@10": ndcg, "train_seconds": cand.train_seconds}
            )
            artifact_path = None
            if protocol == S.TEMPORAL:
                art = serving_artifact(cand, pdata.data, fp, metrics=artifact_metrics(res))
                if art is not None:
                    write_to_storage(art, store, "candidates", cand.name)
                    artifact_path = store.uri("candidates", cand.name)
            mlflow.tracker().log_training_run(
                model_name=cand.name,
                params={**cand.params, "protocol": protocol, "family": cand.family},
                metrics=res,
                dataset_fingerprint=fp,
                protocol_tags={"protocol": protocol, "artifact": artifact_path or ""},
                duration_s=cand.train_seconds,
            )
    bar.close()
    store.write_text(json.dumps({"dataset_fingerprint": fp, "skipped": skipped}, indent=2), *SKIPPED)
    if not results:
        raise RuntimeError(f"no candidate fits RECSYS_LIMITS__*: {json.dumps(skipped, indent=1)}")
    table = pd.concat(results, ignore_index=True)
    table["dataset_fingerprint"] = fp
    wide = pd.DataFrame(summary).pivot_table(index="model", columns="protocol", values="ndcg@10")
    return dg.Output(
        table,
        metadata={
            "dataset_fingerprint": fp,
            "ndcg@10": dg.MetadataValue.md(wide.round(4).to_markdown()),
            "skipped": dg.MetadataValue.md(skipped_table(skipped).to_markdown(index=False)),
            "train_seconds": dg.MetadataValue.json(
                {f"{s['model']}/{s['protocol']}": round(s["train_seconds"], 1) for s in summary}
            ),
        },
    )
