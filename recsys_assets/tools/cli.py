"""Command line: `python -m recsys_assets ingest|pipeline|tune|demo|champion|report|query`.

`ingest` materializes the ingestion assets only (the source to the interaction matrix and the EDA
report) and prints the row counts, the rejects by reason and where the EDA report is.

`pipeline` materializes the whole asset graph once in a persistent Dagster instance (so the runs
show up in the Dagster UI) and exits non-zero if any step or blocking check failed. `demo` runs the
whole loop on MovieLens-100k: it cuts the data set in time, trains on the past, starts every service,
replays the future through the API as live traffic, and serves until Ctrl-C (`--ci`: exits instead).

`champion promote VERSION | rollback | status` moves the MLflow registry's `champion` alias and the
pointer the API serves from together (every API worker serves the new champion within
`model_poll_seconds`), records who did it in `champion_changes`, or shows where both stand;
`champion canary` shows the open canary or holdout and the gate's decisions, `stop-canary` closes it.

`report --out DIR` writes the stakeholder report (`report.html`, self-contained) and slide deck
(`report.pptx`) from the stored tables, the API's event log and `/metrics` (`tools/report/`); `query SQL`
prints one SQL query over the stored tables (DuckDB views: `drift_results`, `retrain_runs`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from recsys_assets.contract.logs import configure_process_logging
from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.tools.pipeline import run_pipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys_assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "ingest", help="materialize the ingestion assets only and print row counts, rejects and the EDA report's path"
    )
    pipeline = sub.add_parser("pipeline", help="materialize the whole asset graph once and exit")
    sub.add_parser("tune", help="run the budgeted hyper-parameter search (needs a materialized pipeline)")
    demo_args = sub.add_parser(
        "demo",
        help="the whole loop on MovieLens-100k: train on the past, serve every UI, replay the future",
        description="Cuts MovieLens-100k in time (the last 20% of ratings are the future), trains on the past, "
        "starts the Dagster UI with its daemon, the MLflow UI, Redis, the API and the console, replays the future "
        "through the API (half of the users on the popularity arm) and serves until Ctrl-C.",
    )
    demo_args.add_argument(
        "--ci", action="store_true", help="run the same steps, then stop every service and exit (non-zero on failure)"
    )
    demo_args.add_argument(
        "--replay-seconds", type=float, default=180.0, help="wall seconds the replay of the future is paced to (180)"
    )
    champion = sub.add_parser("champion", help="promote a registry version, roll back, or show the champion")
    moves = champion.add_subparsers(dest="action", required=True)
    promote = moves.add_parser("promote", help="make a registered model version the champion")
    promote.add_argument("version", help="registry version (`champion status` lists the recent ones)")
    rollback = moves.add_parser("rollback", help="serve the champion before the current one again")
    moves.add_parser("canary", help="the open canary or holdout (its last look) and the gate's recent decisions")
    stop = moves.add_parser(
        "stop-canary", help="close the open canary or holdout now: the champion serves every user, nothing moves"
    )
    for p in (promote, rollback, stop):
        p.add_argument("--reason", default="", help="why, for the change log")
        p.add_argument("--actor", default="", help="who (default: RECSYS_ACTOR, else user@host)")
    moves.add_parser("status", help="the alias, the pointer the API follows, the rollback target, recent changes")
    report = sub.add_parser(
        "report", help="write the stakeholder report (HTML) and slide deck (.pptx) from the stored tables"
    )
    report.add_argument("--out", help="output folder (default: <storage>/reports/final for local storage)")
    report.add_argument(
        "--api-url", help="the API whose /metrics gives p95 latency and availability (default: RECSYS_API_URL)"
    )
    query = sub.add_parser("query", help="print one SQL query over the stored tables (DuckDB, read-only)")
    query.add_argument("sql", help='e.g. "SELECT * FROM retrain_runs ORDER BY triggered_at DESC LIMIT 5"')
    for p in (pipeline, demo_args):
        p.add_argument(
            "--budget", choices=["standard", "smoke"], help="training budget (standard); the demo's retrains too"
        )
        p.add_argument("--models", help="comma-separated RecBole models (default: all eight); the demo's retrains too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    if settings.log_format == "json":
        # the library's own loggers (and MLflow's, when they propagate) as JSON lines on stderr; with text, the
        # terminal keeps its usual lines
        configure_process_logging("json")
    if args.command == "ingest":
        from recsys_assets.defs.definitions import INGESTION_JOB

        return 0 if run_pipeline(settings, job_name=INGESTION_JOB) else 1
    if args.command == "champion":
        return champion_command(settings, args)
    if args.command == "report":
        return report_command(settings, args)
    if args.command == "query":
        return query_command(settings, args.sql)
    if args.command == "tune":
        from recsys_assets.defs.definitions import TUNE_JOB

        return 0 if run_pipeline(settings, job_name=TUNE_JOB) else 1
    candidates: dict = {"budget": args.budget or "standard"}
    if args.models:
        candidates["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.command == "demo":
        from recsys_assets.tools.demo import demo  # the replay's modules: not needed by the other commands

        retrain: dict[str, object] = {"retrain_budget": args.budget} if args.budget else {}
        if args.models:
            retrain["retrain_models"] = candidates["models"]
        return demo(settings, candidates, args.replay_seconds, ci=args.ci, retrain=retrain)
    return 0 if run_pipeline(settings, candidates) else 1


def champion_command(settings: Settings, args: argparse.Namespace) -> int:
    from recsys_assets.contract.storage import Storage
    from recsys_assets.lib import champion
    from recsys_assets.lib.tracking import MlflowTracking

    store = Storage.from_settings(settings)
    if args.action in ("canary", "stop-canary"):
        return canary_command(store, args)
    tracking = MlflowTracking.for_store(settings.mlflow_store())
    try:
        if args.action == "status":
            state = champion.status(tracking, store)
            changes = state.pop("changes")
            print(json.dumps(state, indent=2, default=str))
            print(changes.to_string(index=False) if len(changes) else "no recorded champion changes")
            return 0 if state["in_sync"] or state["alias_version"] is None else 1
        actor = args.actor or champion.default_actor()
        if args.action == "promote":
            change = champion.promote(tracking, store, args.version, actor, args.reason)
        else:
            change = champion.rollback(tracking, store, actor, args.reason)
    except (LookupError, ValueError) as exc:  # ArtifactError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if change is None:
        print(f"version {args.version} already is the champion; nothing changed")
        return 0
    from recsys_assets.defs.runs import write_model_registry

    write_model_registry(store, tracking)  # the console's registry table shows the aliases as they are now
    print(
        f"champion: version {change['from_version'] or '-'} ({change['from_model'] or '-'}) -> "
        f"{change['to_version']} ({change['to_model']}); every API worker serves it at its next model poll "
        "(`RECSYS_MODEL_POLL_SECONDS`)"
    )
    return 0


def canary_command(store, args: argparse.Namespace) -> int:
    """`champion canary` (what is open, the last decisions) and `champion stop-canary`."""
    import pandas as pd

    from recsys_assets.lib import canary, champion
    from recsys_assets.lib.list_tally import Tally

    if args.action == "stop-canary":
        stopped = canary.stop(store, args.actor or champion.default_actor(), args.reason)
        print(f"closed the {stopped.phase}: the champion serves every user" if stopped else "no canary or holdout open")
        return 0
    state = canary.read_state(store)
    if state is None:
        print("no canary or holdout open")
    else:  # the running counts without the lists they remember
        shown = {**dataclasses.asdict(state), "tally": Tally.from_json(state.tally).summary()}
        print(json.dumps(shown, indent=2, default=str))
    decisions = canary.read_decisions(store).tail(10)
    columns = ["at", "phase", "verdict", "action", "champion_lists", "challenger_lists", "estimate", "low", "high"]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(decisions[columns].to_string(index=False) if len(decisions) else "no recorded decisions")
    return 0


def report_command(settings: Settings, args: argparse.Namespace) -> int:
    from recsys_assets.tools.report.build import build_report

    if args.out is None and settings.is_azure:
        print("error: storage is Azure Blob: give a local folder with --out", file=sys.stderr)
        return 2
    out = args.out or settings.local_root() / "reports" / "final"
    html_path, deck_path = build_report(settings, out, api_url=args.api_url or settings.api_url)
    print(f"report: {html_path}\ndeck:   {deck_path}")
    return 0


def query_command(settings: Settings, sql: str) -> int:
    import pandas as pd

    from recsys_assets.tools.report.tables import query

    try:
        result = query(settings, sql)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
        print(result.to_string(index=False) if len(result) else "(no rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
