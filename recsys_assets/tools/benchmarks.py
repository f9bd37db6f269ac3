"""Benchmarks behind `make bench` (figures go to docs/benchmarks.md).

`scoring`: one user's top-10 from the serving artifact's scorer versus RecBole's `full_sort_topk`
on the same trained model, side by side in one process, median over a sample of users.
`comparison`: the wall time of the whole model comparison (both protocols) through the asset graph.
`loop`: drift appearing in the API's log -> the new champion serving, under `dagster dev` (daemon on).
`scale`: the whole pipeline on synthetic shop logs of 1M and 10M events (`tools.scale_bench`).
`incremental`: a 10-day log ingested in full against 9 days then the 10th (`tools.ingest_bench`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def bench_scoring(model: str = "BPR", epochs: int = 5, n_users: int = 200, seed: int = 0) -> dict[str, float | str]:
    from recsys_assets.contract.scoring import Component, Scorer
    from recsys_assets.lib.models.recbole_compat import patch_recbole
    from recsys_assets.lib.models.recbole_config import build_config, make_trainer

    patch_recbole()
    import torch
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed
    from recbole.utils.case_study import full_sort_topk

    with tempfile.TemporaryDirectory() as work:
        config = build_config(
            model,
            "ml-100k",
            {"use_gpu": False, "show_progress": False, "checkpoint_dir": work, "epochs": epochs, "stopping_step": 100},
        )
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        rec = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = make_trainer(config, rec)
        trainer.fit(train_data, valid_data, verbose=False, saved=False)
    rec.eval()

    n_items = dataset.item_num
    hist_items = test_data.uid2history_item
    rows, cols = [], []
    for uid in range(1, dataset.user_num):
        h = hist_items[uid]
        if h is not None and len(h):
            cols.extend((h.numpy() - 1).tolist())
            rows.extend([uid - 1] * len(h))
    # what RecBole masks (train + valid history) and what the model reads (the training matrix)
    seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(dataset.user_num - 1, n_items - 1))
    history = sp.csr_matrix(train_data.dataset.inter_matrix(form="csr").astype(np.float32))[1:, 1:]
    with torch.no_grad():
        if model == "BPR":
            comp = Component(
                "embedding",
                {
                    "user_factors": rec.user_embedding.weight[1:].numpy().copy(),
                    "item_factors": rec.item_embedding.weight[1:].numpy().copy(),
                },
            )
        elif model == "EASE":
            comp = Component("item_item", {"similarity": sp.csr_matrix(rec.item_similarity[1:, 1:])}, {"binary": 1})
        elif model == "MultiVAE":
            from recsys_assets.lib.models.recbole_recommender import autoencoder_component

            comp = autoencoder_component(rec, np.arange(n_items - 1))
        else:
            raise ValueError("scoring benchmark supports BPR, EASE and MultiVAE")
    scorer = Scorer({"m": comp}, {"m": 1.0})
    scorer.score_one(np.array([0]), np.ones(1), 0)  # build the component's caches before timing

    rng = np.random.default_rng(seed)
    users = rng.choice(np.arange(1, dataset.user_num), size=min(n_users, dataset.user_num - 1), replace=False)
    t_recbole, t_artifact, same = [], [], 0
    served: dict[int, np.ndarray] = {}
    # each path in its own loop (interleaving makes each evict the other's caches), three rounds
    for _ in range(3):
        for uid in users:
            t0 = time.perf_counter()
            _, top_r = full_sort_topk(np.array([uid]), rec, test_data, k=10, device=torch.device("cpu"))
            t_recbole.append(time.perf_counter() - t0)
            served[int(uid)] = top_r.numpy()[0] - 1
        for uid in users:
            u = uid - 1
            t0 = time.perf_counter()
            lo, hi = history.indptr[u], history.indptr[u + 1]
            hide = seen.indices[seen.indptr[u] : seen.indptr[u + 1]]
            top_a = scorer.topk_one(history.indices[lo:hi], history.data[lo:hi], 10, user=u, exclude=hide)
            t_artifact.append(time.perf_counter() - t0)
            same += int(np.array_equal(served[int(uid)], top_a))
    same //= 3
    med_r, med_a = statistics.median(t_recbole), statistics.median(t_artifact)
    return {
        "model": model,
        "users": len(users),
        "recbole_full_sort_topk_ms_p50": med_r * 1e3,
        "artifact_topk_ms_p50": med_a * 1e3,
        "speedup": med_r / med_a,
        "identical_top10_share": same / len(users),
        "torch_threads": torch.get_num_threads(),
    }


def bench_comparison(storage_uri: str, budget: str = "standard") -> dict[str, float | str | bool]:
    from recsys_assets.contract.settings import get_settings
    from recsys_assets.defs.definitions import PIPELINE_JOB, build_definitions

    defs = build_definitions(get_settings(storage_uri=storage_uri))
    job = defs.resolve_job_def(PIPELINE_JOB)
    t0 = time.perf_counter()
    result = job.execute_in_process(
        raise_on_error=False, run_config={"ops": {"model_candidates": {"config": {"budget": budget}}}}
    )
    total = time.perf_counter() - t0
    step_seconds = {}
    for ev in result.all_events:
        if ev.event_type_value == "STEP_SUCCESS":
            step_seconds[ev.step_key] = ev.event_specific_data.duration_ms / 1e3
    return {
        "success": result.success,
        "pipeline_seconds": total,
        # one step per model (`model_candidates.candidate[...]`), one after the other in this process
        "model_candidates_seconds": sum(v for k, v in step_seconds.items() if k.startswith("model_candidates."))
        or float("nan"),
    }


def bench_loop(work: str, budget: str = "standard", n_events: int = 2000, window_minutes: int = 1) -> dict:
    """Drift appearing in the log -> the new champion serving, with `dagster dev` (daemon) and the API
    as processes and nothing but the shifted events posted (`recsys_assets.tools.closed_loop`)."""
    import shutil

    from recsys_assets.contract.canary import CanaryConfig
    from recsys_assets.contract.settings import get_settings
    from recsys_assets.tools import closed_loop
    from recsys_assets.tools.pipeline import run_pipeline

    root = Path(work)
    shutil.rmtree(root, ignore_errors=True)
    settings = get_settings(
        storage_uri=str(root / "data"),
        dagster_home=str(root / "dagster"),
        events_dir=str(root / "events"),
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        drift_window_minutes=window_minutes,
        drift_window_grace_seconds=3,
        drift_sensor_seconds=5,
        model_poll_seconds=1,
        retrain_budget=budget,
        # the drift -> retrain -> serve latency: the winner is promoted at once, not put to a canary first
        canary=CanaryConfig(share=0.0, holdout_share=0.0),
    )
    t0 = time.perf_counter()
    candidates = {"budget": budget, "models": settings.retrain_models, "protocols": settings.retrain_protocols}
    if not run_pipeline(settings, candidates):
        raise RuntimeError("the initial pipeline failed")
    pipeline_seconds = time.perf_counter() - t0
    services = closed_loop.LoopServices(settings, root / "logs")
    with services.running():
        timeline = closed_loop.run_drift_scenario(settings, services, n_events=n_events)
    return {
        "budget": budget,
        "window_minutes": window_minutes,
        "retrain_models": settings.retrain_models,
        "initial_pipeline_seconds": round(pipeline_seconds, 1),
        **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in timeline.as_dict().items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_assets.tools.benchmarks", description=__doc__)
    parser.add_argument("which", choices=["scoring", "comparison", "loop", "scale", "incremental"])
    parser.add_argument("--model", default="BPR")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "recsys-bench"))
    parser.add_argument("--budget", default="standard")
    parser.add_argument("--events", type=int, default=2000, help="loop: events per window (reference and shifted)")
    parser.add_argument("--window-minutes", type=int, default=1, help="loop: live window length")
    parser.add_argument(
        "--sizes", default="1e6x1e5,1e7x1e6", help="scale: events x items per run, in order (stops at a failure)"
    )
    parser.add_argument("--guard-gb", type=float, default=20.0, help="scale: stop a run past this RSS")
    parser.add_argument("--timeout-minutes", type=float, default=0.0, help="scale: stop a run after this (0: never)")
    parser.add_argument(
        "--processes", type=int, default=0, help="scale: steps at once, multiprocess executor (0: in process)"
    )
    parser.add_argument("--log-events", type=float, default=1e6, help="incremental: events of the 10-day log")
    parser.add_argument("--repeats", type=int, default=3, help="incremental: runs of each ingestion (median)")
    args = parser.parse_args(argv)
    if args.which == "scale":
        from recsys_assets.tools.scale_bench import bench_scale

        sizes = tuple(tuple(int(float(v)) for v in size.split("x")) for size in args.sizes.split(","))
        out = bench_scale(args.storage, sizes, args.guard_gb, args.timeout_minutes, args.processes)  # type: ignore[arg-type]
    elif args.which == "incremental":
        from recsys_assets.tools.ingest_bench import bench_incremental

        out = bench_incremental(args.storage, events=int(args.log_events), repeats=args.repeats)
    elif args.which == "scoring":
        out = bench_scoring(args.model, args.epochs)
    elif args.which == "loop":
        out = bench_loop(args.storage, args.budget, args.events, args.window_minutes)
    else:
        out = bench_comparison(args.storage, args.budget)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
