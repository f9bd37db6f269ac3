"""The model the load generator loads the API with: a champion artifact under a storage folder (made by
the pipeline when missing), its lists timed in process, and the events the API logged."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsys_assets.contract.artifact import CHAMPION_POINTER
from recsys_assets.tools.services import PROJECT_ROOT

DEFAULT_STORAGE = Path(tempfile.gettempdir()) / "recsys-apibench-data"
CHAMPION_COMMAND = ("recsys_assets", "pipeline", "--budget", "smoke", "--models", "Pop,EASE,MultiVAE")


def ensure_champion(storage: Path, synthetic_items: int | None = None) -> None:
    """Make a champion artifact under `storage` unless there is one: with the pipeline (smoke budget),
    or a synthetic catalog of `synthetic_items` items (embedding + popularity, with its ANN index)."""
    if (storage / Path(*CHAMPION_POINTER)).is_file():
        return
    if synthetic_items:
        bench = ("recsys_assets.tools.candidates_bench", "synthetic", "--items", str(synthetic_items))
        print(f"no champion under {storage}: making a {synthetic_items}-item synthetic catalog", file=sys.stderr)
        cmd = [sys.executable, "-m", *bench, "--storage", str(storage), "--build-only"]
        subprocess.run(cmd, cwd=PROJECT_ROOT, check=True)
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {
        "RECSYS_STORAGE_URI": str(storage),
        "RECSYS_DAGSTER_HOME": f"{storage}.dagster",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
    }
    print(f"no champion under {storage}: running python -m {' '.join(CHAMPION_COMMAND)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", *CHAMPION_COMMAND], cwd=PROJECT_ROOT, env=env, check=True)


def load_champion(storage: Path) -> Any:
    """The champion artifact of `storage` as the API loads it (`serving.model.LoadedModel`, memory-mapped)."""
    from recsys_assets.contract.artifact import load_artifact, read_pointer
    from recsys_assets.contract.storage import Storage
    from serving.loaded import LoadedModel

    store = Storage.from_uri(str(storage))
    parts = tuple(read_pointer(store)["path"])
    return LoadedModel.build(load_artifact(str(storage / Path(*parts)), mmap=True), "/".join(parts))


def in_process_p50(model: Any, user_ids: Sequence[str], k: int = 10) -> dict[str, Any]:
    """Median time of one user's list without HTTP: `Scorer.topk_one` alone, and the API's
    `build_history` + `recommend` (reasons included), each path in its own loop, three rounds."""
    from threadpoolctl import threadpool_limits

    from recsys_assets.contract.settings import Settings

    weights = Settings(_env_file=None).event_weights  # type: ignore[call-arg]
    t_topk: list[float] = []
    t_recommend: list[float] = []
    # the BLAS threads of an API worker (`python -m serving` sets one)
    with threadpool_limits(blas_threads()):
        _time_lists(model, user_ids, k, weights, t_topk, t_recommend)
    return {
        "users": len(user_ids),
        "blas_threads": blas_threads(),
        "topk_one_p50_ms": round(statistics.median(t_topk) * 1e3, 3),
        "recommend_p50_ms": round(statistics.median(t_recommend) * 1e3, 3),
    }


def blas_threads() -> int:
    from serving.__main__ import BLAS_THREADS_ENV

    given = next((os.environ[n] for n in BLAS_THREADS_ENV if os.environ.get(n)), "1")
    return int(given)


def _time_lists(
    model: Any, user_ids: Sequence[str], k: int, weights: dict[str, float], t_topk: list, t_recommend: list
) -> None:
    from serving.recommend import build_history, recommend

    scorer, history = model.artifact.scorer, model.artifact.history
    for _ in range(3):
        for user_id in user_ids:
            u = model.user_index.get(user_id, -1)
            t0 = time.perf_counter()
            lo, hi = (history.indptr[u], history.indptr[u + 1]) if u >= 0 else (0, 0)
            idx, w = history.indices[lo:hi], history.data[lo:hi]
            scorer.topk_one(idx, w, k, user=u, exclude=idx)
            t_topk.append(time.perf_counter() - t0)
        for user_id in user_ids:
            t0 = time.perf_counter()
            recommend(model, build_history(model, user_id, [], weights), k, None, True)
            t_recommend.append(time.perf_counter() - t0)


def count_logged(events_dir: Path, prefix: str) -> tuple[int, int]:
    """(rows, distinct ids) of events whose id starts with `prefix`, over every segment."""
    rows, ids = 0, set()
    for path in sorted(events_dir.glob("events-*.csv")):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row["event_id"].startswith(prefix):
                    rows += 1
                    ids.add(row["event_id"])
    return rows, len(ids)
