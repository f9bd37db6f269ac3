"""Training, evaluation and promotion assets: candidates on both protocols, the evaluation report,
the challenger's serving artifact, and the champion (promoted only past a blocking check)."""

import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from recsys_assets.contract.artifact import (
    CHAMPION_POINTER,
    read_from_storage,
    read_pointer,
    save_artifact,
    write_to_storage,
)
from recsys_assets.contract.settings import Settings
from recsys_assets.defs import runs
from recsys_assets.defs.ingestion import STORAGE_RETRY
from recsys_assets.defs.resources import MlflowResource, StorageResource
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models.fitting import (
    CHAMPION_METRIC,
    Candidate,
    artifact_metrics,
    evaluate_artifact,
    evaluate_scores,
    fingerprint,
    metric_value,
    prepare,
    serving_artifact,
)
from recsys_assets.lib.reports.evaluation_report import render_evaluation_report

TRAINING = "training"
EVALUATION = "evaluation"
SERVING = "serving_artifacts"
TUNED_PARAMS = ("tuning", "best_params.json")

SEED = 2020
# Fewest events newer than the champion's data for a like-with-like comparison on them.
MIN_FRESH_EVENTS = 50

DEFAULT_MODELS = ["Pop", "ItemKNN", "EASE", "BPR", "NeuMF", "LightGCN", "MultiVAE", "SASRec"]


class TuningConfig(dg.Config):
    """The hyper-parameter search: which models, and trials per model (default: the documented budget)."""

    models: list[str] = Field(default_factory=lambda: ["ItemKNN", "EASE", "BPR", "LightGCN", "MultiVAE", "NeuMF"])
    trials: int | None = Field(default=None, description="Trials per model; None uses `tuning.TRIALS`.")
    seed: int = 2020


class CandidatesConfig(dg.Config):
    """Which models to train and compare, on which protocols, with which budget."""

    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS), description="RecBole models.")
    protocols: list[str] = Field(default_factory=lambda: list(S.PROTOCOLS), description="random and/or temporal.")
    native_models: list[str] = Field(
        default_factory=lambda: ["Popularity", "Content", "Hybrid"], description="Models trained without RecBole."
    )
    budget: str = Field(default="standard", description="`standard` (documented budgets) or `smoke` (tests).")
    seed: int = 2020


def build_training_assets(settings: Settings) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    from recsys_assets.lib.models.candidates import EXPORTABLE, native_candidate, recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config, search

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

    @dg.asset(group_name=TRAINING, kinds={"recbole", "mlflow"})
    def model_candidates(
        context: dg.AssetExecutionContext,
        config: CandidatesConfig,
        storage: StorageResource,
        mlflow: MlflowResource,
        interactions: pd.DataFrame,
        items: pd.DataFrame,
        users: pd.DataFrame,
    ) -> dg.Output[pd.DataFrame]:
        """Trains every candidate (RecBole models, popularity, content, hybrid) on the same splits of both
        protocols and evaluates each with one metrics implementation: model x metric x K x protocol x slice.
        Each training run is tracked in MLflow; the temporal protocol's exportable candidates are saved
        as serving artifacts under `candidates/`."""
        store = storage.get()
        fp = fingerprint(interactions)
        tuned = json.loads(store.read_bytes(*TUNED_PARAMS)) if store.exists(*TUNED_PARAMS) else {}
        if tuned:
            context.log.info(f"using tuned hyper-parameters for {sorted(tuned)}")
        results: list[pd.DataFrame] = []
        summary: list[dict[str, Any]] = []
        steps = len(config.protocols) * (len(config.models) + len(config.native_models))
        done = 0
        # a progress bar on a terminal (`make pipeline`); the Dagster log gets one line per step either way
        bar = tqdm(total=steps, desc="candidates", unit="model", disable=not sys.stderr.isatty())
        for protocol in config.protocols:
            pdata = prepare(interactions, items, users, protocol, seed=config.seed)
            context.log.info(f"{protocol}: {pdata.split.summary()}")
            cands: list[Candidate] = []
            for name in [*config.models, *config.native_models]:
                done += 1
                context.log.info(f"[{done}/{steps}] training {name} on the {protocol} split")
                if name == "Hybrid":
                    cf = [c for c in cands if c.component is not None and c.name in EXPORTABLE and c.name != "Pop"]
                    best_cf = max(cf, key=lambda c: c.valid_ndcg10) if cf else None
                    cand = native_candidate("Hybrid", pdata, best_cf)
                elif name in ("Popularity", "Content"):
                    cand = native_candidate(name, pdata)
                else:
                    kwargs = model_config(name, config.budget, config.seed, tuned=tuned)
                    cand = recbole_candidate(RecBoleModelConfig(**kwargs), pdata)
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
                mlflow.log_training_run(
                    model_name=cand.name,
                    params={**cand.params, "protocol": protocol, "family": cand.family},
                    metrics=res,
                    dataset_fingerprint=fp,
                    protocol_tags={"protocol": protocol, "artifact": artifact_path or ""},
                    duration_s=cand.train_seconds,
                )
        bar.close()
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
            },
        )

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
        html = render_evaluation_report(model_candidates)
        store.write_text(html, "reports", "evaluation_report.html")
        uri = store.uri("reports", "evaluation_report.html")
        context.log.info(f"evaluation report written to {uri}")
        ranking = champion_ranking(model_candidates)[["model", "value"]]
        fp = str(model_candidates["dataset_fingerprint"].iloc[0]) if len(model_candidates) else ""
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "evaluation_report.html").write_text(html)
            model_candidates.to_parquet(Path(tmp) / "evaluation_report.parquet")
            run_id = mlflow.log_training_run(
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
            },
        )

    @dg.asset(group_name=SERVING)
    def challenger_model(
        context: dg.AssetExecutionContext, storage: StorageResource, evaluation_report: pd.DataFrame
    ) -> dg.Output[pd.DataFrame]:
        """The best exportable candidate on the champion metric (NDCG@10, temporal split) and the runner-up,
        with their serving artifacts; promotion is decided by the blocking check below."""
        store = storage.get()
        protocol = CHAMPION_METRIC[2]
        ranked = champion_ranking(evaluation_report)
        rows = []
        for model in ranked["model"]:
            if store.exists("candidates", model, "manifest.json"):
                art = read_from_storage(store, "candidates", model)
                rows.append(
                    {
                        "model": model,
                        "model_version": art.model_version,
                        "ndcg@10": metric_value(evaluation_report, model, "ndcg", 10, protocol),
                        "map@10": metric_value(evaluation_report, model, "map", 10, protocol),
                        "artifact": store.uri("candidates", model),
                        "dataset_fingerprint": art.dataset_fingerprint,
                        **_refit_params(evaluation_report, model),
                    }
                )
        if not rows:
            raise dg.Failure("no candidate has a serving artifact: nothing to promote")
        table = pd.DataFrame(rows)
        context.log.info(f"challenger {table.iloc[0]['model']} (NDCG@10 {table.iloc[0]['ndcg@10']:.4f})")
        return dg.Output(
            table,
            metadata={
                "challenger": str(table.iloc[0]["model"]),
                "ranked": dg.MetadataValue.md(table.to_markdown(index=False)),
            },
        )

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
        storage: StorageResource,
        challenger_model: pd.DataFrame,
        evaluation_report: pd.DataFrame,
        interactions: pd.DataFrame,
        items: pd.DataFrame,
        users: pd.DataFrame,
    ) -> dg.AssetCheckResult:
        store = storage.get()
        metric, k, protocol = CHAMPION_METRIC
        best = challenger_model.iloc[0]
        baseline = max(
            metric_value(evaluation_report, m, metric, k, protocol)
            for m in ("Pop", "Popularity")
            if not np.isnan(metric_value(evaluation_report, m, metric, k, protocol))
        )
        current = read_pointer(store)
        current_value = challenger_value = float("nan")
        compared_on = "no champion yet"
        if current is not None:
            champion_art = read_from_storage(store, *current["path"])
            ts = pd.to_datetime(interactions["timestamp"], utc=True)
            data_until = pd.Timestamp(current["data_until"]) if current.get("data_until") else None
            old = interactions[(ts <= data_until).to_numpy()] if data_until is not None else interactions
            n_new = len(interactions) - len(old)
            if data_until is not None and n_new >= MIN_FRESH_EVENTS and len(old):
                # Like with like: the challenger's model trained exactly as the champion was, on the
                # champion's data, both scored on the events that came after it.
                pdata = prepare(interactions, items, users, protocol, ratios=(len(old), 0, n_new))
                from recsys_assets.lib.models.refit import refit_artifact

                challenger_art = refit_artifact(
                    str(best["model"]),
                    old,
                    items,
                    users,
                    tuned=_tuned(store),
                    budget=str(best.get("budget", "standard")),
                    seed=SEED,
                    hybrid_cf=str(best.get("collaborative", "")) or None,
                )
                compared_on = f"{n_new} events after the champion's data ({data_until}); both trained on it"
            else:
                # No new events: the temporal test part, where the champion may have trained on some
                # events (it can only look better there).
                pdata = prepare(interactions, items, users, protocol)
                challenger_art = read_from_storage(store, "candidates", str(best["model"]))
                compared_on = "the temporal test part (no newer events than the champion's data)"
            res = evaluate_artifact(champion_art, pdata, "champion")
            current_value = metric_value(res, "champion", metric, k, protocol)
            res = evaluate_artifact(challenger_art, pdata, "challenger")
            challenger_value = metric_value(res, "challenger", metric, k, protocol)
        beats_baseline = bool(best["ndcg@10"] >= baseline)
        floor = (1.0 - settings.promotion_margin) * current_value
        beats_champion = bool(np.isnan(current_value) or challenger_value >= floor)
        if not beats_baseline:
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
            },
        )

    @dg.asset(group_name=SERVING, kinds={"mlflow"}, deps=[challenger_model], retry_policy=STORAGE_RETRY)
    def champion_model(
        context: dg.AssetExecutionContext,
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
        the artifact goes to `artifacts/<version>/`, `artifacts/CHAMPION.json` points at it (the API
        hot-reloads from there), and MLflow registers it with alias `champion`; the runner-up (as
        evaluated) gets `challenger`."""
        from recsys_assets.lib.models.refit import refit_artifact

        store = storage.get()
        tuned = _tuned(store)
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
                )
                refit_seconds = time.perf_counter() - started
                context.log.info(
                    f"refitted {row['model']} on {len(interactions)} events in {refit_seconds:.1f}s "
                    f"(trained until {art.trained_until})"
                )
            else:
                art = evaluated
            write_to_storage(art, store, "artifacts", art.model_version)
            run_id = mlflow.log_training_run(
                model_name=f"{row['model']} ({alias})",
                params={"model_version": art.model_version, "trained_until": art.trained_until},
                metrics=pd.DataFrame(
                    [
                        {
                            "model": row["model"],
                            "metric": m,
                            "k": 10,
                            "protocol": "temporal",
                            "slice": "all",
                            "value": row[f"{m}@10"],
                        }
                        for m in ("ndcg", "map")
                    ]
                ),
                dataset_fingerprint=art.dataset_fingerprint,
            )
            with tempfile.TemporaryDirectory() as tmp:
                save_artifact(art, tmp)
                version = mlflow.register_artifact(tmp, run_id, alias)
            aliases[alias] = {"model": row["model"], "model_version": art.model_version, "registry_version": version}
            if rank == 0:
                pointer = {
                    "model": row["model"],
                    "model_version": art.model_version,
                    "path": ["artifacts", art.model_version],
                    "promoted_at": dt.datetime.now(dt.UTC).isoformat(),
                    "registry_version": version,
                    "ndcg@10": float(row["ndcg@10"]),
                    "trained_until": art.trained_until,
                    "data_until": str(pd.to_datetime(interactions["timestamp"], utc=True).max().isoformat()),
                    "refit_seconds": round(refit_seconds, 1),
                }
                store.write_text(json.dumps(pointer, indent=2), *CHAMPION_POINTER)
        runs.write_model_registry(store, mlflow)
        context.log.info(f"promoted {aliases}")
        champion = aliases["champion"]
        return dg.MaterializeResult(
            metadata={
                "aliases": dg.MetadataValue.json(aliases),
                "model_version": champion["model_version"],
                "refit_seconds": round(refit_seconds, 1),
            }
        )

    return [tuned_hyperparameters, model_candidates, evaluation_report, challenger_model, champion_model], [
        challenger_beats_baseline_and_champion
    ]


def _tuned(store: Any) -> dict[str, Any]:
    return json.loads(store.read_bytes(*TUNED_PARAMS)) if store.exists(*TUNED_PARAMS) else {}


def _refit_params(results: pd.DataFrame, model: str) -> dict[str, str]:
    rows = results[results["model"] == model]
    out = {"budget": "standard", "collaborative": ""}
    for col in out:
        if col in rows and len(rows) and pd.notna(rows[col].iloc[0]):
            out[col] = str(rows[col].iloc[0])
    return out


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
