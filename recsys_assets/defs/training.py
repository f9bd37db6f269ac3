"""Training assets: the budgeted hyper-parameter search and the candidates, every model trained and
evaluated on the same splits of both protocols."""

import json
import sys
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from recsys_assets.contract.artifact import write_to_storage
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.evaluation.batched import EvaluationConfig
from recsys_assets.lib.models import catalog
from recsys_assets.lib.models.fitting import (
    CHAMPION_METRIC,
    DISCOVERY,
    REPEAT,
    Candidate,
    artifact_metrics,
    evaluate_settings,
    fingerprint,
    has_repeats,
    metric_value,
    prepare,
    repeat_share,
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

    models: list[str] = Field(default_factory=lambda: list(catalog.RECBOLE_DEFAULT), description="RecBole models.")
    protocols: list[str] = Field(default_factory=lambda: list(S.PROTOCOLS), description="random and/or temporal.")
    native_models: list[str] = Field(
        default_factory=lambda: list(catalog.NATIVE), description="Models trained without RecBole."
    )
    budget: str = Field(default="standard", description="`standard` (documented budgets) or `smoke` (tests).")
    seed: int = SEED


def evaluation_config(settings: Settings) -> EvaluationConfig:
    """How candidates are evaluated at scale (the `eval_*` settings)."""
    return EvaluationConfig(
        users=settings.eval_users,
        batch_memory_mb=settings.eval_batch_memory_mb,
        recbole_collector_cells=settings.eval_recbole_collector_cells,
    )


def tuned_params(store: Storage) -> dict[str, Any]:
    """The search's best parameters per model (`tuned_hyperparameters`), empty before the first search."""
    return json.loads(store.read_bytes(*TUNED_PARAMS)) if store.exists(*TUNED_PARAMS) else {}


@dg.asset(group_name=TRAINING, kinds={"optuna"})
def tuned_hyperparameters(
    context: dg.AssetExecutionContext,
    config: TuningConfig,
    settings: dg.ResourceParam[Settings],
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
    evaluation = evaluation_config(settings)
    pdata = prepare(interactions, items, users, S.TEMPORAL, seed=config.seed)
    best: dict[str, Any] = {}
    report = []
    for name in config.models:

        def objective(overrides: dict[str, Any], name: str = name) -> float:
            kwargs = model_config(name, "standard", config.seed, tuned={name: overrides})
            value = recbole_candidate(RecBoleModelConfig(**kwargs), pdata, evaluation).valid_ndcg10
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


FAILED_CANDIDATES = ("reports", "failed_candidates.json")
PARTIAL_CANDIDATES = ("reports", "model_candidates_finished.parquet")


def _failure(model: str, protocol: str, exc: BaseException) -> dict[str, str]:
    """One failed training step, in words: which model, on which split, and the error."""
    return {"model": model, "protocol": protocol, "error": f"{type(exc).__name__}: {exc}".strip()}


def _fit(
    name: str,
    pdata: Any,
    cands: list[Candidate],
    config: CandidatesConfig,
    tuned: Any,
    repeat: bool,
    evaluation: EvaluationConfig,
) -> Candidate:
    """One candidate fitted on `pdata` (a hybrid blends the best exportable collaborative one fitted so far)."""
    from recsys_assets.lib.models.candidates import native_candidate, recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config

    if name == "Hybrid":
        cf = [c for c in cands if c.component is not None and c.name in catalog.EXPORTABLE and c.name != "Pop"]
        best_cf = max(cf, key=lambda c: c.valid_ndcg10) if cf else None
        return native_candidate("Hybrid", pdata, best_cf, repeat=repeat, evaluation=evaluation)
    if name in catalog.NATIVE:
        return native_candidate(name, pdata, evaluation=evaluation)
    kwargs = model_config(name, config.budget, config.seed, tuned=tuned)
    return recbole_candidate(RecBoleModelConfig(**kwargs), pdata, evaluation)


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
    """Trains every candidate (RecBole models, popularity, content, BuyAgain, hybrid) on the same splits of
    both protocols and evaluates each with one metrics implementation: model x metric x K x protocol x
    setting (discovery; and repeat when people consume items again) x slice. Each training run is tracked
    in MLflow; the temporal protocol's exportable candidates are saved as serving artifacts under
    `candidates/`. A model or split that fails is recorded (`reports/failed_candidates.json`) and the
    others go on; the step fails only when no candidate, or none on the champion's split, succeeded."""
    store = storage.get()
    fp = fingerprint(interactions)
    evaluation = evaluation_config(settings)
    tuned = tuned_params(store)
    if tuned:
        context.log.info(f"using tuned hyper-parameters for {sorted(tuned)}")
    results: list[pd.DataFrame] = []
    summary: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    names = [*config.models, *config.native_models]
    steps = len(config.protocols) * len(names)
    done = 0
    # a progress bar on a terminal (`make pipeline`); the Dagster log gets one line per step either way
    bar = tqdm(total=steps, desc="candidates", unit="model", disable=not sys.stderr.isatty())
    for protocol in config.protocols:
        try:
            pdata = prepare(interactions, items, users, protocol, seed=config.seed)
        except Exception as exc:  # one split failing must not lose the other's results
            failures.append(_failure("(every model: the split)", protocol, exc))
            context.log.error(f"the {protocol} split failed, its models are skipped: {failures[-1]['error']}")
            done += len(names)
            bar.update(len(names))
            continue
        repeat = settings.evaluation_target != DISCOVERY and has_repeats(pdata)
        context.log.info(
            f"{protocol}: {pdata.split.summary()}; "
            + (
                f"{repeat_share(pdata):.1%} of test positives are items the user had before: "
                "evaluated in the discovery and the repeat settings"
                if has_repeats(pdata)
                else "no test positive is an item the user had before: discovery setting only"
            )
        )
        cands: list[Candidate] = []
        for name in names:
            done += 1
            context.log.info(f"[{done}/{steps}] training {name} on the {protocol} split")
            try:
                cand = _fit(name, pdata, cands, config, tuned, repeat, evaluation)
                res = evaluate_settings(cand.scores, pdata, cand.name, evaluation)
            except Exception as exc:  # recorded; the other models and the reports go on
                failures.append(_failure(name, protocol, exc))
                context.log.error(f"[{done}/{steps}] {name} failed on the {protocol} split: {failures[-1]['error']}")
                bar.update(1)
                continue
            # what the promotion needs to refit this model on the latest data
            res["budget"] = config.budget
            res["collaborative"] = str(cand.params.get("collaborative", ""))
            results.append(res)
            cands.append(cand)
            ndcg = metric_value(res, cand.name, "ndcg", 10, protocol)
            context.log.info(
                f"[{done}/{steps}] {name} ({protocol}): NDCG@10 {ndcg:.4f}"
                + (
                    f" (repeat {metric_value(res, cand.name, 'ndcg', 10, protocol, setting=REPEAT):.4f})"
                    if has_repeats(pdata)
                    else ""
                )
                + f", valid {cand.valid_ndcg10:.4f}, {cand.train_seconds:.1f}s"
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
    store.write_text(json.dumps(failures, indent=2), *FAILED_CANDIDATES)
    if results:  # what finished stays readable even if the step fails below
        store.write_table(pd.concat(results, ignore_index=True), *PARTIAL_CANDIDATES)
    _fail_when_nothing_to_choose(results, failures, config.protocols, store.uri(*PARTIAL_CANDIDATES))
    table = pd.concat(results, ignore_index=True)
    table["dataset_fingerprint"] = fp
    wide = pd.DataFrame(summary).pivot_table(index="model", columns="protocol", values="ndcg@10")
    return dg.Output(
        table,
        metadata={
            "dataset_fingerprint": fp,
            "ndcg@10": dg.MetadataValue.md(wide.round(4).to_markdown()),
            "train_seconds": dg.MetadataValue.json(
                {f"{s['model']}/{s['protocol']}": round(s["train_seconds"], 1) for s in summary}
            ),
            "failed": dg.MetadataValue.md(pd.DataFrame(failures).to_markdown(index=False) if failures else "none"),
        },
    )


def _fail_when_nothing_to_choose(
    results: list[pd.DataFrame], failures: list[dict[str, str]], protocols: list[str], finished: str
) -> None:
    """Raise, naming every failure, when no candidate succeeded or none did on the champion's split."""
    listed = "; ".join(f"{f['model']} on the {f['protocol']} split: {f['error']}" for f in failures)
    if not results:
        raise dg.Failure(f"no candidate could be trained and evaluated ({listed})")
    champion_protocol = CHAMPION_METRIC[2]
    done = {p for r in results for p in r["protocol"].unique()}
    if champion_protocol in protocols and champion_protocol not in done:
        raise dg.Failure(
            f"no candidate succeeded on the {champion_protocol} split, on which the champion is chosen ({listed}); "
            f"the results that finished are in {finished}"
        )
