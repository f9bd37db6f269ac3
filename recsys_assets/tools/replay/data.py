"""The replay's data: a data set cut in time, the past written for the pipeline, the future cut into visits.

`prepare` writes, under a work folder:

    past/events.csv     the events before the cut (the pipeline trains on them)
    past/items.csv      MovieLens: the item catalog (titles, genres, year)
    past/users.csv      MovieLens: the user table, users with a past event
    future/events.csv   the events from the cut on (the replay plays them)
    replay.env          RECSYS_SOURCE=event_log over past/, storage and Dagster home in the folder
    split.json          the cut and the counts

Events files are CSV with the columns `user_id, item_id, event_type, timestamp` (unix seconds),
`value`, `category`, in the pipeline's canonical event types, already cleaned (the rows the
pipeline's cleaning would reject are not in them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from recsys_assets.contract.events import parse_timestamps
from recsys_assets.contract.settings import EventLogSource, Settings
from recsys_assets.lib.ingest import cleaning, readers
from recsys_assets.tools.replay.behaviour import RealEvent
from recsys_assets.tools.services import PROJECT_ROOT

DATASETS = ("ml-100k", "taobao")
# where docs/config/taobao.env reads it: next to the project folder, never copied into it
TAOBAO_SAMPLE = PROJECT_ROOT.parent / "shared" / "datasets" / "taobao-sample" / "UserBehavior_head84k.csv"
TAOBAO_SOURCE = EventLogSource(
    paths=[str(TAOBAO_SAMPLE)],
    header=False,
    names=["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
    columns={"event_type": "behavior_type"},
    category_column="category_id",
    event_types={"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"},
    timestamp_unit="s",
)
# the Taobao data set's documented period, 2017-11-25 .. 2017-12-03 in UTC+8
TAOBAO_PERIOD = (pd.Timestamp("2017-11-25T00:00:00+08:00"), pd.Timestamp("2017-12-04T00:00:00+08:00"))
EVENT_FILE_COLUMNS = ("user_id", "item_id", "event_type", "timestamp", "value", "category")
ENV_FILE = "replay.env"
Shift = Literal["newest-items", "new-users"]
SHIFTS: tuple[str, ...] = ("newest-items", "new-users")


@dataclass
class Dataset:
    """Cleaned events (canonical types, UTC timestamps) and the side tables the source has."""

    name: str
    events: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None


def _cleaning_settings(**overrides: object) -> Settings:
    # only the cleaning rules matter here; nothing from the environment or an env file
    return Settings(_env_file=None, source="movielens", event_log=None, kcore_user=0, kcore_item=0, **overrides)  # type: ignore[call-arg]


def load_dataset(name: str, path: str | Path | None = None) -> Dataset:
    """`ml-100k` (from the recbole wheel) or `taobao` (the sample, or the file at `path`), cleaned."""
    if name == "ml-100k":
        raw, items, users = readers.read_movielens(Path(path) if path else None)
        inter = cleaning.clean_events(raw, _cleaning_settings().cleaning()).interactions
        return Dataset(name, _canonical(inter), items, users)
    if name == "taobao":
        source = TAOBAO_SOURCE.model_copy(update={"paths": [str(path or TAOBAO_SAMPLE)]})
        raw = readers.read_event_log(source)
        lo, hi = TAOBAO_PERIOD
        settings = _cleaning_settings(time_min=lo.to_pydatetime(), time_max=hi.to_pydatetime())
        return Dataset(name, _canonical(cleaning.clean_events(raw, settings.cleaning(), unit="s").interactions))
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def _canonical(inter: pd.DataFrame) -> pd.DataFrame:
    out = inter[["user_id", "item_id", "event_type", "timestamp", "value", "category"]].copy()
    return out.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)


@dataclass
class TimeSplit:
    past: pd.DataFrame
    future: pd.DataFrame
    cut: pd.Timestamp


def category_items(dataset: Dataset, category: str) -> set[str]:
    """The items of `category`: from the catalog's `|`-separated categories, else the events' own."""
    if dataset.items is not None and "categories" in dataset.items:
        cats = dataset.items["categories"].fillna("").astype(str).str.split("|")
        mask = cats.map(lambda parts: category in {c.strip() for c in parts})
        return set(dataset.items.loc[mask, "item_id"].astype(str))
    events = dataset.events
    return set(events.loc[events["category"].astype(str) == category, "item_id"].astype(str))


def split_in_time(events: pd.DataFrame, future_fraction: float = 0.2) -> TimeSplit:
    """The last `future_fraction` of events by time are the future; events at the cut's instant all go
    to the future, so no instant is on both sides."""
    if not 0 < future_fraction < 1:
        raise ValueError(f"future_fraction must be in (0, 1), got {future_fraction}")
    if events.empty:
        raise ValueError("no events to split")
    ts = pd.to_datetime(events["timestamp"], utc=True)
    ordered = ts.sort_values(kind="stable").reset_index(drop=True)
    n_past = min(len(ordered) - 1, max(1, math.floor(len(ordered) * (1 - future_fraction))))
    cut = pd.Timestamp(ordered.iloc[n_past])
    is_future = (ts >= cut).to_numpy()
    if is_future.all():
        raise ValueError("every event is at the cut's instant: nothing left to train on")
    return TimeSplit(
        past=events[~is_future].reset_index(drop=True), future=events[is_future].reset_index(drop=True), cut=cut
    )


def write_events(events: pd.DataFrame, path: Path) -> Path:
    """Events as the pipeline's event-log CSV (timestamps as unix seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = events.reindex(columns=list(EVENT_FILE_COLUMNS)).copy()
    ts = pd.to_datetime(out["timestamp"], utc=True)
    out["timestamp"] = (ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    out.to_csv(path, index=False)
    return path


def read_events(path: str | Path) -> pd.DataFrame:
    """An events file written by `write_events` (or any CSV with those columns) as canonical events."""
    df = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "event_type": str, "category": str})
    missing = [c for c in ("user_id", "item_id", "event_type", "timestamp") if c not in df]
    if missing:
        raise ValueError(f"{path}: required columns missing: {missing}")
    df["timestamp"] = parse_timestamps(df["timestamp"].astype(str))
    if "value" not in df:
        df["value"] = np.nan
    df = df.dropna(subset=["user_id", "item_id", "event_type", "timestamp"])
    return df.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)


@dataclass
class Prepared:
    """What `prepare` wrote."""

    workdir: Path
    env_file: Path
    past_events: Path
    future_events: Path
    split: TimeSplit
    summary: dict[str, object]


def prepare(
    dataset: Dataset,
    workdir: str | Path,
    future_fraction: float = 0.2,
    catalog: Literal["all", "past"] = "all",
    hold_out_category: str | None = None,
) -> Prepared:
    """Cut `dataset` in time and write the past (with an env file for the pipeline) and the future.

    `catalog="all"` keeps the whole item catalog (a shop knows the items it has not sold yet; the
    past-trained model can reach them through content); `"past"` keeps only items with a past event.
    `hold_out_category` drops the past events on that category's items (catalog categories, else the
    events' own): a category the shop has not launched yet. With the `newest-items` shift those items
    launch, with the items new in the future, at the shift.
    """
    work = Path(workdir).resolve()
    split = split_in_time(dataset.events, future_fraction)
    held_out: set[str] = set()
    if hold_out_category is not None:
        held_out = category_items(dataset, hold_out_category)
        if not held_out:
            raise ValueError(f"hold_out_category {hold_out_category!r}: no item of {dataset.name} has it")
        split = TimeSplit(split.past[~split.past["item_id"].isin(held_out)], split.future, split.cut)
    past_file = write_events(split.past, work / "past" / "events.csv")
    future_file = write_events(split.future, work / "future" / "events.csv")
    source: dict[str, object] = {"paths": [str(past_file)], "timestamp_unit": "s", "category_column": "category"}
    if dataset.items is not None:
        items = dataset.items
        if catalog == "past":
            items = items[items["item_id"].isin(set(split.past["item_id"]))]
        items_file = work / "past" / "items.csv"
        items.to_csv(items_file, index=False)
        source["items"] = {"path": str(items_file)}
    if dataset.users is not None:
        users = dataset.users[dataset.users["user_id"].isin(set(split.past["user_id"]))]
        users_file = work / "past" / "users.csv"
        users.to_csv(users_file, index=False)
        source["users"] = {"path": str(users_file)}
    env_file = work / ENV_FILE
    env_file.write_text(
        "\n".join(
            [
                f"# The past of {dataset.name} (before {split.cut.isoformat()}): `recsys_assets.tools.replay prepare`",
                "RECSYS_SOURCE=event_log",
                f"RECSYS_EVENT_LOG={json.dumps(source)}",
                f"RECSYS_STORAGE_URI={work / 'data'}",
                f"RECSYS_DAGSTER_HOME={work / 'dagster'}",
                "",
            ]
        )
    )
    past_users, past_items = set(split.past["user_id"]), set(split.past["item_id"])
    summary: dict[str, object] = {
        "dataset": dataset.name,
        "cut": split.cut.isoformat(),
        "future_fraction": future_fraction,
        "catalog": catalog,
        "hold_out_category": hold_out_category,
        "held_out_items": len(held_out),
        "past_events": len(split.past),
        "future_events": len(split.future),
        "past_users": len(past_users),
        "future_users": int(split.future["user_id"].nunique()),
        "future_users_new": int((~split.future["user_id"].drop_duplicates().isin(past_users)).sum()),
        "future_items": int(split.future["item_id"].nunique()),
        "future_items_new": int((~split.future["item_id"].drop_duplicates().isin(past_items)).sum()),
        "future_event_types": split.future["event_type"].value_counts().to_dict(),
    }
    (work / "split.json").write_text(json.dumps(summary, indent=2))
    return Prepared(work, env_file, past_file, future_file, split, summary)


# ---------------------------------------------------------------------------------------------
# Visits
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """A user's consecutive real events close in time: one list request, then their reactions."""

    user_id: str
    index: int  # the user's n-th visit in the replay, from 0
    events: tuple[RealEvent, ...]
    shifted: bool = False

    @property
    def start(self) -> float:
        return self.events[0].ts


def real_events(events: pd.DataFrame) -> list[RealEvent]:
    ts = (pd.to_datetime(events["timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    values = pd.to_numeric(events["value"], errors="coerce") if "value" in events else pd.Series(np.nan, events.index)
    return [
        RealEvent(str(u), str(i), str(t), float(s), None if pd.isna(v) else float(v))
        for u, i, t, s, v in zip(events["user_id"], events["item_id"], events["event_type"], ts, values, strict=True)
    ]


def build_visits(events: list[RealEvent], gap_seconds: float = 1800.0, max_events: int = 1) -> list[Visit]:
    """Each user's events in time order, cut where two are more than `gap_seconds` apart or a visit
    holds `max_events`; all visits ordered by start (then user)."""
    by_user: dict[str, list[RealEvent]] = {}
    for ev in sorted(events, key=lambda e: (e.ts, e.user_id, e.item_id)):
        by_user.setdefault(ev.user_id, []).append(ev)
    visits: list[Visit] = []
    for user, evs in by_user.items():
        current: list[RealEvent] = []
        n = 0
        for ev in evs:
            if current and (ev.ts - current[-1].ts > gap_seconds or len(current) >= max_events):
                visits.append(Visit(user, n, tuple(current)))
                n, current = n + 1, []
            current.append(ev)
        visits.append(Visit(user, n, tuple(current)))
    return sorted(visits, key=lambda v: (v.start, v.user_id, v.index))


def apply_shift(
    visits: list[Visit], shift: Shift, shift_at: float, past_users: set[str], past_items: set[str]
) -> tuple[list[Visit], float | None]:
    """From the visit at fraction `shift_at` of the replay on, keep only the shifted stream: events on
    items without a past event (`newest-items`), or visits of users without one (`new-users`).

    `newest-items` is a launch: before the shift those items do not exist yet, so their events are
    held back there too; the stream is the known catalogue before the shift and the launched items
    after it.

    Returns the visits (re-numbered per user) and the data time of the shift (None if no visit is left
    after it)."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; known: {', '.join(SHIFTS)}")
    if not 0 <= shift_at <= 1:
        raise ValueError(f"shift_at must be in [0, 1], got {shift_at}")
    at = min(len(visits), math.floor(len(visits) * shift_at))
    out: list[Visit] = []
    for v in visits[:at]:
        kept = v.events if shift == "new-users" else tuple(e for e in v.events if e.item_id in past_items)
        if kept:
            out.append(Visit(v.user_id, v.index, kept))
    n_before = len(out)
    for v in visits[at:]:
        if shift == "new-users":
            kept = v.events if v.user_id not in past_users else ()
        else:
            kept = tuple(e for e in v.events if e.item_id not in past_items)
        if kept:
            out.append(Visit(v.user_id, v.index, kept, shifted=True))
    first_shifted = next((v.start for v in out[n_before:]), None)
    return renumber(out), first_shifted


def renumber(visits: list[Visit]) -> list[Visit]:
    """Visit indices 0, 1, ... per user again, after visits were dropped."""
    seen: dict[str, int] = {}
    out = []
    for v in visits:
        n = seen.get(v.user_id, 0)
        seen[v.user_id] = n + 1
        out.append(Visit(v.user_id, n, v.events, v.shifted))
    return out
