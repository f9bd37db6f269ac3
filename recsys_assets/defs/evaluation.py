"""The evaluation report: every candidate compared on one table and an offline HTML report, and each
candidate's clicks per list estimated off-policy on the champion's logged lists."""

import json
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

from recsys_assets.contract import attribution
from recsys_assets.contract.artifact import MANIFEST, read_from_storage
from recsys_assets.contract.events import ONLINE_ESTIMATES
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.defs.training import FAILED_CANDIDATES, SKIPPED, skipped_table
from recsys_assets.lib import live_windows as live
from recsys_assets.lib import off_policy
from recsys_assets.lib.models.fitting import DISCOVERY, effective_target, rank_models
from recsys_assets.lib.reports.evaluation_report import render_evaluation_report

EVALUATION = "evaluation"


def champion_ranking(results: pd.DataFrame, target: str = DISCOVERY) -> pd.DataFrame:
    """Every model with the champion metric (NDCG@10, temporal, all users) on the evaluation `target`
    (`discovery`, `repeat`, or `blended`: their mean), as `model`, `value`, best model first."""
    return rank_models(results, target)


def skipped_candidates(store: Storage, results: pd.DataFrame) -> pd.DataFrame:
    """The candidates `model_candidates` refused before training on these results' data (model, protocol, reason)."""
    fp = str(results["dataset_fingerprint"].iloc[0]) if len(results) else ""
    doc = json.loads(store.read_bytes(*SKIPPED)) if store.exists(*SKIPPED) else {}
    rows = doc.get("skipped", []) if doc.get("dataset_fingerprint") == fp else []
    return skipped_table(rows)


@dg.asset(group_name=EVALUATION, deps=[dg.AssetKey(live.LIVE_EVENTS)], kinds={"obp", "parquet"})
def online_estimates(
    context: dg.AssetExecutionContext,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    model_candidates: pd.DataFrame,
    interactions: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Each candidate's clicks per list (its list CTR when a list gets one click at most) estimated on the
    lists the champion served, from the stored live windows: the candidate ranks its own list for each logged
    one (the user's interactions before it was served, without the clicks the champion's own lists brought
    unless the candidate had shown those items too: `off_policy.candidate_lists`), and the estimators weight
    the logged clicks by the propensities the API logged (`ips`, its self-normalised `snips`, `dr`;
    `ips_position` and `rips` for a candidate that keeps the champion's order). Intervals: bootstrap over lists;
    `dr`'s over users, its reward model fitted again in each resample.
    Without exploration (`RECSYS_EXPLORATION`) only items the champion itself showed can be judged. Empty when
    the log holds fewer than `exploration.estimates.min_lists` champion lists."""
    store = storage.get()
    config = settings.exploration.estimates
    events = attribution.prepare_events(live.read_windows(store, live.stored_windows(store)))
    imps = off_policy.champion_impressions(events, config.max_lists)
    lists = off_policy.list_frame(imps)
    empty = pd.DataFrame(columns=list(off_policy.ESTIMATE_COLUMNS))
    if len(lists) < config.min_lists:
        context.log.info(f"{len(lists)} champion lists in the live windows (< {config.min_lists}): no estimate")
        return dg.Output(empty, metadata={"lists": len(lists), "estimated": 0})
    candidates = {}
    answers = off_policy.list_answers(events)
    for model in sorted(model_candidates["model"].unique()) if len(model_candidates) else []:
        if not store.exists("candidates", model, MANIFEST):
            continue
        art = read_from_storage(store, "candidates", model)
        rank = off_policy.artifact_ranker(art, config.exclude_seen)
        candidates[model] = off_policy.candidate_lists(rank, art.item_ids.tolist(), lists, interactions, answers)
    table = off_policy.estimate_table(
        imps, candidates, config.alpha, config.bootstrap, config.seed, once_per_user=config.once_per_user
    )
    # the candidates' clicks per list by `ips`, `snips` and `dr` side by side (`dr` is the one measured within
    # 20% of what a candidate realises as a canary on the ml-100k replay: docs/benchmarks.md)
    main = table[table["estimator"].isin(["ips", "snips", "dr"])]
    values = main.pivot(index="model", columns="estimator", values="value").reset_index() if len(main) else main
    return dg.Output(
        table if len(table) else empty,
        metadata={
            "lists": len(lists),
            "policies": dg.MetadataValue.json(sorted(imps["policy"].unique().tolist())),
            "estimated": len(candidates),
            "estimates": dg.MetadataValue.md(values.to_markdown(index=False, floatfmt=".4f")),
        },
    )


@dg.asset(group_name=EVALUATION, deps=[online_estimates], kinds={"html", "parquet", "mlflow"})
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    mlflow: MlflowResource,
    model_candidates: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """The comparison as a table (Parquet: model x metric x K x protocol x setting x slice) and an
    offline HTML report with plots (`reports/evaluation_report.html`): the discovery setting, and the
    repeat setting with the share of re-consumed test positives when people consume items again. Both
    are also logged to MLflow as the artifacts of an `evaluation report` run."""
    store = storage.get()
    skipped = skipped_candidates(store, model_candidates)
    target = effective_target(model_candidates, settings.evaluation_target)
    failed = json.loads(store.read_bytes(*FAILED_CANDIDATES)) if store.exists(*FAILED_CANDIDATES) else []
    # a dependency rather than an input: a run of the candidates and the report alone still renders it
    online = store.read_table(f"{ONLINE_ESTIMATES}.parquet") if store.exists(f"{ONLINE_ESTIMATES}.parquet") else None
    html = render_evaluation_report(model_candidates, target=target, failed=failed, skipped=skipped, online=online)
    store.write_text(html, "reports", "evaluation_report.html")
    uri = store.uri("reports", "evaluation_report.html")
    context.log.info(f"evaluation report written to {uri}")
    ranking = champion_ranking(model_candidates, target)
    fp = str(model_candidates["dataset_fingerprint"].iloc[0]) if len(model_candidates) else ""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "evaluation_report.html").write_text(html)
        model_candidates.to_parquet(Path(tmp) / "evaluation_report.parquet")
        run_id = mlflow.tracker().log_training_run(
            model_name="evaluation report",
            params={
                "models": sorted(model_candidates["model"].unique()),
                "champion_metric": f"ndcg@10 temporal {target}",
            },
            metrics=pd.DataFrame(columns=["metric", "k", "protocol", "slice", "value"]),
            dataset_fingerprint=fp,
            artifacts={"report": tmp},
        )
    return dg.Output(
        model_candidates,
        metadata={
            "report": dg.MetadataValue.path(uri),
            "ranking": dg.MetadataValue.md(ranking.to_markdown(index=False)),
            "evaluation_target": target,
            "mlflow_run_id": run_id,
            "skipped": dg.MetadataValue.md(skipped.to_markdown(index=False)),
        },
    )
