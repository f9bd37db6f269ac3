"""Helpers for the API tests: a small real artifact, publishing it as champion, and real processes
(a `redis-server` and the API under uvicorn) started on free ports and stopped afterwards."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from recsys_assets.contract.artifact import ARRAYS, ServingArtifact, write_to_storage
from recsys_assets.contract.attribution import EVENT_LOG_COLUMNS
from recsys_assets.contract.exploration import sample_slot
from recsys_assets.contract.storage import Storage
from recsys_assets.tools.chaos import quick_hybrid
from tests.conftest import ROOT, free_port, wait_for_port

API_KEY = "test-events-key"
ADMIN_KEY = "test-admin-key"
API_KEYS = f"{API_KEY}:events,{ADMIN_KEY}:admin"
# three Star Wars films: a newcomer who clicks them should get science fiction, not the popular list
SCI_FI_CLICKS = ("50", "172", "181")


@functools.cache
def movielens_artifact() -> ServingArtifact:
    """A Hybrid (ItemKNN + content + popularity) trained on all of MovieLens-100k, in seconds."""
    return quick_hybrid("Hybrid-test-A")


def with_version(art: ServingArtifact, version: str) -> ServingArtifact:
    return dataclasses.replace(art, model_version=version)


def publish(storage_uri: str | Path, art: ServingArtifact, corrupt: bool = False) -> str:
    """Write the artifact under `artifacts/<version>/` (with damaged arrays if `corrupt`), then point
    the champion at it, as the pipeline's promotion does (the pointer last)."""
    store = Storage.from_uri(str(storage_uri))
    write_to_storage(art, store, "artifacts", art.model_version)
    if corrupt:
        arrays = Path(store.path("artifacts", art.model_version, ARRAYS))
        arrays.write_bytes(arrays.read_bytes()[:-64] + b"\0" * 64)
    body = {"model": art.model_name, "model_version": art.model_version, "path": ["artifacts", art.model_version]}
    store.write_text(json.dumps(body), "artifacts", "CHAMPION.json")
    return f"artifacts/{art.model_version}"


def read_segments(events_dir: Path) -> list[dict[str, str]]:
    """Every row of every event-log segment, as dicts."""
    import csv

    rows: list[dict[str, str]] = []
    for path in sorted(events_dir.glob("events-*.csv")):
        with path.open(newline="") as fh:
            rows.extend(csv.DictReader(fh))
    return rows


class RedisServer:
    """A real `redis-server` on a free port, without persistence; can be stopped and started again."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


class ApiProcess:
    """The API under uvicorn in a subprocess (its own session), logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1, via_module: bool = False) -> None:
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        self.env.update(env)
        self.env["RECSYS_API_PORT"] = str(self.port)
        self.env["RECSYS_API_WORKERS"] = str(workers)
        self.log_path = log_path
        self.workers = workers
        self.via_module = via_module
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiProcess:
        if self.via_module:
            cmd = [sys.executable, "-m", "serving"]
        else:
            cmd = [
                sys.executable,
                *("-m", "uvicorn", "--factory", "serving.app:create_app_from_env"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)),
            ]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port(self.port, timeout=timeout, proc=self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"API on {self.url} not ready; log:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self._log.close()
        self.proc = None


def api_env(storage: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of an API process on `storage` and `redis_url`: test keys, no rate limit, fast polls."""
    return {
        "RECSYS_STORAGE_URI": str(storage),
        "RECSYS_REDIS_URL": redis_url,
        "RECSYS_API_KEYS": API_KEYS,
        "RECSYS_RATE_LIMIT_PER_MINUTE": "0",
        "RECSYS_MODEL_POLL_SECONDS": "0.5",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def register_versions(tracking, folder: Path, aliases: dict[str, str], store: Storage | None = None) -> dict[str, str]:
    """Register a MovieLens hybrid per `aliases` entry (artifact version name -> registry alias) in the MLflow
    registry of `tracking`, the name as its model version; with `store`, also under its `artifacts/`, as a
    promotion writes them. Name -> registry version."""
    import pandas as pd

    from recsys_assets.contract.artifact import save_artifact

    versions = {}
    for name, alias in aliases.items():
        art = with_version(movielens_artifact(), name)
        save_artifact(art, str(folder / name))
        if store is not None:
            write_to_storage(art, store, "artifacts", name)
        row = {"model": name, "metric": "ndcg", "k": 10, "protocol": "temporal", "slice": "all", "value": 0.1}
        run_id = tracking.log_training_run(
            name, params={}, metrics=pd.DataFrame([row]), dataset_fingerprint=art.dataset_fingerprint
        )
        versions[name] = tracking.register_artifact(str(folder / name), run_id, alias)
    return versions


def exploring_log(
    art: ServingArtifact, n_lists: int, rng: np.random.Generator, k: int = 10, depth: int = 40, share: float = 0.5
) -> pd.DataFrame:
    """The event-log rows of `n_lists` lists `art` served to its first 300 users with the last of `k` slots explored
    (`share`, ranks up to `depth`): each list's impressions with propensities, and a click on 3% of them."""
    rows = []
    start = pd.Timestamp("2026-12-01T10:00", tz="UTC")
    for t in range(n_lists):
        u = t % 300
        lo, hi = art.history.indptr[u], art.history.indptr[u + 1]
        idx, w = art.history.indices[lo:hi], art.history.data[lo:hi]
        ranked = art.scorer.topk_one(idx, w, depth, exclude=idx)
        ranks, propensity = sample_slot(k, len(ranked), share, depth, rng)
        at = (start + pd.Timedelta(seconds=t)).isoformat()
        rec = f"rec{t}"
        policy = f"champion:{art.model_version}:slot{share:g}x{depth}"
        for pos, (r, p) in enumerate(zip(ranks.tolist(), propensity.tolist(), strict=True), 1):
            item = str(art.item_ids[ranked[r]])
            row = [str(art.user_ids[u]), item, "impression", at, str(pos), f"{rec}:{pos}", rec, art.model_version]
            rows.append([*row, "champion", policy, repr(p)])
            if rng.random() < 0.03:
                rows.append([str(art.user_ids[u]), item, "click", at, "", f"c{t}-{pos}", rec, "", "", "", ""])
    return pd.DataFrame(rows, columns=list(EVENT_LOG_COLUMNS))
