"""The load generator's command line: `python -m recsys_assets.tools.loadgen <command>`."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from recsys_assets.tools import loadgen
from recsys_assets.tools.loadgen import faults
from recsys_assets.tools.loadgen.champion import DEFAULT_STORAGE, blas_threads, ensure_champion, load_champion
from recsys_assets.tools.loadgen.commands import COMMANDS
from recsys_assets.tools.loadgen.context import Context
from recsys_assets.tools.loadgen.stack import progress
from recsys_assets.tools.loadgen.workload import API_KEY

TIMING = {"soak": (100.0, 1800.0, 120.0), "latency": (200.0, 60.0, 10.0)}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m recsys_assets.tools.loadgen",
        description=loadgen.__doc__.split("\n\n")[0] if loadgen.__doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="storage folder with (or for) a champion")
    p.add_argument(
        "--synthetic-items",
        type=int,
        help="without a champion under --storage: make a synthetic catalog of this many items there "
        "(candidates_bench synthetic) instead of running the pipeline on MovieLens",
    )
    p.add_argument("--work", type=Path, help="folder for logs, events and results (default: a new temp folder)")
    p.add_argument("--out", type=Path, help="write the JSON here (default: <work>/<command>.json)")
    p.add_argument("--url", help="load this running API (127.0.0.1) instead of starting one")
    p.add_argument("--api-key", default=API_KEY, help="events key (with --url: one the server accepts)")
    p.add_argument("--workers", type=int, default=2, help="API worker processes")
    p.add_argument("--cache-ttl", type=int, help="RECSYS_CACHE_TTL_SECONDS of the API (default: the setting's)")
    p.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE", help="extra API environment")
    p.add_argument("--keep-events", action="store_true", help="keep the event-log segments in the work folder")
    p.add_argument("--rate", type=float, help="requests/s (latency: 200, soak: 100)")
    p.add_argument("--duration", type=float, help="measured seconds (latency: 60, soak: 1800)")
    p.add_argument("--warmup", type=float, help="seconds of load before measuring (latency: 10, soak: 120)")
    p.add_argument("--event-share", type=float, default=0.1)
    p.add_argument("--unknown-share", type=float, default=0.05, help="share of lists asked for unknown users")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    p.add_argument("--quiet-wait", type=float, default=0.0, help="seconds to wait for an idle machine before a run")
    p.add_argument("--quiet-below", type=float, default=0.25, help="cores in use that count as idle")
    p.add_argument("--noisy-retries", type=int, default=2, help="with --quiet-wait: repeats of a disturbed run")
    p.add_argument("--connections", type=int, default=256, help="most connections the generator opens")
    p.add_argument("--goal-p95-ms", type=float, default=10.0)
    p.add_argument("--goal-p99-ms", type=float, default=25.0)
    p.add_argument("--inprocess-users", type=int, default=2000, help="lists timed in process (latency)")
    p.add_argument("--rates", type=_floats, default=[200, 400, 500, 600, 700, 800, 1000, 1200, 1600, 2000])
    p.add_argument("--step-duration", type=float, default=30.0, help="seconds per ramp step and scale row")
    p.add_argument("--step-warmup", type=float, default=3.0, help="warm-up of each ramp step after the first")
    p.add_argument("--max-p95-ms", type=float, default=100.0, help="ramp: a rate is sustained below this p95")
    p.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    p.add_argument("--wrk-duration", type=int, default=20)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--wrk-connections", type=int, default=32)
    p.add_argument("--batch-sizes", type=_ints, default=[100, 500])
    p.add_argument("--clients", type=int, default=4, help="concurrent ingest clients")
    p.add_argument("--ingest-duration", type=float, default=20.0)
    p.add_argument("--connection-per-batch", action="store_true", help="ingest: a new connection for every batch")
    p.add_argument("--goal-events-per-s", type=float, default=10000.0)
    p.add_argument("--sample-every", type=float, default=10.0, help="soak: seconds between RSS samples")
    p.add_argument("--max-growth-pct", type=float, default=10.0, help="soak: RSS growth goal after warm-up")
    p.add_argument(
        "--faults",
        type=faults.parse_faults,
        default=[],
        help=f"soak: faults spread over the measured window ({', '.join(faults.FAULTS)}), and availability read "
        "by the client, from /metrics and by a /ready probe",
    )
    p.add_argument("--redis-down", type=float, default=10.0, help="soak: seconds Redis stays down (redis_restart)")
    p.add_argument("--worker-counts", type=_ints, default=[1, 2, 4])
    p.add_argument("--scale-rate", type=float, default=400.0, help="scale: the fixed rate per worker count")
    p.add_argument("--reflect-trials", type=int, default=200)
    args = p.parse_args(argv)
    if args.faults and args.command != "soak":
        p.error("--faults is an option of soak only")
    rate, duration, warmup = TIMING.get(args.command, (200.0, 60.0, 10.0))
    args.rate = args.rate if args.rate is not None else rate
    args.duration = args.duration if args.duration is not None else duration
    args.warmup = args.warmup if args.warmup is not None else warmup
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    work = args.work or Path(tempfile.mkdtemp(prefix="recsys-apibench-"))
    work.mkdir(parents=True, exist_ok=True)
    storage = args.storage.resolve()
    header = {
        "command": " ".join(["python -m recsys_assets.tools.loadgen", *argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "workers": args.workers,
        "blas_threads_per_worker": blas_threads(),
    }
    ensure_champion(storage, args.synthetic_items)
    ctx = Context(args=args, storage=storage, work=work, model=load_champion(storage))
    header["model_version"] = ctx.model.version
    progress(f"{args.command}: {ctx.model.version}, work folder {work}")
    result = header | COMMANDS[args.command](ctx)
    text = json.dumps(result, indent=2, default=str)
    out = args.out or work / f"{args.command}.json"
    out.write_text(text)
    print(text)
    print(f"\n(also in {out})", file=sys.stderr)
    return 0
