"""The evaluation report: every candidate compared on one table and an offline HTML report."""

import json
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

from recsys_assets.contract.storage import Storage
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.defs.training import SKIPPED, skipped_table
from recsys_assets.lib.models.fitting import CHAMPION_METRIC
from recsys_assets.lib.reports.evaluation_report import render_evaluation_report

EVALUATION = "evaluation"


def champion_ranking(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of the champion metric (NDCG@10, temporal, all users), best model first."""
    metric, k, protocol = CHAMPION_METRIC
    sel = (
        (results["metric"] == metric)
        & (results["k"] == k)
        & (results["protocol"] == protocol)
        & (results["slice"] == "all")
    )
    return results[sel].sort_values("value", ascending=False)


def skipped_candidates(store: Storage, results: pd.DataFrame) -> pd.DataFrame:
    """The candidates `model_candidates` refused before training on these results' data (model, protocol, reason)."""
    fp = str(results["dataset_fingerprint"].iloc[0]) if len(results) else ""
    doc = json.loads(store.read_bytes(*SKIPPED)) if store.exists(*SKIPPED) else {}
    rows = doc.get("skipped", []) if doc.get("dataset_fingerprint") == fp else []
    return skipped_table(rows)


@dg.asset(group_name=EVALUATION, kinds={"html", "parquet", "mlflow"})
def evaluation_report(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    mlflow: MlflowResource,
    model_candidates: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """The comparison as a table (Parquet: model x metric x K x protocol x slice) and an offline HTML
    report with plots (`reports/evaluation_report.html`), both also logged to MLflow as the artifacts
    of an `evaluation report` run."""
    store = storage.get()
    skipped = skipped_candidates(store, model_candidates)
    html = render_evaluation_report(model_candidates, skipped=skipped)
    store.write_text(html, "reports", "evaluation_report.html")
    uri = store.uri("reports", "evaluation_report.html")
    context.log.info(f"evaluation report written to {uri}")
    ranking = champion_ranking(model_candidates)[["model", "value"]]
    fp = str(model_candidates["dataset_fingerprint"].iloc[0]) if len(model_candidates) else ""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "evaluation_report.html").write_text(html)
        model_candidates.to_parquet(Path(tmp) / "evaluation_report.parquet")
        run_id = mlflow.tracker().log_training_run(
            model_name="evaluation report",
            params={"models": sorted(model_candidates["model"].unique()), "champion_metric": "ndcg@10 temporal"},
            metrics=pd.DataFrame(columns=["metric", "k", "protocol", "slice", "value"]),
            dataset_fingerprint=fp,
            artifacts={"report": tmp},
        )
    return dg.Output(
        model_candidates,
        metadata={
            "report": dg.MetadataValue.path(uri),
            "ranking": dg.MetadataValue.md(ranking.to_markdown(index=False)),
            "mlflow_run_id": run_id,
            "skipped": dg.MetadataValue.md(skipped.to_markdown(index=False)),
        },
    )
