"""The scale benchmark (`python -m recsys_assets.tools.benchmarks scale`, `make bench-scale`): the whole
pipeline, default configuration, on synthetic shop logs (`tools.synthetic`) of growing size, with the wall
time and peak RSS of every stage (each Dagster step, and each candidate inside `model_candidates`).

The pipeline runs in a child process, in process (one step at a time) or, with `--processes N`, through
the multiprocess executor with N steps at once (as a launched run with `RECSYS_EXECUTOR_MAX_CONCURRENT=N`);
this one samples the resident memory of the child's process tree
(psutil, every `SAMPLE_SECONDS`) and stops it when it passes `guard_gb`, so a run that would exhaust the
shared machine is ended, with the stage it was in, instead of being OOM-killed with everyone else's work.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

SAMPLE_SECONDS = 0.5
SIZES = ((1_000_000, 100_000), (10_000_000, 1_000_000))
TRAINING = re.compile(r"\[\d+/\d+\] training (\S+) on the (\S+) split")


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def child(timeline: str, processes: int = 0) -> int:
    """Run the pipeline job once (settings from the environment), on a Dagster instance stored next to
    `timeline` (so its log survives this process being stopped): in this process, or with `processes`
    through the job's own (multiprocess) executor; write the log records to `timeline` at the end."""
    import dagster as dg

    from recsys_assets.tools.steps_bench import pipeline_job

    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    with _open_instance(timeline) as instance:
        if processes:
            result = dg.execute_job(
                dg.reconstructable(pipeline_job), instance=instance, run_config=run_config, raise_on_error=False
            )
        else:
            result = pipeline_job().execute_in_process(instance=instance, raise_on_error=False, run_config=run_config)
        Path(timeline).write_text(json.dumps({"success": result.success, "log": _log_rows(instance)}))
    return 0 if result.success else 1


def _instance_dir(timeline: str | Path) -> str:
    return str(Path(timeline).with_name("instance"))


def _open_instance(timeline: str | Path) -> Any:
    """The run's Dagster instance (SQLite storage in a folder next to `timeline`), created when missing."""
    import dagster as dg

    Path(_instance_dir(timeline)).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.local_temp(tempdir=_instance_dir(timeline))


def _log_rows(instance: Any) -> list[dict]:
    """(time, step, Dagster event type, message) of every record of the instance's one run."""
    runs = instance.get_runs(limit=1)
    if not runs:
        return []
    rows = []
    for entry in instance.all_logs(runs[0].run_id):
        event = entry.dagster_event
        message = entry.user_message
        if event is not None and event.event_type_value == "STEP_FAILURE":
            message = event.event_specific_data.error.message.strip()[:500]
        rows.append(
            {
                "t": entry.timestamp,
                "step": entry.step_key,
                "event": event.event_type_value if event is not None else None,
                "message": message,
            }
        )
    return rows


def _read_timeline(timeline: Path) -> dict:
    """The child's timeline; when it was stopped before writing it, the log it left in its instance."""
    if timeline.exists():
        return json.loads(timeline.read_text())
    if not Path(_instance_dir(timeline)).exists():
        return {"success": False, "log": []}
    with _open_instance(timeline) as instance:
        return {"success": False, "log": _log_rows(instance)}


def _stages(log: list[dict], end: float) -> list[dict]:
    """(stage, start, stop, status): every step, and every candidate's training + evaluation inside its step."""
    stages: dict[str, dict] = {}
    cands: dict[str, dict] = {}  # the candidate each step is on (steps may run side by side)
    for row in log:
        step, event, t = row["step"], row["event"], row["t"]
        cand = cands.get(step)
        if event == "STEP_START":
            stages[step] = {"stage": step, "start": t, "stop": None, "status": "running"}
        elif event in ("STEP_SUCCESS", "STEP_FAILURE") and step in stages:
            stages[step].update(stop=t, status="ok" if event == "STEP_SUCCESS" else "FAILED: " + (row["message"] or ""))
            if cand is not None and cand["stop"] is None:
                cand.update(stop=t, status=stages[step]["status"])
        elif event is None and row["message"]:
            m = TRAINING.search(row["message"])
            skip = re.search(r"skipping (\S+) on the (\S+) split: (.*)", row["message"])
            failed = re.search(r"(\S+) failed on the (\S+) split: (.*)", row["message"])
            if failed and cand is not None and cand["stop"] is None:
                cand.update(stop=t, status="FAILED: " + failed.group(3))
                continue
            if m or skip:
                if cand is not None and cand["stop"] is None:
                    cand.update(stop=t, status="ok")
                if m:
                    cand = {"stage": f"  {m.group(1)} ({m.group(2)})", "start": t, "stop": None, "status": "running"}
                    stages[cand["stage"]] = cands[step] = cand
                else:
                    name = f"  {skip.group(1)} ({skip.group(2)})"
                    stages[name] = {"stage": name, "start": t, "stop": t, "status": "skipped: " + skip.group(3)}
    for s in stages.values():
        if s["stop"] is None:
            s["stop"] = end
    return sorted(stages.values(), key=lambda s: (s["start"], not s["stage"].startswith(" ")))


def run_size(
    events: int, items: int, work: Path, guard_gb: float, timeout_minutes: float = 0.0, processes: int = 0
) -> dict:
    """Generate the log, run the pipeline in a child process, and time and size every stage. The child is
    stopped past `guard_gb` of RSS, after `timeout_minutes` (0: never) or on Ctrl-C; the stages it finished
    are reported all the same, from its instance's log."""
    from recsys_assets.tools.synthetic import ShopLog, write

    root = work / f"{events}x{items}"
    t0 = time.perf_counter()
    data = write(ShopLog(events=events, items=items), root / "log")
    generate_seconds = time.perf_counter() - t0
    timeline = root / "timeline.json"
    env = {
        **os.environ,
        "RECSYS_SOURCE": "event_log",
        "RECSYS_EVENT_LOG": json.dumps(data["event_log"]),
        "RECSYS_STORAGE_URI": str(root / "data"),
        "RECSYS_DAGSTER_HOME": str(root / "dagster"),
        "RECSYS_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    if processes:
        env |= {"RECSYS_EXECUTOR": "multiprocess", "RECSYS_EXECUTOR_MAX_CONCURRENT": str(processes)}
    samples: list[tuple[float, int]] = []
    guard = None
    with open(root / "pipeline.log", "w") as out:
        start = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys_assets.tools.scale_bench", "child", str(timeline), str(processes)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        ps = psutil.Process(proc.pid)
        try:
            while proc.poll() is None:
                rss = _tree_rss(ps)
                samples.append((time.time(), rss))
                if guard is None and rss > guard_gb * 1e9:
                    guard = f"stopped by the benchmark's guard at {rss / 1e9:.1f} GB RSS"
                elif guard is None and timeout_minutes and time.time() - start > timeout_minutes * 60:
                    guard = f"stopped by the benchmark's timeout after {timeout_minutes:g} min"
                if guard is not None:
                    _kill_tree(ps)
                time.sleep(SAMPLE_SECONDS)
        except KeyboardInterrupt:
            guard = f"stopped by Ctrl-C after {time.time() - start:.0f} s"
            _kill_tree(ps)
            proc.wait()
        end = time.time()
    doc = _read_timeline(timeline)
    rows = []
    for s in _stages(doc["log"], end):
        inside = [r for t, r in samples if s["start"] <= t <= s["stop"]]
        rows.append(
            {
                "stage": s["stage"],
                "seconds": round(s["stop"] - s["start"], 1),
                "peak_rss_gb": round(max(inside) / 1e9, 2) if inside else None,
                "status": s["status"][:300],
            }
        )
    if guard:
        rows.append({"stage": "(guard)", "seconds": None, "peak_rss_gb": None, "status": guard})
    return {
        "events": data["events"],
        "users": data["users"],
        "items": items,
        "generate_seconds": round(generate_seconds, 1),
        "pipeline_seconds": round(end - start, 1),
        "peak_rss_gb": round(max((r for _, r in samples), default=0) / 1e9, 2),
        "processes": processes,
        "success": bool(doc["success"]) and guard is None,
        "exit_code": proc.returncode,
        "stages": rows,
    }


def _kill_tree(ps: psutil.Process) -> None:
    for p in [*ps.children(recursive=True), ps]:
        with contextlib.suppress(psutil.Error):
            p.kill()


def bench_scale(
    work: str,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    guard_gb: float = 20.0,
    timeout_minutes: float = 0.0,
    processes: int = 0,
) -> dict:
    """Every size in turn (stopping after the first that fails); the growth factor of time and peak RSS per
    10x events between consecutive sizes."""
    out = []
    for events, items in sizes:
        res = run_size(events, items, Path(work), guard_gb, timeout_minutes, processes)
        out.append(res)
        print(markdown(res), file=sys.stderr)
        if not res["success"]:
            break
    growth = [
        {
            "from_events": a["events"],
            "to_events": b["events"],
            "time_factor": round(b["pipeline_seconds"] / a["pipeline_seconds"], 2),
            "rss_factor": round(b["peak_rss_gb"] / a["peak_rss_gb"], 2),
        }
        for a, b in itertools.pairwise(out)
    ]
    return {"runs": out, "growth": growth}


def markdown(res: dict) -> str:
    head = (
        f"{res['events']:,} events / {res['users']:,} users / {res['items']:,} items: "
        f"{'finished' if res['success'] else 'FAILED'} in {res['pipeline_seconds']} s, "
        f"peak RSS {res['peak_rss_gb']} GB\n\n"
        "| stage | wall s | peak RSS GB | status |\n|---|--:|--:|---|\n"
    )
    lines = [
        f"| {r['stage']} | {r['seconds']} | {r['peak_rss_gb']} | {r['status'].replace('|', '/')} |"
        for r in res["stages"]
    ]
    return head + "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        sys.exit(child(sys.argv[2], int(sys.argv[3])))
    sys.exit("usage: python -m recsys_assets.tools.benchmarks scale (this module's `child` is its own subprocess)")
