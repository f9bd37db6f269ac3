"""Command line of the replay simulator: `python -m recsys_assets.tools.replay prepare|run`.

`prepare` cuts a data set in time and writes its past (for the pipeline) and its future (for the
replay) under a work folder, then prints the commands that train on the past, serve the champion
with a popularity arm, and replay. `run` replays the future through the running API, prints a
summary per A/B arm and appends it to the `replay_runs` table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys_assets.contract.settings import get_settings

DEFAULT_KEY = "replay-key"


def _prepare(args: argparse.Namespace) -> int:
    from recsys_assets.tools.replay.data import load_dataset, prepare

    print(f"reading {args.dataset} ...", flush=True)
    dataset = load_dataset(args.dataset, args.source)
    prep = prepare(dataset, args.workdir, args.future_fraction, args.catalog, args.hold_out_category)
    s = prep.summary
    work, env = prep.workdir, prep.env_file
    print(
        f"cut at {s['cut']}: past {s['past_events']:,} events ({s['past_users']} users), future {s['future_events']:,} "
        f"events ({s['future_users']} users, {s['future_users_new']} new; {s['future_items']} items, "
        f"{s['future_items_new']} new)"
    )
    print(f"wrote {prep.past_events}, {prep.future_events}, {env}")
    py = sys.executable
    print(
        "\nnext:\n"
        "# 1. train on the past (writes the champion and candidates/Popularity under "
        f"{work / 'data'})\n"
        f"RECSYS_ENV_FILE={env} {py} -m recsys_assets pipeline\n"
        "# 2. serve the champion, with half of the users on the popularity arm (a fresh Redis database:\n"
        "#    live state left by an earlier replay would change what is served)\n"
        f"RECSYS_ENV_FILE={env} RECSYS_API_KEYS={DEFAULT_KEY}:events RECSYS_RATE_LIMIT_PER_MINUTE=0 \\\n"
        "  RECSYS_AB_CHALLENGER_SHARE=0.5 RECSYS_AB_CHALLENGER_PATH=candidates/Popularity \\\n"
        f"  RECSYS_REDIS_URL=redis://127.0.0.1:6379/0 {py} -m serving\n"
        "# 3. replay the future through it\n"
        f"RECSYS_ENV_FILE={env} {py} -m recsys_assets.tools.replay run --workdir {work} --dataset {args.dataset} "
        f"--api-key {DEFAULT_KEY} --max-seconds 300"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    import pandas as pd

    from recsys_assets.contract.storage import Storage
    from recsys_assets.tools.replay.data import read_events
    from recsys_assets.tools.replay.report import store_runs, summary_text
    from recsys_assets.tools.replay.simulator import ReplayConfig, run_replay

    overrides = {"storage_uri": args.storage_uri} if args.storage_uri else {}
    settings = get_settings(**overrides)
    events_file = args.events or (args.workdir / "future" / "events.csv" if args.workdir else None)
    if events_file is None:
        print("give --events or --workdir", file=sys.stderr)
        return 2
    events = read_events(events_file)
    past_users = past_items = None
    past_file = args.past or (args.workdir / "past" / "events.csv" if args.workdir else None)
    if args.shift:
        if past_file is None or not Path(past_file).is_file():
            print("--shift needs the past events (--past or --workdir)", file=sys.stderr)
            return 2
        past = pd.read_csv(past_file, usecols=["user_id", "item_id"], dtype=str)
        past_users, past_items = frozenset(past["user_id"]), frozenset(past["item_id"])
    events_dir = None if args.no_log else (args.events_dir or _events_dir(settings))
    config = ReplayConfig(
        api_url=args.api_url or settings.api_url,
        api_key=args.api_key or settings.events_api_key() or DEFAULT_KEY,
        events=events,
        dataset=args.dataset,
        k=args.k,
        exclude_seen=not args.include_seen,
        seed=args.seed,
        max_users=args.max_users,
        max_visits=args.max_visits,
        max_seconds=args.max_seconds,
        speed=args.speed,
        concurrency=args.concurrency,
        visit_gap_seconds=args.visit_gap,
        max_events_per_visit=args.max_events_per_visit,
        timestamps=args.timestamps,
        shift=args.shift,
        shift_at=args.shift_at if args.shift else None,
        past_users=past_users,
        past_items=past_items,
        events_dir=events_dir,
        progress=not args.quiet,
    )
    print(
        f"replaying {len(events):,} events of {events['user_id'].nunique()} users from {events_file} "
        f"through {config.api_url} (at most {args.max_seconds:.0f} s)",
        flush=True,
    )
    result = run_replay(config)
    print(summary_text(result))
    if not args.no_store:
        path = store_runs(Storage.from_settings(settings), result.arms())
        print(f"stored in {path}")
    return 1 if result.mismatches() or not len(result.lists) else 0


def _events_dir(settings) -> Path | None:
    """The API's event-log folder; None with Blob storage and no `events_dir` (the replay counts on its side)."""
    if settings.is_azure and not settings.events_dir:
        return None
    return settings.events_path()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_assets.tools.replay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="cut a data set in time; write the past for the pipeline and the future")
    prep.add_argument("--dataset", choices=["ml-100k", "taobao"], default="ml-100k")
    prep.add_argument("--workdir", type=Path, required=True, help="folder for past/, future/, replay.env, data/")
    prep.add_argument("--future-fraction", type=float, default=0.2, help="share of events, by time, held out (0.2)")
    prep.add_argument("--catalog", choices=["all", "past"], default="all", help="MovieLens items kept in the catalog")
    prep.add_argument("--source", help="the data file (taobao: default the shared sample; ml-100k: a folder)")
    prep.add_argument(
        "--hold-out-category", help="drop the past events on this category's items (not launched yet, e.g. Sci-Fi)"
    )

    run = sub.add_parser(
        "run",
        help="replay the future through the running API",
        description="Settings (storage for `replay_runs`, the API's event-log folder, default API URL and key) "
        "come from RECSYS_* variables and RECSYS_ENV_FILE, e.g. the replay.env written by `prepare`.",
    )
    run.add_argument("--workdir", type=Path, help="a folder written by `prepare` (its future/ and past/)")
    run.add_argument("--events", type=Path, help="the future events CSV (default: <workdir>/future/events.csv)")
    run.add_argument("--past", type=Path, help="the past events CSV, for --shift (default: <workdir>/past/events.csv)")
    run.add_argument("--dataset", default="ml-100k", help="name recorded with the run (ml-100k, taobao, ...)")
    run.add_argument("--api-url", help="the API (default RECSYS_API_URL)")
    run.add_argument("--api-key", help="a key with scope events (default: the first in RECSYS_API_KEYS)")
    run.add_argument("--k", type=int, default=10, help="list length requested (10)")
    run.add_argument(
        "--include-seen", action="store_true", help="lists may repeat items the user touched (exclude_seen=false)"
    )
    run.add_argument("--seed", type=int, default=42, help="user sample and funnel draws (42)")
    run.add_argument("--max-seconds", type=float, default=300.0, help="wall-clock limit (300)")
    run.add_argument("--max-users", type=int, help="replay a seeded sample of this many users")
    run.add_argument("--max-visits", type=int, help="replay only the first N visits (list requests) in time order")
    run.add_argument("--speed", type=float, default=0.0, help="data seconds per wall second; 0: unpaced (0)")
    run.add_argument("--concurrency", type=int, default=4, help="visits in flight (4)")
    run.add_argument("--visit-gap", type=float, default=1800.0, help="a longer pause starts a new visit (1800 s)")
    run.add_argument(
        "--max-events-per-visit", type=int, default=1, help="real events per visit (list request) at most (1)"
    )
    run.add_argument(
        "--timestamps", choices=["now", "real"], default="now", help="post receipt time or the real instants"
    )
    run.add_argument(
        "--shift", choices=["newest-items", "new-users"], help="drift scenario: replay only the shifted stream"
    )
    run.add_argument("--shift-at", type=float, default=0.5, help="fraction of the visits where the shift starts (0.5)")
    run.add_argument("--events-dir", type=Path, help="the API's event-log folder (default: from the settings)")
    run.add_argument(
        "--no-log", action="store_true", help="do not read the API's event log (count on the simulator side)"
    )
    run.add_argument("--storage-uri", help="where `replay_runs` goes (default RECSYS_STORAGE_URI)")
    run.add_argument("--no-store", action="store_true", help="print only; do not append to replay_runs")
    run.add_argument("--quiet", action="store_true", help="no progress output")

    sim = sub.add_parser(
        "simulate",
        help="the whole loop: cut, train on the past, serve with dagster dev, replay the future with a shift",
        description="Cuts the data set in time, trains on the past, starts the API (champion and popularity arms), "
        "Redis and `dagster dev` (daemon on), replays the future paced to --duration seconds with the stream "
        "shifting at --shift-at, and reports CTR per arm and phase and the drift -> retrain -> promotion timeline "
        "(<workdir>/simulate.json, the `replay_runs` table).",
    )
    sim.add_argument("--dataset", choices=["ml-100k", "taobao"], default="ml-100k")
    sim.add_argument("--workdir", type=Path, default=Path("/tmp/recsys-simulate"), help="work folder (wiped)")
    sim.add_argument("--source", help="the data file (taobao: default the shared sample)")
    sim.add_argument("--budget", choices=["standard", "smoke"], default="standard", help="training budget")
    sim.add_argument("--models", help="comma-separated RecBole models (default: the settings' retrain_models)")
    sim.add_argument("--duration", type=float, default=720.0, help="wall seconds the replay is paced to (720)")
    sim.add_argument(
        "--shifted-seconds",
        type=float,
        help="of --duration, the wall seconds the shifted stream takes (default: the same pace throughout)",
    )
    sim.add_argument("--window-minutes", type=int, default=1, help="live window length (1)")
    sim.add_argument(
        "--shift", choices=["newest-items", "new-users", "none"], default="newest-items", help="the drift scenario"
    )
    sim.add_argument("--shift-at", type=float, default=0.5, help="fraction of the visits where the shift starts")
    sim.add_argument(
        "--hold-out-category",
        help="drop the past events on this category's items: with newest-items they launch at the shift (Sci-Fi)",
    )
    sim.add_argument("--include-seen", action="store_true", help="lists may repeat items the user touched")
    sim.add_argument("--seed", type=int, default=42)
    sim.add_argument("--max-users", type=int, help="replay a seeded sample of this many users (default: all)")
    sim.add_argument(
        "--settle-seconds",
        type=float,
        default=0.0,
        help="after the replay, wait up to this long for the drift-triggered champion to be served (0)",
    )
    sim.add_argument("--no-train", action="store_true", help="reuse the past already trained in --workdir")

    g = sub.add_parser(
        "gate",
        help="the canary gate on replayed traffic: scenarios x seeds, and each model's realised CTR",
        description="Each scenario NAME=CHAMPION,CHALLENGER names two artifact folders under the work folder's "
        "storage (e.g. artifacts/Hybrid-...). Per seed: the champion serves, the challenger opens a canary, the "
        "future is replayed through a fresh API, and the gate looks every --look-seconds (<workdir>/gate/gate.json).",
    )
    g.add_argument("--workdir", type=Path, required=True, help="a folder written by `prepare` and trained")
    g.add_argument("--scenario", action="append", required=True, help="NAME=CHAMPION_FOLDER,CHALLENGER_FOLDER")
    g.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds (each a new split of the users)")
    g.add_argument("--share", type=float, default=0.1, help="the canary's share of users (0.1)")
    g.add_argument("--holdout-share", type=float, default=0.05, help="the previous champion's holdout share (0.05)")
    g.add_argument("--look-seconds", type=float, default=2.0, help="seconds between the gate's looks (2)")
    more = "; more than the replay serves keeps the canary open to the end (what it realises on the whole future)"
    g.add_argument("--min-lists", type=int, default=500, help=f"lists per arm before any verdict (500){more}")
    g.add_argument("--no-reference", action="store_true", help="skip the runs of each model on every user")

    args = parser.parse_args(argv)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "gate":
        return _gate(args)
    return _prepare(args) if args.command == "prepare" else _run(args)


def _gate(args: argparse.Namespace) -> int:
    scenarios = {}
    for spec in args.scenario:
        name, _, pair = spec.partition("=")
        champion, _, challenger = pair.partition(",")
        if not (name and champion and challenger):
            raise SystemExit(f"--scenario {spec!r}: expected NAME=CHAMPION_FOLDER,CHALLENGER_FOLDER")
        scenarios[name] = (champion.strip("/"), challenger.strip("/"))
    try:
        report = _run_gate(args, scenarios)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    return 0 if report["runs"] else 1


def _run_gate(args: argparse.Namespace, scenarios: dict[str, tuple[str, str]]) -> dict:
    from recsys_assets.contract.canary import CanaryConfig
    from recsys_assets.tools.replay.gate import GateConfig, run

    return run(
        GateConfig(
            workdir=args.workdir.resolve(),
            scenarios=scenarios,
            seeds=[int(s) for s in args.seeds.split(",")],
            canary=CanaryConfig(
                share=args.share,
                holdout_share=args.holdout_share,
                min_lists=args.min_lists,
                max_lists=max(args.min_lists, CanaryConfig().max_lists),
                holdout_max_lists=max(args.min_lists, CanaryConfig().holdout_max_lists),
            ),
            look_seconds=args.look_seconds,
            reference=not args.no_reference,
        )
    )


def _simulate(args: argparse.Namespace) -> int:
    from recsys_assets.tools.replay.scenario import SimulateConfig, simulate

    report = simulate(
        SimulateConfig(
            dataset=args.dataset,
            workdir=args.workdir,
            source=args.source,
            budget=args.budget,
            models=[m.strip() for m in args.models.split(",")] if args.models else None,
            duration=args.duration,
            shifted_seconds=args.shifted_seconds,
            window_minutes=args.window_minutes,
            shift=None if args.shift == "none" else args.shift,
            shift_at=args.shift_at,
            hold_out_category=args.hold_out_category,
            include_seen=args.include_seen,
            seed=args.seed,
            max_users=args.max_users,
            settle_seconds=args.settle_seconds,
            train=not args.no_train,
        )
    )
    return 0 if report["consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())
