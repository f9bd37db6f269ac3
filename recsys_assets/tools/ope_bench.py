"""Off-policy estimates from an API event log, outside Dagster: `python -m recsys_assets.tools.ope_bench`.

The replay benchmark of `docs/benchmarks.md` (off-policy estimates): the champion serves the replayed
future with exploration, and this estimates each candidate's clicks per list on its logged lists, as the
retrain's `online_estimates` does. The history a candidate ranks from is the pipeline's interactions (the
past) plus the feedback events in the log before each list, which is what the API ranks from. It also
prints the logged arms' own clicks per list and list CTR, so a replay served by a candidate gives the value
the estimate should land near.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from recsys_assets.contract import attribution
from recsys_assets.contract.artifact import MANIFEST, read_from_storage, read_pointer
from recsys_assets.contract.events import IMPRESSION
from recsys_assets.contract.settings import get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.lib import live_windows as live
from recsys_assets.lib import off_policy


def read_log(events_dir: Path) -> pd.DataFrame:
    frames = [live.read_segment(p) for p in live.segments(events_dir)]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise SystemExit(f"no event-log segments (events-*.csv) under {events_dir}: check --events-dir")
    return pd.concat(frames, ignore_index=True)


def live_history(events: pd.DataFrame, weights: dict[str, float]) -> pd.DataFrame:
    """The log's feedback events as history rows, weighted as the API weighs live events."""
    fb = events[events["event_type"] != IMPRESSION]
    w = fb["event_type"].map(weights).fillna(1.0).astype("float64")
    w = w.where(~((fb["event_type"] == "rating") & fb["value"].notna()), fb["value"])
    return pd.DataFrame(
        {"user_id": fb["user_id"], "item_id": fb["item_id"], "timestamp": fb["timestamp"], "weight": w}
    ).dropna(subset=["user_id", "item_id"])


def arm_values(events: pd.DataFrame) -> list[dict[str, object]]:
    """Each served policy's own clicks per list and list CTR over the whole log."""
    imps = attribution.impressions(events)
    out = []
    for policy, group in imps.groupby("policy"):
        per_list, ctr = off_policy.logged_value(group)
        out.append(
            {"policy": policy, "lists": int(group["recommendation_id"].nunique()), "clicks_per_list": per_list}
            | {"list_ctr": ctr}
        )
    return out


class ReplayClicks:
    """What a perfect per-list estimator would find on this log: a candidate's items that earn a click (its
    first showings) scored with the replay's own click rule (`replay.behaviour`: the user really takes the item
    at that visit or later), on the histories its lists were ranked on (its own trajectory by default, the logged
    one with `--logged-trajectory`). Against the value the candidate realises when it serves, this separates
    what the estimators miss from what the trajectory changes. A replay diagnostic: it reads the held-out
    future, which no estimator may. Built once per log; `value` per candidate."""

    def __init__(self, events: pd.DataFrame, future_csv: Path) -> None:
        from recsys_assets.tools.replay.data import build_visits, read_events, real_events

        future = read_events(future_csv)
        start = {(v.user_id, v.index): v.start for v in build_visits(real_events(future))}
        seconds = (future["timestamp"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        self.last = seconds.groupby([future["user_id"].astype(str), future["item_id"].astype(str)]).max().to_dict()
        # a user's n-th list (over every arm) answers their n-th visit: a user's visits run one after another
        every = off_policy.list_frame(attribution.impressions(events))
        every = every.assign(_t=pd.to_datetime(every["served_at"], utc=True)).sort_values("_t", kind="stable")
        visit = every.groupby("user_id").cumcount()
        self.visit_start = {
            str(rec): start[(str(user), int(n))]
            for rec, user, n in zip(every["recommendation_id"], every["user_id"], visit, strict=True)
        }

    def value(self, lists: pd.DataFrame, eligible: dict[str, set[str]]) -> float:
        """Clicks per list of `lists` (`recommendation_id`, `user_id`) crediting their `eligible` items."""
        total = 0
        for rec, user in zip(lists["recommendation_id"].astype(str), lists["user_id"].astype(str), strict=True):
            at = self.visit_start[rec]
            total += sum(self.last.get((user, item), -1.0) >= at for item in eligible.get(rec, ()))
        return total / len(lists) if len(lists) else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage-uri", required=True, help="the pipeline's storage (candidates/, interactions)")
    parser.add_argument("--events-dir", required=True, type=Path, help="the API's event-log folder")
    parser.add_argument(
        "--models",
        default="",
        help="candidates to estimate: names under candidates/, `champion`, or artifact folders under the storage "
        "root (e.g. artifacts/<model version>); default: every one under candidates/",
    )
    parser.add_argument("--max-lists", type=int, default=20_000)
    parser.add_argument("--include-seen", action="store_true", help="the replay asked for lists with seen items")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument(
        "--every-list", action="store_true", help="credit an item in every list that shows it (not once per user)"
    )
    parser.add_argument(
        "--future",
        type=Path,
        help="the replay's future events (<workdir>/future/events.csv): also print each candidate's value on its "
        "lists under the replay's click rule (`ReplayClicks`)",
    )
    parser.add_argument(
        "--logged-trajectory",
        action="store_true",
        help="rank candidates on the logged histories as they are, the logging policy's clicks included (by default "
        "those are left out until the candidate shows the item: `off_policy.candidate_lists`)",
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)

    settings = get_settings()
    store = Storage.from_uri(args.storage_uri)
    events = attribution.prepare_events(read_log(args.events_dir))
    imps = off_policy.champion_impressions(events, args.max_lists)
    lists = off_policy.list_frame(imps)
    print(f"{len(lists)} champion lists, policies {sorted(imps['policy'].unique())}", file=sys.stderr)
    live_rows = live_history(events, settings.event_weights)
    live_rows["timestamp"] = pd.to_datetime(live_rows["timestamp"], utc=True)
    answers = None if args.logged_trajectory else off_policy.list_answers(events)
    names = [m for m in args.models.split(",") if m] or sorted(p.rsplit("/", 1)[-1] for p in store.list("candidates"))
    candidates = {}
    for name in names:
        # `champion`: the serving champion's artifact (the logging policy's own model: the estimate's A/A check)
        pointer = read_pointer(store) if name == "champion" else None
        parts = tuple(pointer["path"]) if pointer else tuple(name.split("/")) if "/" in name else ("candidates", name)
        if not store.exists(*parts, MANIFEST):
            raise SystemExit(f"no candidate artifact {'/'.join(parts)} under {args.storage_uri}: check --models")
        art = read_from_storage(store, *parts)
        rank = off_policy.artifact_ranker(art, exclude_seen=not args.include_seen)
        # what the API ranks from when it serves this artifact: its history, then the user's live events
        history = pd.concat([off_policy.artifact_history(art), live_rows], ignore_index=True)
        candidates[name] = off_policy.candidate_lists(rank, art.item_ids.tolist(), lists, history, answers)
        print(f"ranked {name}", file=sys.stderr)
    table = off_policy.estimate_table(imps, candidates, n_bootstrap=args.bootstrap, once_per_user=not args.every_list)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    arms = arm_values(events)
    for row in arms:
        print(row)
    trajectory = {}
    if args.future:
        clicks = ReplayClicks(events, args.future)
        for name, ranked in candidates.items():
            eligible = (
                {r: set(v) for r, v in ranked.items()} if args.every_list else off_policy.first_showings(lists, ranked)
            )
            trajectory[name] = clicks.value(lists, eligible)
            print(f"{name}: {trajectory[name]:.4f} clicks per list under the replay's click rule")
    if args.json:
        body = {"estimates": table.to_dict("records"), "logged": arms, "replay_rule_value": trajectory}
        args.json.write_text(json.dumps(body, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
