"""Command line: `python -m recsys_assets pipeline|demo`.

`pipeline` materializes the whole asset graph once in a persistent Dagster instance (so the runs
show up in the Dagster UI) and exits non-zero if any step or blocking check failed. `demo` runs the
pipeline, then starts the Dagster UI until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from recsys_assets.settings import Settings, get_settings

# The demo's API key when RECSYS_API_KEYS is unset (printed at start; local use only).
DEMO_API_KEY = "demo-key"
PROMOTION_CHECK_STEP = "challenger_model_challenger_beats_baseline_and_champion"


# The instance `make demo` and `make pipeline` use. Runs the daemon launches (sensors, schedule, the
# UI) wait in its queue: live windows run beside anything, training runs one at a time.
INSTANCE_MARKER = "# Dagster instance written by `python -m recsys_assets`"
INSTANCE_YAML = f"""{INSTANCE_MARKER} (edit freely: remove this line to keep your edits)
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: recsys/exclusive
        value: training
        limit: 1
telemetry:
  enabled: false
"""


def instance_yaml(settings: Settings) -> str:
    """The instance configuration; with Blob storage, step logs go to Blob too."""
    import yaml

    from recsys_assets.compute_logs import compute_logs_config

    text = INSTANCE_YAML
    section = compute_logs_config(settings)
    if section is not None:
        text += yaml.safe_dump({"compute_logs": section}, sort_keys=False)
    return text


def _dagster_home(settings: Settings) -> Path:
    home = Path(settings.dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or config.read_text().startswith(INSTANCE_MARKER):
        config.write_text(instance_yaml(settings))
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run_pipeline(settings: Settings, candidates: dict | None = None, job_name: str | None = None) -> bool:
    """Materialize every asset and run every check once; print where the results are."""
    import dagster as dg

    from recsys_assets.definitions import PIPELINE_JOB, build_definitions
    from recsys_assets.storage import Storage
    from recsys_assets.tracking import tracking_uri

    home = _dagster_home(settings)
    defs = build_definitions(settings)
    job = defs.resolve_job_def(job_name or PIPELINE_JOB)
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={
                "loggers": {"console": {"config": {"log_level": "INFO"}}},
                "ops": {"model_candidates": {"config": candidates or {}}} if job_name in (None, PIPELINE_JOB) else {},
            },
        )
    print()
    print(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'} (Dagster home {home})")
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            print(f"  materialized {event.asset_key.to_user_string()}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            print(f"  check {ev.asset_check_key.name}: {'passed' if ev.passed else 'FAILED'}")
        elif event.event_type_value == "STEP_FAILURE":
            print(f"  step {event.step_key} FAILED: {event.event_specific_data.error.message.strip()}")
    store = Storage.from_settings(settings)
    print(f"tables under {store.uri()}")
    print(f"EDA report: {store.uri('reports', 'eda_report.html')}")
    print(f"evaluation report: {store.uri('reports', 'evaluation_report.html')}")
    print(f"MLflow tracking: {tracking_uri(settings)}")
    failed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
    if failed == {PROMOTION_CHECK_STEP}:
        # a challenger that loses is an outcome, not an error: the champion keeps serving
        print("promotion refused by the blocking check: the current champion stays (see the check's metadata)")
        return True
    return bool(result.success)


def demo_services(settings: Settings) -> list[tuple[str, list[str], str, dict[str, str]]]:
    """What `make demo` serves: (name, command, URL, extra environment)."""
    from recsys_assets.tracking import tracking_uri

    py = sys.executable
    mlflow_bind = ("-h", "127.0.0.1", "-p", str(settings.mlflow_ui_port))
    services = [
        (
            "Dagster UI (webserver + daemon)",
            [py, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(settings.dagster_port)],
            f"http://127.0.0.1:{settings.dagster_port}",
            {},
        ),
        (
            "MLflow UI",
            [*(py, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(settings)), *mlflow_bind],
            f"http://127.0.0.1:{settings.mlflow_ui_port}",
            # its job workers would outlive the server otherwise
            {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ),
    ]
    redis = urlparse(settings.redis_url)
    redis_port = redis.port or 6379
    if shutil.which("redis-server") and not _listening(redis.hostname or "127.0.0.1", redis_port):
        services.append(
            (
                "Redis (cache and live state)",
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                f"redis://127.0.0.1:{redis_port}",
                {},
            )
        )
    api_env = {} if os.environ.get("RECSYS_API_KEYS") else {"RECSYS_API_KEYS": DEMO_API_KEY}
    services += [
        (
            "Recommendation API",
            [py, "-m", "serving"],
            f"http://{settings.api_host}:{settings.api_port}/docs",
            api_env,
        ),
        (
            "Console",
            [
                *(py, "-m", "streamlit", "run", "console/app.py", "--server.address", "127.0.0.1"),
                *("--server.headless", "true", "--browser.gatherUsageStats", "false"),
                *("--server.port", str(settings.console_port)),
            ],
            f"http://127.0.0.1:{settings.console_port}",
            {},
        ),
    ]
    return services


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def serve(settings: Settings) -> int:
    """Start every demo service in its own process group; Ctrl-C stops them all."""
    _dagster_home(settings)
    procs: list[tuple[str, subprocess.Popen]] = []
    for name, cmd, url, env in demo_services(settings):
        procs.append((name, subprocess.Popen(cmd, start_new_session=True, env=os.environ | env)))
        print(f"{name}: {url}")
    if not os.environ.get("RECSYS_API_KEYS"):
        print(f"API key for POST /v1/events: {DEMO_API_KEY} (header X-API-Key; set RECSYS_API_KEYS to choose your own)")
    print("Ctrl-C stops everything.")
    try:
        while all(p.poll() is None for _, p in procs):
            time.sleep(1)
        for name, p in procs:
            if p.poll() is not None:
                print(f"{name} exited with {p.returncode}; stopping the others")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all([p for _, p in procs])


def stop_all(procs: list[subprocess.Popen], timeout: float = 20) -> None:
    """SIGINT each process group (`dagster dev` ignores SIGTERM from a script), then SIGKILL stragglers."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    pipeline = sub.add_parser("pipeline", help="materialize the whole asset graph once and exit")
    sub.add_parser("tune", help="run the budgeted hyper-parameter search (needs a materialized pipeline)")
    demo = sub.add_parser("demo", help="run the pipeline, then start the Dagster UI")
    demo.add_argument("--no-serve", action="store_true", help="run the same steps and exit (no servers)")
    for p in (pipeline, demo):
        p.add_argument("--budget", choices=["standard", "smoke"], default="standard", help="training budget")
        p.add_argument("--models", help="comma-separated RecBole models (default: all eight)")
    args = parser.parse_args(argv)

    settings = get_settings()
    if args.command == "tune":
        from recsys_assets.definitions import TUNE_JOB

        return 0 if run_pipeline(settings, job_name=TUNE_JOB) else 1
    candidates: dict = {"budget": args.budget}
    if args.models:
        candidates["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    ok = run_pipeline(settings, candidates)
    if not ok:
        return 1
    if args.command == "demo" and not args.no_serve:
        return serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
