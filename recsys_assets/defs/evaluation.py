"""The evaluation report: every candidate compared on one table and an offline HTML report."""

import json
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.defs.training import FAILED_CANDIDATES, SKIPPED, skipped_table
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


@dg.asset(group_name=EVALUATION, kinds={"html", "parquet", "mlflow"})
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
    html = render_evaluation_report(model_candidates, target=target, failed=failed, skipped=skipped)
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
