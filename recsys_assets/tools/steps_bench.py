"""The per-model steps' local speed-up: `model_candidates` (one step per model) run through the same
`execute_job` path with the in-process executor, then with the multiprocess one (`--processes` steps at
once), alternately, on data ingested once. Reports each run's wall time, the candidate steps' span, the
peak resident memory of the whole process tree (sampled), and whether the two executors produced the same
table. Figures in docs/benchmarks.md ("Per-model steps").

    python -m recsys_assets.tools.steps_bench --storage /tmp/recsys-steps-bench --budget smoke --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

CANDIDATES = "model_candidates"


def pipeline_job() -> Any:
    """The pipeline job, rebuilt from `RECSYS_*` in every step process."""
    from recsys_assets.contract.settings import get_settings
    from recsys_assets.defs.definitions import PIPELINE_JOB, build_definitions

    return build_definitions(get_settings()).resolve_job_def(PIPELINE_JOB)


class TreeMemory:
    """Peak resident memory of this process and its descendants together, sampled every `every` seconds."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a step process that just ended
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_once(root: Path, executor: str, processes: int, config: dict[str, Any], label: str) -> dict[str, Any]:
    """One materialization of `model_candidates` with `executor`; its figures."""
    import dagster as dg

    os.environ["RECSYS_EXECUTOR"] = executor
    os.environ["RECSYS_EXECUTOR_MAX_CONCURRENT"] = str(processes)
    home = root / "instances" / label
    home.mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.local_temp(str(home)) as instance, TreeMemory() as memory:
        t0 = time.perf_counter()
        result = dg.execute_job(
            dg.reconstructable(pipeline_job),
            instance=instance,
            asset_selection=[dg.AssetKey(CANDIDATES)],
            run_config={"ops": {CANDIDATES: {"config": config}}},
        )
        wall = time.perf_counter() - t0
        start, end = [], []
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event is not None and (event.step_key or "").startswith(f"{CANDIDATES}."):
                if event.event_type_value == "STEP_START":
                    start.append(entry.timestamp)
                elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                    end.append(entry.timestamp)
    return {
        "executor": executor,
        "processes": processes if executor == "multiprocess" else 1,
        "success": result.success,
        "wall_seconds": round(wall, 1),
        "steps_span_seconds": round(max(end) - min(start), 1) if start and end else float("nan"),
        "peak_tree_rss_gb": round(memory.peak / 2**30, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_assets.tools.steps_bench", description=__doc__)
    parser.add_argument("--storage", default="/tmp/recsys-steps-bench")
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=None, help="RecBole models, comma-separated (default: the default list)")
    args = parser.parse_args(argv)

    import shutil

    from recsys_assets.contract.settings import get_settings
    from recsys_assets.contract.storage import Storage
    from recsys_assets.defs.definitions import INGESTION_JOB, build_definitions

    root = Path(args.storage)
    shutil.rmtree(root, ignore_errors=True)
    for key in [k for k in os.environ if k.startswith("RECSYS_")]:
        del os.environ[key]
    os.environ["RECSYS_STORAGE_URI"] = str(root / "data")
    os.environ["RECSYS_DAGSTER_HOME"] = str(root / "dagster")
    settings = get_settings()
    if not build_definitions(settings).resolve_job_def(INGESTION_JOB).execute_in_process().success:
        raise RuntimeError("ingestion failed")
    config: dict[str, Any] = {"budget": args.budget}
    if args.models:
        config["models"] = args.models.split(",")
    store = Storage.from_settings(settings)
    runs, tables = [], {}
    for i in range(args.repeats):
        for executor in ("in_process", "multiprocess"):
            out = run_once(root, executor, args.processes, config, f"{executor}-{i}")
            print(json.dumps(out), flush=True)
            runs.append(out)
            tables[executor] = store.read_table(f"{CANDIDATES}.parquet").drop(columns="dataset_fingerprint")
    same = tables["in_process"].equals(tables["multiprocess"])
    a, b = tables["in_process"], tables["multiprocess"]
    gap = float((a["value"] - b["value"]).abs().max()) if a.shape == b.shape else float("nan")

    def median(executor: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["executor"] == executor)

    summary = {
        "budget": args.budget,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "in_process_wall_s": median("in_process", "wall_seconds"),
        "multiprocess_wall_s": median("multiprocess", "wall_seconds"),
        "speedup": round(median("in_process", "wall_seconds") / median("multiprocess", "wall_seconds"), 2),
        "in_process_peak_tree_rss_gb": median("in_process", "peak_tree_rss_gb"),
        "multiprocess_peak_tree_rss_gb": median("multiprocess", "peak_tree_rss_gb"),
        "same_table": same,
        "max_abs_metric_difference": gap,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
