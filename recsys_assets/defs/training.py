"""Training assets: the budgeted hyper-parameter search and the candidates, every model trained and
evaluated on the same splits of both protocols.

`model_candidates` (its graph is in `candidate_steps`) is one asset backed by a graph with one step per
model, chosen over the other two ways of splitting it:

* a graph with dynamic outputs keeps what everything else relies on: the models and protocols are a
  runtime list (`ops: model_candidates: config:` as before: the retrain's `retrain_models`, the tests',
  the command line's `--models`, protocols a log without times cannot have), the asset key downstream
  assets and checks read is the same single table, and one run trains them all;
* a partitioned asset (one partition per model) runs one partition per run, so a pipeline run would no
  longer train its candidates side by side, and the evaluation would read a partition set instead of one
  table; one asset per model fixes the model list when the code location loads, so changing the models
  would mean changing the asset selection rather than the configuration.

The steps: `candidate_plan` cuts each split once and decides every model's size and time verdict on it
(`limits`, the comparison's time budget), then lists the admitted models; `candidate` (mapped, one step per
admitted model) splits the data itself on the splits it was admitted to (no split crosses processes),
trains, evaluates, logs to MLflow and writes the temporal artifact; `hybrid_candidate`, the second stage,
blends the best exportable collaborative component the first stage handed on; `candidates_table`
concatenates every step's rows in the order one process used to train them, records the failures and fails
only when nothing can be chosen.
Steps hand results on through storage (`StepResultsIOManager`), so they may run in other processes or pods.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from recsys_assets.contract.artifact import write_to_storage
from recsys_assets.contract.limits import TrainingLimits
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.evaluation.batched import EvaluationConfig, users_with_truth
from recsys_assets.lib.models import catalog, sizing
from recsys_assets.lib.models.base import ProtocolData
from recsys_assets.lib.models.fitting import (
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
    """A small, budgeted Optuna search per model on the deciding split's validation part (temporal, or
    random for a log without time; never the test part). The best parameters go to
    `tuning/best_params.json`, which `model_candidates` reads. Run it with `make tune`; it is not part of
    the default pipeline job."""
    # RecBole, torch and Optuna load in the step that trains, not with the code location
    from recsys_assets.lib.models.candidates import recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config, search

    store = storage.get()
    evaluation = evaluation_config(settings)
    # the split the champion is chosen on: temporal, or random for a log without time
    protocol = S.deciding_protocol(interactions)
    pdata = prepare(interactions, items, users, protocol, seed=config.seed)
    context.log.info(f"searching on the {protocol} split's validation part")
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
SKIPPED = ("reports", "skipped_candidates.json")
HYBRID = "Hybrid"  # trained after the others: it blends the best collaborative candidate
SPLIT_FAILED = "(every model: the split)"
STEP_RESULTS_IO = "step_results"
COLLABORATIVE = (*catalog.EXPORTABLE, *catalog.IMPLICIT)  # what a hybrid may blend


def skipped_table(skipped: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(skipped, columns=["model", "protocol", "reason"])


def size_gate(
    context: dg.OpExecutionContext,
    settings: Settings,
    config: CandidatesConfig,
    pdata: ProtocolData,
    tuned: dict[str, Any],
    names: Sequence[str],
    only: str | None = None,
    splits: int | None = None,
) -> dict[str, sizing.Estimate]:
    """Every candidate's estimated peak memory and minutes on this split, checked against `settings.limits`
    with the evaluation's batches and user sample (`eval_*`), and together against this split's share of
    `limits.comparison_minutes`; each refused one (of `only` when given) is logged with its reason (it is then
    skipped, not trained)."""
    from recsys_assets.lib.models.tuning import model_config

    lim = settings.limits
    share = lim.comparison_minutes / max(splits or len(config.protocols), 1)  # shared evenly by the splits run
    limits = sizing.Limits(
        lim.max_memory_gb, lim.max_minutes, share, lim.ease_max_items, evaluation=evaluation_config(settings)
    )
    # RecBole's epochs from the budget; implicit's and the native models' own defaults (`sizing.estimate`)
    recbole = [n for n in names if n in sizing.RECBOLE]
    epochs = {n: int(model_config(n, config.budget, config.seed, tuned=tuned).get("epochs", 1)) for n in recbole}
    evaluated = len(users_with_truth(pdata.test_truth))
    shape = sizing.DataShape.of(pdata.data.matrix, len(pdata.split.train), evaluated_users=evaluated)
    out = {e.model: e for e in sizing.plan(names, shape, limits, threads=lim.training_threads(), epochs=epochs)}
    if only is None:  # the estimates, to hold against each step's measured time
        estimates = ", ".join(f"{e.model} {e.minutes:.2f} min {e.memory_gb:.1f} GB" for e in out.values())
        context.log.info(f"estimates on the {pdata.protocol} split ({limits.comparison_minutes:g} min): {estimates}")
    for e in out.values():
        if not e.fits and only in (None, e.model):
            context.log.warning(f"skipping {e.model} on the {pdata.protocol} split: {e.reason}")
    return out


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
    limits: TrainingLimits,
) -> Candidate:
    """One candidate fitted on `pdata` (a hybrid blends the best exportable collaborative one fitted so far,
    RecBole's or implicit's; implicit trains on `limits`' threads, EASE is refused above its item limit)."""
    from recsys_assets.lib.models.candidates import implicit_candidate, native_candidate, recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config

    if name == "Hybrid":
        cf = [c for c in cands if c.component is not None and c.name in COLLABORATIVE and c.name != "Pop"]
        best_cf = max(cf, key=lambda c: c.valid_ndcg10) if cf else None
        return native_candidate("Hybrid", pdata, best_cf, repeat=repeat, evaluation=evaluation)
    if name in catalog.NATIVE:
        return native_candidate(name, pdata, evaluation=evaluation)
    if name in catalog.IMPLICIT:
        threads = limits.training_threads()
        return implicit_candidate(name, pdata, threads=threads, seed=config.seed, evaluation=evaluation)
    kwargs = model_config(name, config.budget, config.seed, tuned=tuned)
    return recbole_candidate(RecBoleModelConfig(**kwargs), pdata, evaluation, limits.ease_max_items)


@dataclass
class ModelResult:
    """What one model's step hands on: its rows of the comparison per protocol, its failures, and its exportable
    collaborative candidates (without the model: the component, name and validation NDCG@10 a hybrid needs)."""

    name: str
    dataset_fingerprint: str = ""
    results: list[pd.DataFrame] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    collaborative: list[Candidate] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # over the size limits, with the reason
    protocols: list[str] = field(default_factory=list)  # the protocols this log has (no temporal without time)


def candidate_names(config: CandidatesConfig) -> list[str]:
    """Every model of the comparison, in the configured order, each once."""
    return list(dict.fromkeys([*config.models, *config.native_models]))


def train_model(
    context: dg.OpExecutionContext,
    name: str,
    config: CandidatesConfig,
    settings: Settings,
    store: Storage,
    mlflow: MlflowResource,
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    collaborative: Sequence[Candidate] = (),
    verdicts: Mapping[str, str | None] | None = None,
) -> ModelResult:
    """`name` fitted and evaluated on every protocol's split (split here, from the same seed, so each step
    sees the same splits), tracked in MLflow, its temporal artifact written; a failure is recorded.
    `verdicts`: the size gate's reason per protocol, decided once by `candidate_plan` (None: admitted); without
    them the gate runs here."""
    interactions, items, users = frames
    out = ModelResult(name, fingerprint(interactions))
    evaluation = evaluation_config(settings)
    tuned = tuned_params(store)
    names = candidate_names(config)
    step = f"[{names.index(name) + 1 if name in names else '?'}/{len(names)}]"
    out.protocols = S.protocols_for(interactions, config.protocols)
    mode, deciding = S.time_mode(interactions), S.deciding_protocol(interactions)
    for protocol in out.protocols:
        if verdicts is not None and verdicts.get(protocol):  # refused by the plan: not even split here
            out.skipped.append({"model": name, "protocol": protocol, "reason": verdicts[protocol]})
            continue
        try:
            pdata = prepare(interactions, items, users, protocol, seed=config.seed)
        except Exception as exc:  # one split failing must not lose the other's results
            out.failures.append(_failure(SPLIT_FAILED, protocol, exc))
            context.log.error(f"the {protocol} split failed, {name} is skipped on it: {out.failures[-1]['error']}")
            continue
        repeat = settings.evaluation_target != DISCOVERY and has_repeats(pdata)
        if verdicts is None:  # the whole comparison planned on this split, this model's verdict kept
            gate = size_gate(context, settings, config, pdata, tuned, names, only=name, splits=len(out.protocols))
            if not gate[name].fits:
                out.skipped.append({"model": name, "protocol": protocol, "reason": gate[name].reason})
                continue
        context.log.info(f"{step} training {name} on the {_split_line(pdata)}")
        try:
            cands = [c for c in collaborative if c.protocol == protocol]
            cand = _fit(name, pdata, cands, config, tuned, repeat, evaluation, settings.limits)
            res = evaluate_settings(cand.scores, pdata, cand.name, evaluation, lists_fn=cand.lists_fn)
        except Exception as exc:  # recorded; the other models and the reports go on
            out.failures.append(_failure(name, protocol, exc))
            context.log.error(f"{step} {name} failed on the {protocol} split: {out.failures[-1]['error']}")
            continue
        # what the promotion needs to refit this model on the latest data
        res["budget"] = config.budget
        res["collaborative"] = str(cand.params.get("collaborative", ""))
        res["time_mode"] = mode  # how the split was cut (the report states it)
        out.results.append(res)
        ndcg = metric_value(res, cand.name, "ndcg", 10, protocol)
        context.log.info(f"{step} {_result_line(cand, res, pdata)}")
        out.summary.append(
            {"model": cand.name, "protocol": protocol, "ndcg@10": ndcg, "train_seconds": cand.train_seconds}
        )
        artifact_path = None
        if protocol == deciding:
            art = serving_artifact(cand, pdata.data, out.dataset_fingerprint, metrics=artifact_metrics(res))
            if art is not None:
                write_to_storage(art, store, "candidates", cand.name)
                artifact_path = store.uri("candidates", cand.name)
        mlflow.tracker().log_training_run(
            model_name=cand.name,
            params={**cand.params, "protocol": protocol, "family": cand.family},
            metrics=res,
            dataset_fingerprint=out.dataset_fingerprint,
            protocol_tags={"protocol": protocol, "artifact": artifact_path or ""},
            duration_s=cand.train_seconds,
        )
        if cand.component is not None and cand.name in COLLABORATIVE:
            out.collaborative.append(replace(cand, model=None, extra={}))  # type: ignore[arg-type]
    return out


def _split_line(pdata: ProtocolData) -> str:
    """The split's sizes and the settings it is evaluated in, for the log."""
    head = f"{pdata.protocol}: {pdata.split.summary()}; "
    if not has_repeats(pdata):
        return head + "no test positive is an item the user had before: discovery setting only"
    return head + (
        f"{repeat_share(pdata):.1%} of test positives are items the user had before: "
        "evaluated in the discovery and the repeat settings"
    )


def _result_line(cand: Candidate, res: pd.DataFrame, pdata: ProtocolData) -> str:
    """One candidate's test NDCG@10 (and repeat NDCG@10), validation NDCG@10 and training time, for the log."""
    ndcg = metric_value(res, cand.name, "ndcg", 10, pdata.protocol)
    repeat = metric_value(res, cand.name, "ndcg", 10, pdata.protocol, setting=REPEAT) if has_repeats(pdata) else None
    return (
        f"{cand.name} ({pdata.protocol}): NDCG@10 {ndcg:.4f}"
        + ("" if repeat is None else f" (repeat {repeat:.4f})")
        + f", valid {cand.valid_ndcg10:.4f}, {cand.train_seconds:.1f}s"
        + (f" (blend search {search:.1f}s)" if (search := cand.model.search_seconds) else "")
    )
