"""The daily-ingestion benchmark (`python -m recsys_assets.tools.benchmarks incremental`): a 10-day synthetic
shop log, one Parquet file a day, ingested in full (today's `RECSYS_INGESTION__MODE=full`), and day by day
(9 days, then the 10th added): the 10th day's run should take at most 20% of the full one.

Each day is its own seeded `tools.synthetic` shop log (the same users and items every day, Zipf items,
log-normal users, the view-heavy funnel) over that day; funnel events a few minutes after a late view fall
on the next day, so the files also carry late events. Every ingestion is a child process run under
`/usr/bin/time -v` (wall time, peak RSS); inside it, `raw_sources` and `clean` are materialized with
Dagster in one process and timed without the interpreter's start-up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_assets.tools import synthetic

DAY = 86_400
# Peak memory of a full ingestion per source event (text columns, the cleaning's copies; measured ~2.5 KB
# at 1M events): a log that would not fit in the available memory is refused before it is generated.
BYTES_PER_EVENT = 4_000


def write_days(folder: Path, events: int, items: int, days: int, seed: int) -> list[Path]:
    """`days` files `events-YYYY-MM-DD.parquet` of about `events / days` events each."""
    folder.mkdir(parents=True, exist_ok=True)
    base = synthetic.ShopLog(events=events // days, items=items, users=max(1, events // 21), days=1, seed=seed)
    paths = []
    for d in range(days):
        table, _ = synthetic.generate(replace(base, seed=seed + d))
        shifted = pa.array(table["timestamp"].to_numpy() + d * DAY)  # START is midnight UTC
        table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", shifted)
        name = time.strftime("%Y-%m-%d", time.gmtime(synthetic.START + d * DAY))
        path = folder / f"events-{name}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


def child(seconds_file: str) -> int:
    """Materialize `raw_sources` and `clean` once in this process (settings from the environment)."""
    import dagster as dg

    from recsys_assets.contract.settings import get_settings
    from recsys_assets.defs import ingestion
    from recsys_assets.defs.resources import build_resources

    settings = get_settings()
    start = time.perf_counter()
    result = dg.materialize([ingestion.raw_sources, ingestion.clean], resources=build_resources(settings))
    seconds = time.perf_counter() - start
    meta = result.asset_materializations_for_node("clean")[0].metadata
    steps = sum(
        getattr(e.event_specific_data, "duration_ms", 0.0) / 1000
        for e in result.all_events
        if e.event_type_value == "STEP_SUCCESS"
    )
    Path(seconds_file).write_text(json.dumps({"seconds": seconds, "steps_seconds": steps, "rows": meta["rows"].value}))
    return 0


def _time_v(stderr: str) -> dict[str, float]:
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    assert wall and rss, stderr[-2000:]
    h, m, s = (float(g or 0) for g in wall.groups())
    return {"process_seconds": h * 3600 + m * 60 + s, "peak_rss_mb": int(rss.group(1)) / 1024}


def run_ingestion(storage: Path, log_glob: str, mode: str, reingest: bool = False) -> dict:
    """One ingestion in a child process under `/usr/bin/time -v`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {
        "RECSYS_STORAGE_URI": str(storage),
        "RECSYS_SOURCE": "event_log",
        "RECSYS_EVENT_LOG": json.dumps({"paths": [log_glob], "timestamp_unit": "s"}),
        "RECSYS_INGESTION__MODE": mode,
        "RECSYS_INGESTION__REINGEST": str(reingest).lower(),
        "DAGSTER_HOME": str(storage.parent / "dagster_home"),
    }
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    out = storage.parent / "seconds.json"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "recsys_assets.tools.ingest_bench", "--child", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ingestion failed ({mode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(out.read_text()), **_time_v(proc.stderr)}


def bench_incremental(
    work: str, events: int = 1_000_000, items: int = 100_000, days: int = 10, repeats: int = 3
) -> dict[str, object]:
    """Full ingestion of `days` days against `days - 1` then one more, `repeats` times; medians."""
    need = events * BYTES_PER_EVENT
    avail = psutil.virtual_memory().available
    if need > avail:
        raise SystemExit(
            f"{events} events need about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available: fewer --log-events"
        )
    root = Path(work)
    source = root / "source"
    paths = sorted(source.glob("events-*.parquet"))
    if len(paths) != days or json.loads((root / "log.json").read_text() if (root / "log.json").exists() else "{}") != {
        "events": events,
        "items": items,
        "days": days,
    }:
        shutil.rmtree(source, ignore_errors=True)
        paths = write_days(source, events, items, days, seed=2020)
        (root / "log.json").write_text(json.dumps({"events": events, "items": items, "days": days}))
    n_events = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    runs: dict[str, list[dict]] = {"full": [], "daily_first_9": [], "daily_10th": [], "daily_reingest": []}
    for r in range(repeats):
        shutil.rmtree(root / "runs", ignore_errors=True)
        store = root / "runs" / "full" / "data"
        runs["full"].append(run_ingestion(store, str(source / "events-*.parquet"), "full"))
        inc = root / "runs" / "daily"
        visible = inc / "source"
        visible.mkdir(parents=True)
        for p in paths[:-1]:
            os.link(p, visible / p.name)
        runs["daily_first_9"].append(run_ingestion(inc / "data", str(visible / "events-*.parquet"), "daily"))
        os.link(paths[-1], visible / paths[-1].name)
        runs["daily_10th"].append(run_ingestion(inc / "data", str(visible / "events-*.parquet"), "daily"))
        runs["daily_reingest"].append(
            run_ingestion(inc / "data", str(visible / "events-*.parquet"), "daily", reingest=True)
        )
        print(json.dumps({"repeat": r + 1, **{k: v[-1] for k, v in runs.items()}}), file=sys.stderr, flush=True)
    med = {
        kind: {key: round(statistics.median(run[key] for run in rs), 2) for key in rs[0]} for kind, rs in runs.items()
    }
    return {
        "events": n_events,
        "events_10th_day": pq.ParquetFile(paths[-1]).metadata.num_rows,
        "days": days,
        "repeats": repeats,
        "median": med,
        "10th_day_share_of_full": round(med["daily_10th"]["seconds"] / med["full"]["seconds"], 3),
        "10th_day_share_of_full_steps": round(med["daily_10th"]["steps_seconds"] / med["full"]["steps_seconds"], 3),
        "10th_day_share_of_full_process": round(
            med["daily_10th"]["process_seconds"] / med["full"]["process_seconds"], 3
        ),
        "all": runs,
        "load_average": os.getloadavg(),
        # the union after the 10th day has as many rows as the full ingestion (the tests check the rows)
        "rows_equal": len({rs[-1]["rows"] for k, rs in runs.items() if k != "daily_first_9"}) == 1,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2]))
    sys.exit("use: python -m recsys_assets.tools.benchmarks incremental")
