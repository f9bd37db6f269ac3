"""What a replay measured, per A/B arm: from the simulator's side and from the API's own event log.

Per arm (`champion`, `challenger`; in the replay set-up the challenger is the popularity baseline):

- lists, impressions, clicks (clicked impressions), clicked and converted lists, list CTR, impression
  CTR and conversion: read back from the API's event-log segments with `recsys_assets.contract.attribution`
  (the lists of this run only, by their `recommendation_id`); the simulator counts the same things
  from what it was served and what it posted, and `ReplayResult.mismatches` names any difference;
- hit rate: share of lists with at least one served item among the user's real items from the
  visit's moment on (simulator side). With `exclude_seen` every hit is clicked, so it equals list
  CTR; measured apart, it shows whether feedback was lost on its way into the log. Lists that may
  repeat seen items also hit items whose one click was already used;
- freshness: for each clicked item, the user's next list must no longer contain it (it is in their
  live history, so `exclude_seen` removes it) and, if the list it was clicked in was the cold-start
  list, must no longer be cold start. `requests` counts the user's lists after the click's
  acknowledgement (202) up to the first that reflects it; `seconds` is the time from that
  acknowledgement to that list's response, which includes the wait for the user's next visit (other
  users' visits in between; with `speed > 0`, the pacing). Lists that may repeat seen items
  (`exclude_seen=False`) are only checked for the cold-start flag.

`replay_runs` (one row per run × arm) is stored under the storage root for the console.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_assets.contract import attribution
from recsys_assets.contract.storage import Storage

REPLAY_RUNS = "replay_runs"
# the drift scenario of `simulate`: one row per run x arm x phase, with the run's timeline
REPLAY_PHASES = "replay_phases"
TIMELINE_COLUMNS: tuple[str, ...] = (
    "window",
    "window_run_started",
    "drift_detected",
    "retrain_started",
    "promoted",
    "served",
    "champion_before",
    "champion_after",
    "retrain_status",
)
SIMULATOR_LIST_COLUMNS: tuple[str, ...] = (
    "recommendation_id",
    "user_id",
    "visit",
    "arm",
    "model_version",
    "phase",
    "shifted",
    "requested_at",
    "served_at",
    "cold_start",
    "items",
    "impressions",
    "clicks",
    "clicked",
    "converted",
    "hit",
    "events_posted",
)
FRESHNESS_COLUMNS: tuple[str, ...] = ("user_id", "arm", "item_id", "acked_at", "reflected_at", "requests", "seconds")
RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "dataset",
    "started_at",
    "ended_at",
    "arm",
    "model_versions",
    "users",
    "lists",
    "impressions",
    "clicks",
    "clicked_lists",
    "converted_lists",
    "ctr",
    "impression_ctr",
    "conversion",
    "hit_rate",
    "freshness_events",
    "freshness_requests_max",
    "freshness_p50_s",
    "freshness_max_s",
    "freshness_unreflected",
    "counted_from",
    "consistent",
    "shift",
    "shift_at",
    "shifted_at",
    "seed",
    "speed",
    "stopped_by",
)
# the columns whose type a run without them (no shift, no log, no freshness) would leave undecided
RUN_DTYPES = {"freshness_requests_max": "Int64", "consistent": "boolean", "shift": "string", "shift_at": "float64"}
RUN_TIMES = ("started_at", "ended_at", "shifted_at")
# counts compared between the simulator and the log: (simulator column, attribution column)
COMPARED = (
    ("lists", "lists"),
    ("impressions", "impressions"),
    ("clicks", "clicked_impressions"),
    ("clicked_lists", "clicked_lists"),
    ("converted_lists", "converted_lists"),
)


@dataclass(frozen=True)
class PhaseMark:
    """A phase of the replay starting: its name, the wall-clock instant, and the data time it
    corresponds to (unix seconds of the replayed events; None when marked from outside)."""

    name: str
    at: float
    data_ts: float | None = None


@dataclass
class ReplayResult:
    """Everything one replay measured (`arms()` gives the `replay_runs` rows)."""

    run_id: str
    dataset: str
    started_at: dt.datetime
    ended_at: dt.datetime
    stopped_by: str  # "exhausted" (every planned visit replayed) or "max_seconds"
    feedback: str  # "real" or "funnel" (`recsys_assets.tools.replay.behaviour`)
    visits_planned: int
    visits_done: int
    events_posted: int
    lists: pd.DataFrame  # the simulator's side: SIMULATOR_LIST_COLUMNS, one row per served list
    freshness: pd.DataFrame  # FRESHNESS_COLUMNS, one row per clicked item seen by a later list
    log_lists: pd.DataFrame | None  # attribution.served_lists of this run's lists; None without the log
    phases: list[PhaseMark] = field(default_factory=list)
    shift: str | None = None
    shift_at: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    speed: float = 0.0

    @property
    def shifted_at(self) -> PhaseMark | None:
        return next((m for m in self.phases if m.name == "during"), None)

    def arms(self) -> pd.DataFrame:
        """One row per arm (`RUN_COLUMNS`), counted from the log when it was read, else by the simulator."""
        rows = []
        arms = sorted(set(self.lists["arm"]) | set(self.log_lists["arm"] if self.log_lists is not None else []))
        mism = self.mismatches()
        for arm in arms:
            sim = self.lists[self.lists["arm"] == arm]
            counts = simulator_counts(sim)
            source = "simulator"
            if self.log_lists is not None:
                counts = log_counts(self.log_lists[self.log_lists["arm"] == arm])
                source = "event_log"
            fresh = freshness_summary(self.freshness[self.freshness["arm"] == arm])
            mark = self.shifted_at
            rows.append(
                {
                    "run_id": self.run_id,
                    "dataset": self.dataset,
                    "started_at": pd.Timestamp(self.started_at),
                    "ended_at": pd.Timestamp(self.ended_at),
                    "arm": arm,
                    "model_versions": ",".join(sorted(set(sim["model_version"]))),
                    "users": int(sim["user_id"].nunique()),
                    **counts,
                    "hit_rate": float(sim["hit"].mean()) if len(sim) else math.nan,
                    **fresh,
                    "counted_from": source,
                    "consistent": None if self.log_lists is None else not any(m.startswith(f"{arm}:") for m in mism),
                    "shift": self.shift,
                    "shift_at": self.shift_at if self.shift_at is not None else math.nan,
                    "shifted_at": pd.Timestamp(mark.at, unit="s", tz="UTC") if mark else pd.NaT,
                    "seed": self.seed,
                    "speed": self.speed,
                    "stopped_by": self.stopped_by,
                }
            )
        return _typed(pd.DataFrame(rows, columns=list(RUN_COLUMNS)))

    def by_phase(self) -> pd.DataFrame:
        """The simulator's counts and rates per arm and phase (`before`, `during`, and whatever phases
        were marked from outside, e.g. `after`), in the order the phases started."""
        order = {name: i for i, name in enumerate(dict.fromkeys(m.name for m in self.phases))}
        rows = [
            {"arm": arm, "phase": phase, **simulator_counts(group), "hit_rate": float(group["hit"].mean())}
            for (arm, phase), group in self.lists.groupby(["arm", "phase"], sort=False)
        ]
        out = pd.DataFrame(rows, columns=["arm", "phase", *simulator_counts(self.lists.iloc[:0]), "hit_rate"])
        out["_order"] = out["phase"].map(order).fillna(len(order))
        return out.sort_values(["arm", "_order"]).drop(columns="_order").reset_index(drop=True)

    def mismatches(self) -> list[str]:
        """Differences between the simulator's counts and the log's, per arm (`arm: what`); empty when
        every impression, click and conversion arrived and was attributed exactly."""
        if self.log_lists is None:
            return []
        out = []
        for arm in sorted(set(self.lists["arm"]) | set(self.log_lists["arm"])):
            sim = simulator_counts(self.lists[self.lists["arm"] == arm])
            log = log_counts(self.log_lists[self.log_lists["arm"] == arm])
            out += [
                f"{arm}: {name} {sim[name]} (simulator) != {log[name]} (log)"
                for name, _ in COMPARED
                if sim[name] != log[name]
            ]
        return out


def _typed(runs: pd.DataFrame) -> pd.DataFrame:
    out = runs.astype(RUN_DTYPES)
    for col in RUN_TIMES:
        out[col] = pd.to_datetime(out[col], utc=True).astype("datetime64[us, UTC]")
    return out


def _rates(lists: int, impressions: int, clicks: int, clicked: int, converted: int) -> dict[str, float]:
    return {
        "ctr": clicked / lists if lists else math.nan,
        "impression_ctr": clicks / impressions if impressions else math.nan,
        "conversion": converted / lists if lists else math.nan,
    }


def simulator_counts(lists: pd.DataFrame) -> dict[str, float]:
    """Counts and rates of the simulator's list records."""
    n = len(lists)
    counts = {
        "lists": n,
        "impressions": int(lists["impressions"].sum()) if n else 0,
        "clicks": int(lists["clicks"].sum()) if n else 0,
        "clicked_lists": int(lists["clicked"].sum()) if n else 0,
        "converted_lists": int(lists["converted"].sum()) if n else 0,
    }
    rates = _rates(n, counts["impressions"], counts["clicks"], counts["clicked_lists"], counts["converted_lists"])
    return {**counts, **rates}


def log_counts(lists: pd.DataFrame) -> dict[str, float]:
    """The same counts from attribution's served lists (`attribution.served_lists`)."""
    t = attribution.totals(lists)
    counts = {
        "lists": int(t["lists"]),
        "impressions": int(t["impressions"]),
        "clicks": int(t["clicked_impressions"]),
        "clicked_lists": int(t["clicked_lists"]),
        "converted_lists": int(t["converted_lists"]),
    }
    rates = _rates(
        counts["lists"], counts["impressions"], counts["clicks"], counts["clicked_lists"], counts["converted_lists"]
    )
    return {**counts, **rates}


def freshness_summary(fresh: pd.DataFrame) -> dict[str, float]:
    reflected = fresh[fresh["requests"].notna()]
    seconds = reflected["seconds"].astype(float)
    return {
        "freshness_events": len(fresh),
        "freshness_requests_max": int(reflected["requests"].max()) if len(reflected) else None,
        "freshness_p50_s": float(seconds.median()) if len(seconds) else math.nan,
        "freshness_max_s": float(seconds.max()) if len(seconds) else math.nan,
        "freshness_unreflected": int(fresh["requests"].isna().sum()),
    }


# ---------------------------------------------------------------------------------------------
# The API's event log
# ---------------------------------------------------------------------------------------------


def read_log(events_dir: str | Path, since: float | None = None) -> pd.DataFrame:
    """Every row of the API's segments (`events-*.csv`) written at or after `since` (unix seconds;
    segments last modified before are skipped), as text."""
    frames = []
    for path in sorted(Path(events_dir).glob("events-*.csv")):
        if since is not None and path.stat().st_mtime < since - 1:
            continue
        # a torn last line (a crash mid-write, never acknowledged) is skipped, as the pipeline rejects it
        frames.append(pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="skip"))
    if not frames:
        return pd.DataFrame(columns=list(attribution.EVENT_LOG_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def log_lists(raw: pd.DataFrame, recommendation_ids: set[str]) -> pd.DataFrame:
    """Attribution's served lists (with their clicks and conversions) of the given lists only."""
    lists = attribution.served_lists(attribution.prepare_events(raw))
    return lists[lists["recommendation_id"].isin(recommendation_ids)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Storing and printing
# ---------------------------------------------------------------------------------------------


def store_runs(storage: Storage, rows: pd.DataFrame) -> str:
    """Append rows to `replay_runs` (a run stored again replaces its rows)."""
    name = f"{REPLAY_RUNS}.parquet"
    if storage.exists(name):
        old = storage.read_table(name)
        old = old[~old["run_id"].isin(set(rows["run_id"]))]
        rows = pd.concat([_typed(old), _typed(rows)], ignore_index=True) if len(old) else rows
    return storage.write_table(rows.reset_index(drop=True), name)


def phase_rows(result: ReplayResult, timeline: dict | None) -> pd.DataFrame:
    """`replay_phases` rows: CTR, conversion and hit rate per arm and phase of one run, each with the
    phase's start and the run's timeline (seconds from the shift; NaN where a step did not happen)."""
    rows = result.by_phase()
    started = {m.name: dt.datetime.fromtimestamp(m.at, dt.UTC) for m in result.phases}
    rows.insert(0, "run_id", result.run_id)
    rows.insert(1, "dataset", result.dataset)
    rows["phase_started_at"] = pd.to_datetime(rows["phase"].map(started), utc=True)
    rows["shift"] = result.shift
    timeline = timeline or {}
    for col in TIMELINE_COLUMNS:
        default = "" if col in ("window", "champion_before", "champion_after", "retrain_status") else math.nan
        value = timeline.get(col, default)
        rows[col] = default if value is None else value
    return rows


def store_phases(storage: Storage, rows: pd.DataFrame) -> str:
    """Append rows to `replay_phases` (a run stored again replaces its rows)."""
    name = f"{REPLAY_PHASES}.parquet"
    if storage.exists(name):
        old = storage.read_table(name)
        rows = pd.concat([old[~old["run_id"].isin(set(rows["run_id"]))], rows], ignore_index=True)
    return storage.write_table(rows.reset_index(drop=True), name)


def _fmt(value: object, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float | np.floating):
        return f"{value:.1%}" if pct else f"{value:.3f}"
    return str(value)


def summary_text(result: ReplayResult) -> str:
    """A plain-text summary: per arm counts and rates, freshness, the champion/challenger CTR ratio."""
    arms = result.arms()
    head = (
        f"replay {result.run_id} ({result.dataset}): {result.visits_done}/{result.visits_planned} visits, "
        f"{result.events_posted} events posted, {(result.ended_at - result.started_at).total_seconds():.0f} s, "
        f"stopped: {result.stopped_by}; feedback: {result.feedback}"
    )
    cols = [
        ("arm", "arm", False),
        ("model", "model_versions", False),
        ("users", "users", False),
        ("lists", "lists", False),
        ("impr.", "impressions", False),
        ("clicks", "clicks", False),
        ("CTR", "ctr", True),
        ("impr. CTR", "impression_ctr", True),
        ("conversion", "conversion", True),
        ("hit rate", "hit_rate", True),
        ("fresh. req.", "freshness_requests_max", False),
        ("fresh. p50 s", "freshness_p50_s", False),
    ]
    table = [[h for h, _, _ in cols]] + [[_fmt(row[c], pct) for _, c, pct in cols] for _, row in arms.iterrows()]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    lines = [head, ""] + ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in table]
    by_arm = arms.set_index("arm")
    if {"champion", "challenger"} <= set(by_arm.index) and by_arm.loc["challenger", "ctr"] > 0:
        ratio = by_arm.loc["champion", "ctr"] / by_arm.loc["challenger", "ctr"]
        lines.append(f"\nchampion / challenger list CTR: {ratio:.2f}x")
    if result.log_lists is None:
        lines.append("counted by the simulator (the API's event log was not read)")
    else:
        mism = result.mismatches()
        lines.append("event log agrees with the simulator" if not mism else "MISMATCH: " + "; ".join(mism))
    if result.phases and len({m.name for m in result.phases}) > 1:
        lines.append(
            "phases: "
            + ", ".join(f"{m.name} at {dt.datetime.fromtimestamp(m.at, dt.UTC):%H:%M:%S}" for m in result.phases)
        )
    if result.errors:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())))
    return "\n".join(lines)
