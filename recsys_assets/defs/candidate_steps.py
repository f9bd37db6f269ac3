"""The candidate comparison as a graph of steps (`model_candidates`): the plan (every candidate's size and
time verdict on every split, decided once), one step per admitted model (side by side under the
multiprocess executor, one pod each on Kubernetes), the hybrid, and the table. Training itself is
`training.train_model`."""

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd

from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.executors import step_threads, thread_limits
from recsys_assets.defs.resources import STEP_RESULTS, MlflowResource, StorageResource
from recsys_assets.defs.training import (
    FAILED_CANDIDATES,
    HYBRID,
    PARTIAL_CANDIDATES,
    SKIPPED,
    STEP_RESULTS_IO,
    TRAINING,
    CandidatesConfig,
    ModelResult,
    candidate_names,
    prepare,
    size_gate,
    skipped_table,
    train_model,
    tuned_params,
)
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models.fitting import CHAMPION_METRIC

Verdicts = dict[str, dict[str, str | None]]  # model -> protocol -> why it is skipped there (None: it trains)


def plan_verdicts(
    context: dg.OpExecutionContext,
    config: CandidatesConfig,
    settings: Settings,
    store: Storage,
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> Verdicts:
    """The size gate of every candidate on every split, decided once: each split is cut here once, not once
    per model step (at 10M events a split takes tens of seconds). A split that fails is left out (each
    step records the failure itself)."""
    interactions, items, users = frames
    names = candidate_names(config)
    tuned = tuned_params(store)
    protocols = S.protocols_for(interactions, config.protocols)
    verdicts: Verdicts = {n: {} for n in names}
    for protocol in protocols:
        try:
            pdata = prepare(interactions, items, users, protocol, seed=config.seed)
        except Exception as exc:  # the steps split again and record it
            context.log.warning(f"the {protocol} split failed while planning: {type(exc).__name__}: {exc}")
            continue
        gate = size_gate(context, settings, config, pdata, tuned, names, splits=len(protocols))
        for name, est in gate.items():
            verdicts[name][protocol] = est.reason
        del pdata
    return verdicts


def _admitted(verdicts: Mapping[str, str | None]) -> bool:
    """A model trains somewhere: on a split it was admitted, or one the plan could not cut."""
    return not verdicts or any(reason is None for reason in verdicts.values())


@dg.op(
    out={
        "models": dg.DynamicOut(str, io_manager_key=STEP_RESULTS_IO),
        "verdicts": dg.Out(io_manager_key=STEP_RESULTS_IO),
    }
)
def candidate_plan(
    context: dg.OpExecutionContext,
    config: CandidatesConfig,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
) -> Iterator[dg.DynamicOutput[str] | dg.Output[Verdicts]]:
    """The size gate of every candidate on every split (`plan_verdicts`), then one step per model admitted on
    at least one split; the hybrid is trained after them (it blends the best collaborative one). A model
    refused everywhere gets no step: its reasons reach the table through `verdicts`."""
    verdicts = plan_verdicts(context, config, settings, storage.get(), (interactions, items, users))
    yield dg.Output(verdicts, output_name="verdicts")
    names = [n for n in candidate_names(config) if n != HYBRID and _admitted(verdicts[n])]
    context.log.info(f"{len(names)} candidate steps: {', '.join(names) or 'none'}")
    keys: set[str] = set()
    for i, name in enumerate(names):
        key = re.sub(r"[^A-Za-z0-9_]", "_", name)  # a step key names the model where Dagster allows it
        key = f"{key}_{i}" if key in keys else key
        keys.add(key)
        yield dg.DynamicOutput(name, mapping_key=key, output_name="models")


@dg.op(out=dg.Out(io_manager_key=STEP_RESULTS_IO), tags={"kind": "recbole"})
def candidate(
    context: dg.OpExecutionContext,
    config: CandidatesConfig,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    mlflow: MlflowResource,
    name: str,
    verdicts: Verdicts,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
) -> ModelResult:
    """One model trained and evaluated on every protocol (a step of its own: in its own process or pod)."""
    frames = (interactions, items, users)
    with thread_limits(step_threads(settings)):
        return train_model(context, name, config, settings, storage.get(), mlflow, frames, verdicts=verdicts[name])


@dg.op(out=dg.Out(io_manager_key=STEP_RESULTS_IO))
def hybrid_candidate(
    context: dg.OpExecutionContext,
    config: CandidatesConfig,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    mlflow: MlflowResource,
    trained: list,
    verdicts: Verdicts,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
) -> ModelResult:
    """The hybrid, when configured: it blends the best exportable collaborative candidate listed before it."""
    names = candidate_names(config)
    if HYBRID not in names:
        return ModelResult(HYBRID)
    before = set(names[: names.index(HYBRID)])
    collaborative = [c for r in trained if r.name in before for c in r.collaborative]
    with thread_limits(step_threads(settings)):
        frames = (interactions, items, users)
        store = storage.get()
        return train_model(context, HYBRID, config, settings, store, mlflow, frames, collaborative, verdicts[HYBRID])


@dg.op
def candidates_table(
    context: dg.OpExecutionContext,
    config: CandidatesConfig,
    storage: StorageResource,
    trained: list,
    hybrid: ModelResult,
    verdicts: Verdicts,
) -> dg.Output[pd.DataFrame]:
    """Every step's rows in one table, in the order one process trains them (protocol, then model), with the
    models the plan refused on every split (they had no step)."""
    store = storage.get()
    names = candidate_names(config)
    refused = [
        ModelResult(n, skipped=[{"model": n, "protocol": p, "reason": r} for p, r in verdicts[n].items()])
        for n in names
        if n != HYBRID and not _admitted(verdicts[n])
    ]
    steps = sorted([*trained, *refused, hybrid], key=lambda r: names.index(r.name) if r.name in names else len(names))
    order = {p: i for i, p in enumerate(config.protocols)}

    def protocol_first(pairs: list[tuple[int, Any, str]]) -> list[Any]:
        return [v for _, v, _ in sorted(pairs, key=lambda t: (order.get(t[2], len(order)), t[0]))]

    results = protocol_first([(i, r, str(r["protocol"].iloc[0])) for i, s in enumerate(steps) for r in s.results])
    summary = protocol_first([(i, r, r["protocol"]) for i, s in enumerate(steps) for r in s.summary])
    failures = protocol_first([(i, f, f["protocol"]) for i, s in enumerate(steps) for f in s.failures])
    failures = [dict(t) for t in dict.fromkeys(tuple(f.items()) for f in failures)]  # a split fails once
    skipped = protocol_first([(i, k, k["protocol"]) for i, s in enumerate(steps) for k in s.skipped])
    protocols = [p for p in config.protocols if any(p in s.protocols for s in steps)] or list(config.protocols)
    if protocols != list(config.protocols):
        context.log.warning(S.NO_TIME_NOTE)
    fp = next((s.dataset_fingerprint for s in steps if s.dataset_fingerprint), "")
    store.write_text(json.dumps(failures, indent=2), *FAILED_CANDIDATES)
    store.write_text(json.dumps({"dataset_fingerprint": fp, "skipped": skipped}, indent=2), *SKIPPED)
    if results:  # what finished stays readable even if the step fails below
        store.write_table(pd.concat(results, ignore_index=True), *PARTIAL_CANDIDATES)
    _fail_when_nothing_to_choose(results, failures, protocols, store.uri(*PARTIAL_CANDIDATES), skipped)
    table = pd.concat(results, ignore_index=True)
    table["dataset_fingerprint"] = fp
    wide = pd.DataFrame(summary).pivot_table(index="model", columns="protocol", values="ndcg@10")
    if store.exists(STEP_RESULTS, context.run_id):  # the hand-over files of this run's steps are spent
        store.fs.rm(store.path(STEP_RESULTS, context.run_id), recursive=True)
    return dg.Output(
        table,
        metadata={
            "dataset_fingerprint": fp,
            "ndcg@10": dg.MetadataValue.md(wide.round(4).to_markdown()),
            "train_seconds": dg.MetadataValue.json(
                {f"{s['model']}/{s['protocol']}": round(s["train_seconds"], 1) for s in summary}
            ),
            "failed": dg.MetadataValue.md(pd.DataFrame(failures).to_markdown(index=False) if failures else "none"),
            "skipped": dg.MetadataValue.md(skipped_table(skipped).to_markdown(index=False) if skipped else "none"),
        },
    )


@dg.config_mapping
def _candidates_config(config: CandidatesConfig) -> dict[str, Any]:
    """`ops: model_candidates: config:` as before the split: the same values for every step."""
    values = {"config": config.model_dump()}
    return {op: values for op in ("candidate_plan", "candidate", "hybrid_candidate", "candidates_table")}


@dg.graph_asset(group_name=TRAINING, kinds={"recbole", "mlflow"}, config=_candidates_config)
def model_candidates(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """Trains every candidate (RecBole models, popularity, content, BuyAgain, hybrid) on the same splits of
    both protocols and evaluates each with one metrics implementation: model x metric x K x protocol x
    setting (discovery; and repeat when people consume items again) x slice. One step per model (side by
    side under the multiprocess executor, one pod each on Kubernetes), then the hybrid, which blends the best
    collaborative one, then this table. Each training run is tracked in MLflow; the temporal protocol's
    exportable candidates are saved as serving artifacts under `candidates/`. A model or split that fails
    is recorded (`reports/failed_candidates.json`) and the others go on; the step fails only when no
    candidate, or none on the champion's split, succeeded."""
    models, verdicts = candidate_plan(interactions, items, users)
    trained = models.map(lambda name: candidate(name, verdicts, interactions, items, users)).collect()
    hybrid = hybrid_candidate(trained, verdicts, interactions, items, users)
    return candidates_table(trained, hybrid, verdicts)


def _fail_when_nothing_to_choose(
    results: list[pd.DataFrame],
    failures: list[dict[str, str]],
    protocols: list[str],
    finished: str,
    skipped: list[dict[str, Any]] | None = None,
) -> None:
    """Raise, naming every failure and every candidate skipped over the size limits, when no candidate
    succeeded or none did on the champion's split."""
    listed = "; ".join(
        [f"{f['model']} on the {f['protocol']} split: {f['error']}" for f in failures]
        + [
            f"{s['model']} on the {s['protocol']} split skipped (RECSYS_LIMITS__*): {s['reason']}"
            for s in skipped or []
        ]
    )
    if not results:
        raise dg.Failure(f"no candidate could be trained and evaluated ({listed})")
    champion_protocol = CHAMPION_METRIC[2]
    done = {p for r in results for p in r["protocol"].unique()}
    if champion_protocol in protocols and champion_protocol not in done:
        raise dg.Failure(
            f"no candidate succeeded on the {champion_protocol} split, on which the champion is chosen ({listed}); "
            f"the results that finished are in {finished}"
        )
