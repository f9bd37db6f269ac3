"""Chaos benchmark of the recommendation API: `python -m recsys_assets.tools.chaos` (`make chaos`).

What users run (`redis-server` and `python -m serving` with 2 workers, the rate limit on at a level
the load stays under) under a steady open-loop load, while faults are injected on a schedule:

* `kill_worker`: kill -9 of one worker (its master starts another);
* `redis_restart`: Redis stopped, and started again 10 s later on the same port, empty;
* `bad_promotion`: a damaged artifact (its checksum recomputed, so only reading it fails) promoted
  as champion by rewriting `artifacts/CHAMPION.json`;
* `kill_worker` again: the new worker starts while the pointer names the damaged artifact.

The load: `--rate` requests/s, `--event-share` of them click events with unique `event_id`s (the
rest lists for the artifact's users), each scheduled at a fixed time whatever the answers, on
keep-alive connections; nothing is retried but what any HTTP client does (aiohttp sends a GET again,
once, when its kept-alive connection turns out closed: RFC 9112, 9.3.1). Figures: availability
(answers 200/202 over all requests; a timeout, a connection reset or any other status counts
against it), per fault the failed requests scheduled from 5 s before it to 10 s after it,
acknowledged events missing from the event log after the run (every `event_id` answered 202 looked
up in the segments), events stored twice, and what serves at
the end. The champion is copied from `--storage` (built there first if it has none: a quick Hybrid of
item-kNN, content and popularity over MovieLens-100k) into the work folder, so no other storage is
touched. Only 127.0.0.1 is loaded; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_assets.contract.artifact import ARRAYS, CHAMPION_POINTER, MANIFEST, read_pointer
from recsys_assets.contract.storage import Storage
from recsys_assets.tools.services import (
    free_port,
    http_ok,
    redis_command,
    spawn,
    stop_all,
    wait_for_port,
    wait_http,
    worker_pids,
)

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "chaos-events-key"
DEFAULT_STORAGE = Path(tempfile.gettempdir()) / "recsys-chaos-data"


def progress(text: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- the champion ---------------------------------------------------------------------------------


def item_knn(matrix: Any, neighbours: int) -> Any:
    """Cosine item-item similarity on 0/1 interactions, `neighbours` best per item (ItemKNN), as CSR."""
    import numpy as np
    import scipy.sparse as sp

    x = matrix.sign().astype(np.float64).tocsc()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0))).ravel()
    norms[norms == 0] = 1.0
    sim = (x.T @ x).toarray() / np.outer(norms, norms)
    np.fill_diagonal(sim, 0.0)
    keep = np.argpartition(-sim, neighbours, axis=1)[:, :neighbours]
    rows = np.repeat(np.arange(sim.shape[0]), neighbours)
    out = sp.csr_matrix((sim[rows, keep.ravel()], (rows, keep.ravel())), shape=sim.shape, dtype=np.float32)
    out.eliminate_zeros()
    return out


def quick_hybrid(version: str) -> Any:
    """A Hybrid (item-kNN + content + popularity) on all of MovieLens-100k, built in seconds without the
    pipeline: the champion of the chaos run and of the API tests (`ServingArtifact`)."""
    from recsys_assets.contract.artifact import ServingArtifact
    from recsys_assets.contract.scoring import Component
    from recsys_assets.contract.settings import Settings
    from recsys_assets.lib.ingest import cleaning, readers
    from recsys_assets.lib.models.base import TrainData
    from recsys_assets.lib.models.native import HybridModel

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    raw, items, users = readers.read_movielens()
    inter = cleaning.clean_events(raw, settings.cleaning()).interactions
    items_t, users_t = cleaning.build_items(inter, items), cleaning.build_users(inter, users)
    data = TrainData.build(inter, items_t, users_t)
    component = Component("item_item", {"similarity": item_knn(data.matrix, 50)}, {"binary": 1})
    hybrid = HybridModel(collaborative=component, collaborative_name="ItemKNN").fit(data)
    return ServingArtifact(
        model_name="Hybrid",
        model_version=version,
        scorer=hybrid.scorer,
        user_ids=users_t["user_id"].to_numpy(dtype=str),
        item_ids=items_t["item_id"].to_numpy(dtype=str),
        history=data.matrix,
        item_titles=items_t["title"].fillna("").astype(str).to_numpy(),
        item_categories=items_t["categories"].fillna("").astype(str).to_numpy(),
    )


def quick_champion(storage: Path) -> None:
    """`quick_hybrid` published as the champion of `storage`."""
    from recsys_assets.contract.artifact import write_to_storage

    progress(f"no champion under {storage}: building a quick Hybrid over MovieLens-100k")
    version = f"Hybrid-chaos-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}"
    store = Storage.from_uri(str(storage))
    write_to_storage(quick_hybrid(version), store, "artifacts", version)
    point(store, version)


def damage_keeping_checksum(folder: Path) -> None:
    """Flip bytes inside the artifact's arrays.npz and write the manifest's sha256 of the damaged file."""
    data = bytearray((folder / ARRAYS).read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    (folder / ARRAYS).write_bytes(bytes(data))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))


def point(store: Storage, version: str) -> None:
    body = {"model_version": version, "path": ["artifacts", version]}
    store.write_text(json.dumps(body), *CHAMPION_POINTER)


def prepare(source: Path, work: Path) -> tuple[Storage, str, list[str], list[str]]:
    """Copy the champion of `source` into `work/data`; (storage, version, user ids, item ids)."""
    if read_pointer(Storage.from_uri(str(source))) is None:
        quick_champion(source)
    pointer = read_pointer(Storage.from_uri(str(source)))
    assert pointer is not None
    folder = Path(source, *pointer["path"])
    version = folder.name
    target = work / "data"
    shutil.copytree(folder, target / "artifacts" / version)
    store = Storage.from_uri(str(target))
    point(store, version)
    import numpy as np

    with np.load(target / "artifacts" / version / ARRAYS) as npz:
        return store, version, npz["user_ids"].tolist(), npz["item_ids"].tolist()


def promote_damaged(store: Storage, version: str) -> str:
    """A copy of the champion with bytes of arrays.npz flipped and the checksum recomputed, as champion."""
    bad = f"{version}-damaged"
    src, dst = Path(store.path("artifacts", version)), Path(store.path("artifacts", bad))
    shutil.copytree(src, dst)
    damage_keeping_checksum(dst)
    point(store, bad)
    return bad


# --- processes --------------------------------------------------------------------------------------


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM to a process group started here (the API's master drains its workers), SIGKILL after 15 s."""
    if proc is not None and proc.poll() is None:
        stop_all([proc], timeout=15, sig=signal.SIGTERM)


@dataclass
class Stack:
    work: Path
    storage: Storage
    workers: int
    rate_limit: int
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    redis: subprocess.Popen | None = None
    api: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def events_dir(self) -> Path:
        return self.work / "events"

    def start_redis(self) -> None:
        self.redis = spawn(redis_command(self.redis_port))
        wait_for_port(self.redis_port, 30, self.redis)

    def start_api(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env |= {
            "RECSYS_STORAGE_URI": self.storage.root,
            "RECSYS_EVENTS_DIR": str(self.events_dir),
            "RECSYS_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "RECSYS_API_KEYS": f"{API_KEY}:events",
            "RECSYS_API_HOST": "127.0.0.1",
            "RECSYS_API_PORT": str(self.api_port),
            "RECSYS_API_WORKERS": str(self.workers),
            "RECSYS_RATE_LIMIT_PER_MINUTE": str(self.rate_limit),
            "RECSYS_MODEL_POLL_SECONDS": "1",
        }
        self.api = spawn([sys.executable, "-m", "serving"], env, log=self.work / "api.log")
        wait_for_port(self.api_port, 120, self.api)
        wait_http(f"{self.url}/ready", self.api, 120, f"the API (log: {self.work / 'api.log'})")

    def ready(self) -> bool:
        return http_ok(f"{self.url}/ready")

    def workers_pids(self) -> list[int]:
        assert self.api is not None
        return worker_pids(self.api.pid)

    def close(self) -> None:
        stop(self.api)
        stop(self.redis)


# --- load -------------------------------------------------------------------------------------------


@dataclass
class Answer:
    at: float  # scheduled, seconds from the start
    kind: str  # "get" or "post"
    status: int  # 0: no answer
    latency: float
    error: str | None
    event_id: str | None = None


async def load(url: str, users: list[str], items: list[str], args: argparse.Namespace, faults) -> list[Answer]:
    """Open loop: request i is sent at start + i / rate whatever happened before; faults run on the side."""
    import aiohttp

    rng = random.Random(args.seed)
    tag = uuid.uuid4().hex[:6]
    answers: list[Answer] = []
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=args.timeout)

    async def one(session: aiohttp.ClientSession, i: int, at: float) -> None:
        t0 = start + at
        event_id = None
        try:
            if rng.random() < args.event_share:
                kind, event_id = "post", f"chaos-{tag}-{i}"
                body = {"user_id": rng.choice(users), "item_id": rng.choice(items), "event_type": "click"}
                async with session.post("/v1/events", json={**body, "event_id": event_id}, headers=headers) as r:
                    await r.read()
                    status, ok = r.status, r.status == 202
            else:
                kind = "get"
                async with session.get(f"/v1/users/{rng.choice(users)}/recommendations?k=10") as r:
                    await r.read()
                    status, ok = r.status, r.status == 200
            error = None if ok else f"HTTP {status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = "post" if event_id else "get"
            status, error = 0, type(exc).__name__
        answers.append(Answer(at, kind, status, time.perf_counter() - t0, error, event_id))

    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.05
        side = asyncio.create_task(faults(start))
        tasks = set()
        for i in range(int(args.rate * args.duration)):
            at = i / args.rate
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(session, i, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(list(tasks))
        await side
    return sorted(answers, key=lambda a: a.at)


# --- faults and figures -----------------------------------------------------------------------------


def schedule(duration: float) -> list[tuple[float, str]]:
    """(seconds from the start, fault), spread over the run with quiet time between."""
    return [
        (0.15 * duration, "kill_worker"),
        (0.35 * duration, "redis_restart"),
        (0.6 * duration, "bad_promotion"),
        (0.8 * duration, "kill_worker"),
    ]


def make_faults(stack: Stack, version: str, plan: list[tuple[float, str]], log: list[dict[str, Any]]):
    async def run(start: float) -> None:
        for at, fault in plan:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            entry: dict[str, Any] = {"at_s": round(time.perf_counter() - start, 1), "fault": fault}
            if fault == "kill_worker":
                victim = stack.workers_pids()[0]
                os.kill(victim, signal.SIGKILL)
                entry["pid"] = victim
                t0 = time.perf_counter()
                while len(stack.workers_pids()) < stack.workers or victim in stack.workers_pids():
                    await asyncio.sleep(0.05)
                entry["replaced_after_s"] = round(time.perf_counter() - t0, 2)
            elif fault == "redis_restart":
                stop(stack.redis)
                await asyncio.sleep(10)
                stack.start_redis()
                entry["down_s"] = 10
            elif fault == "bad_promotion":
                entry["artifact"] = await asyncio.to_thread(promote_damaged, stack.storage, version)
            progress(f"fault at {entry['at_s']} s: {entry}")
            log.append(entry)

    return run


def acknowledged_missing(events_dir: Path, acked: set[str]) -> tuple[int, int]:
    """(acknowledged ids not in any segment, ids stored more than once)."""
    seen: dict[str, int] = {}
    for path in sorted(events_dir.glob("events-*.csv")):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("event_type") != "impression" and row.get("event_id"):
                    seen[row["event_id"]] = seen.get(row["event_id"], 0) + 1
    return len(acked - set(seen)), sum(1 for n in seen.values() if n > 1)


def figures(answers: list[Answer], faults: list[dict[str, Any]], events_dir: Path) -> dict[str, Any]:
    import numpy as np

    failed = [a for a in answers if a.error is not None]
    acked = {a.event_id for a in answers if a.kind == "post" and a.status == 202 and a.event_id}
    missing, twice = acknowledged_missing(events_dir, acked)  # type: ignore[arg-type]
    ok = [a.latency * 1e3 for a in answers if a.error is None]
    kinds: dict[str, int] = {}
    for a in failed:
        kinds[a.error or ""] = kinds.get(a.error or "", 0) + 1
    # a request scheduled a little before a fault can still be in flight (or queued) when it strikes
    per_fault = [
        {**f, "failed_around": sum(1 for a in failed if f["at_s"] - 5 <= a.at < f["at_s"] + 10)} for f in faults
    ]
    return {
        "requests": len(answers),
        "failed": len(failed),
        "availability_pct": round(100 * (len(answers) - len(failed)) / max(1, len(answers)), 3),
        "failure_kinds": kinds,
        "status_503": sum(1 for a in answers if a.status == 503),
        "events_acknowledged": len(acked),
        "acknowledged_events_missing": missing,
        "events_stored_twice": twice,
        "latency_ms": {q: round(float(np.percentile(ok, p)), 2) for q, p in (("p50", 50), ("p99", 99))} if ok else {},
        "faults": per_fault,
        "failures": [
            {"at_s": round(a.at, 2), "kind": a.kind, "status": a.status, "error": a.error, "event_id": a.event_id}
            for a in failed[:50]
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work or tempfile.mkdtemp(prefix="recsys-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    storage, version, users, items = prepare(args.storage.resolve(), work)
    # far above the load, so every 429 would be a fault: still counted through Redis and its restart
    stack = Stack(work=work, storage=storage, workers=args.workers, rate_limit=int(args.rate * 60 * 4))
    fault_log: list[dict[str, Any]] = []
    try:
        stack.start_redis()
        stack.start_api()
        progress(f"{args.rate:.0f} requests/s for {args.duration:.0f} s against {stack.url}; work folder {work}")
        plan = schedule(args.duration)
        answers = asyncio.run(load(stack.url, users, items, args, make_faults(stack, version, plan, fault_log)))
        import urllib.request

        with urllib.request.urlopen(f"{stack.url}/v1/model", timeout=5) as resp:
            model = json.loads(resp.read())
        end_state = {
            "serving": model["champion"]["model_version"] if model["champion"] else None,
            "last_rejected": (model["last_rejected"] or {}).get("path"),
            "ready": stack.ready(),
        }
    finally:
        stack.close()
    result = figures(answers, fault_log, stack.events_dir)
    result["end_state"] = end_state
    result["goal"] = {
        "availability_pct_min": 99.9,
        "acknowledged_events_missing": 0,
        "met": result["availability_pct"] >= 99.9 and result["acknowledged_events_missing"] == 0,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys_assets.tools.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="storage with (or for) a champion")
    p.add_argument("--work", type=Path, help="folder for the copy, logs, events, results (default: a new temp one)")
    p.add_argument("--rate", type=float, default=100.0, help="requests per second")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--event-share", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the JSON here too")
    args = p.parse_args(argv)
    header = {
        "command": " ".join(["python -m recsys_assets.tools.chaos", *(sys.argv[1:] if argv is None else argv)]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "rate_rps": args.rate,
        "duration_s": args.duration,
        "workers": args.workers,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    result = header | run(args)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0 if result["goal"]["met"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
