"""Daily (incremental) ingestion: cleaned interactions stored as day partitions, with a manifest of the
source files and live windows already in them, so a run reads and cleans only what is new.

Layout under the storage root (Hive style, one Parquet object per day, each written atomically):

    interactions/day=2025-01-09/part.parquet     the day's cleaned interactions, before the k-core filter
    interactions/_manifest.json                  what is stored: files (size, mtime), windows, days, counts
    interactions/_rejected.parquet               the rejected rows' sample, per reason

A run's result equals a full re-ingest of the same files: each new batch is cleaned with the same
`clean_events`, then merged into the days it touches with the same de-duplication (the stored rows
first, as a full run reads the older files first). Two steps look at the whole history, and are done
over the stored partitions: a repeated `event_id` on another day (DuckDB over the partitions' `event_id`
column), and the k-core filter (on the union's id columns). The manifest is written last: a run that
stops half-way leaves it naming the old state, and the next run merges the same batch again, which the
de-duplication makes a no-op. A changed source mapping or cleaning rule, or an ingested file that
changed or went away, makes the run a full re-ingest (the reason is logged).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_assets.contract.configs import CleaningConfig
from recsys_assets.contract.ingestion import DAY_PARTITIONS, MANIFEST, PENDING
from recsys_assets.contract.sources import EventLogSource
from recsys_assets.contract.storage import Storage
from recsys_assets.lib import live_windows as live
from recsys_assets.lib.ingest import cleaning, readers

MANIFEST_VERSION = 1
PART = "part.parquet"
REJECTED = "_rejected.parquet"


class DailyIngestionError(ValueError):
    """A configuration or stored state daily ingestion cannot work with; the message says the fix."""


@dataclass
class Plan:
    """What a daily run reads: every current file and window (with their stamps), the new ones among
    them, and whether the run is a full re-ingest (and why)."""

    fingerprint: dict[str, Any]
    files: dict[str, dict[str, Any]]
    windows: dict[str, int]
    new_files: list[str]
    new_windows: list[str]
    full: bool
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))


@dataclass
class Stored:
    """What one run stored: the days it wrote and the counts of its batch."""

    days: list[str]
    rows: int
    duplicates: int
    cross_day_duplicates: int
    removed_days: list[str] = field(default_factory=list)


def fingerprint(source: EventLogSource, config: CleaningConfig) -> dict[str, Any]:
    """Everything that decides how a row is cleaned, but not which files are read: each source's mapping
    and the cleaning rules (the k-core filter is applied to the union, so it is not part of it)."""
    return {
        "version": MANIFEST_VERSION,
        "sources": [s.model_dump(mode="json", exclude={"paths"}) for s in source.files()],
        "cleaning": config.model_dump(mode="json", exclude={"kcore_user", "kcore_item"}),
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def file_stamp(path: str) -> dict[str, Any]:
    """Size and modification time of a source file (local or any fsspec URL)."""
    fs, real = fsspec.core.url_to_fs(path)
    info = fs.info(real)
    mtime = info.get("mtime") or info.get("last_modified") or info.get("LastModified") or info.get("created")
    return {"size": int(info.get("size") or 0), "mtime": str(mtime)}


def window_stamps(store: Storage) -> dict[str, int]:
    """Size of every stored live window, by key."""
    return {
        key: int(store.fs.info(store.path(live.LIVE_EVENTS, f"{live.file_key(key)}.parquet"))["size"])
        for key in live.stored_windows(store)
    }


def load_manifest(store: Storage) -> dict[str, Any] | None:
    if not store.exists(DAY_PARTITIONS, MANIFEST):
        return None
    return json.loads(store.read_bytes(DAY_PARTITIONS, MANIFEST))


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which parts of the fingerprint differ, for the log."""
    keys = [f"cleaning.{k}" for k in sorted(new["cleaning"]) if old.get("cleaning", {}).get(k) != new["cleaning"][k]]
    if old.get("sources") != new["sources"]:
        keys.append("the sources' mapping (RECSYS_EVENT_LOG)")
    return ", ".join(keys) or "the manifest's version"


def plan(
    store: Storage, source: EventLogSource, config: CleaningConfig, reingest: bool = False, with_windows: bool = True
) -> Plan:
    """Compare the log's files and the stored live windows with the manifest: the new ones are read, or
    everything (a full re-ingest) when asked to, on the first run, or when stored rows may be stale."""
    if source.time_mode != "timestamp":
        raise DailyIngestionError(
            f"daily ingestion splits interactions by day, but this log has no time (time mode {source.time_mode!r}): "
            "set RECSYS_INGESTION__MODE=full"
        )
    fp = fingerprint(source, config)
    files = {path: file_stamp(path) for _, path in readers.log_files(source)}
    windows = window_stamps(store) if with_windows else {}
    manifest = load_manifest(store)
    reason = ""
    if reingest:
        reason = "a full re-ingest was asked for (RECSYS_INGESTION__REINGEST)"
    elif manifest is None:
        reason = "nothing is stored yet"
    elif manifest["fingerprint"] != _digest(fp):
        reason = f"the configuration changed since the last ingestion ({_changed(manifest['config'], fp)})"
    else:
        gone = sorted(set(manifest["files"]) - set(files)) + sorted(set(manifest["windows"]) - set(windows))
        changed = sorted(p for p, s in manifest["files"].items() if p in files and files[p] != s)
        changed += sorted(k for k, s in manifest["windows"].items() if k in windows and windows[k] != s)
        if gone:
            reason = f"{len(gone)} ingested file(s) or window(s) are no longer there (e.g. {gone[0]})"
        elif changed:
            reason = f"{len(changed)} ingested file(s) or window(s) changed since (e.g. {changed[0]})"
    if reason:
        return Plan(fp, files, windows, list(files), list(windows), full=True, reason=reason)
    assert manifest is not None
    new_files = [p for p in files if p not in manifest["files"]]
    new_windows = [k for k in windows if k not in manifest["windows"]]
    return Plan(fp, files, windows, new_files, new_windows, full=False)


def numeric_unit(text: pd.Series) -> str | None:
    """The unit `auto` reads numeric times in (as `contract.events.parse_timestamps` decides), None without any."""
    n = pd.to_numeric(text.astype("string").str.strip(), errors="coerce").dropna()
    if not len(n):
        return None
    mag = n.astype("float64").abs().median()
    return "us" if mag > 1e14 else "ms" if mag > 1e11 else "s"


def check_unit(store: Storage, raw: pd.DataFrame, declared: str, full: bool) -> str | None:
    """A log declared `timestamp_unit: auto` is read in the unit the magnitude of its numbers says; a new
    batch that reads differently from the stored days would not equal a full run: refuse it."""
    unit = numeric_unit(raw["timestamp"]) if declared == "auto" else declared
    manifest = None if full else load_manifest(store)
    stored = manifest.get("unit") if manifest else None
    if stored and unit and stored != unit:
        raise DailyIngestionError(
            f"the new files' numeric timestamps read as {unit!r}, the stored days' as {stored!r} "
            "(`timestamp_unit: auto` guesses from their size): set `timestamp_unit` in RECSYS_EVENT_LOG, "
            "which also makes the next run a full re-ingest"
        )
    return unit or stored


def _day(ts: pd.Series) -> pd.Series:
    """Each time's UTC day as `YYYY-MM-DD` (formatted once per day, not per row)."""
    codes, days = pd.factorize(ts.dt.floor("D"))
    labels = np.asarray(pd.DatetimeIndex(days).strftime("%Y-%m-%d"), dtype=object)
    return pd.Series(labels[codes], index=ts.index)


def stored_days(store: Storage) -> list[str]:
    """The days with a stored partition."""
    days = set()
    for path in store.list(DAY_PARTITIONS):
        parts = path.split("/")
        if len(parts) == 3 and parts[1].startswith("day=") and parts[2] == PART:
            days.add(parts[1].removeprefix("day="))
    return sorted(days)


def _ids_stored(store: Storage, days: list[str], ids: np.ndarray) -> set[str]:
    """The `event_id`s among `ids` already stored on one of `days` (DuckDB reads only that column)."""
    if not days or not len(ids):
        return set()
    import duckdb

    con = duckdb.connect()
    if not store.is_local:
        con.register_filesystem(store.fs)
    paths = [store.uri(DAY_PARTITIONS, f"day={d}", PART) for d in days]
    con.register("new_ids", pd.DataFrame({"event_id": ids.astype(object)}))
    rows = con.execute(
        "SELECT DISTINCT p.event_id FROM read_parquet(?) p JOIN new_ids n ON p.event_id = n.event_id", [paths]
    ).fetchall()
    con.close()
    return {r[0] for r in rows}


def store_batch(store: Storage, plan: Plan, result: cleaning.CleanResult, unit: str | None, per_reason: int) -> Stored:
    """Merge a cleaned batch (before the k-core filter) into the day partitions and commit the manifest.

    A full re-ingest first removes the manifest (so a run that stops half-way is redone in full), writes
    every day and removes the days it no longer has."""
    if not (plan.full or plan.new_files or plan.new_windows):
        return Stored([], 0, 0, 0)  # nothing new: nothing stored changes
    inter = result.interactions
    manifest = None if plan.full else load_manifest(store)
    if plan.full and store.exists(DAY_PARTITIONS, MANIFEST):
        store.fs.rm(store.path(DAY_PARTITIONS, MANIFEST))
    before = [] if plan.full else stored_days(store)
    day = _day(inter["timestamp"])
    # an event_id stored on another day: the stored row came first (a full run reads older files first)
    with_id = inter["event_id"].dropna().unique()
    seen = _ids_stored(store, before, np.asarray(with_id))
    cross = inter["event_id"].isin(seen).fillna(False).to_numpy(bool) if seen else np.zeros(len(inter), bool)
    inter, day = inter[~cross], day[~cross]
    n_dup = 0
    written = []
    for d, rows in inter.groupby(day.to_numpy(), sort=True):
        if d in before:
            old = store.read_table(DAY_PARTITIONS, f"day={d}", PART)
            rows = pd.concat([old, rows], ignore_index=True)
            dup = cleaning.duplicates(rows)
            n_dup += int(dup.sum())
            rows = cleaning.sort_interactions(rows[~dup])
        store.write_table(rows.reset_index(drop=True), DAY_PARTITIONS, f"day={d}", PART)
        written.append(str(d))
    removed = []
    if plan.full:
        removed = [d for d in stored_days(store) if d not in set(written)]
        for d in removed:
            store.fs.rm(store.path(DAY_PARTITIONS, f"day={d}"), recursive=True)
    _store_rejects(store, result.rejected, per_reason, keep_old=not plan.full)
    _commit(store, plan, manifest, result, unit, n_dup + int(cross.sum()))
    # the stored rows of a day come first and hold no duplicates: every one dropped in a merge is a new row
    return Stored(written, len(inter) - n_dup, n_dup, int(cross.sum()), removed)


def _store_rejects(store: Storage, rejected: pd.DataFrame, per_reason: int, keep_old: bool) -> None:
    if keep_old and not len(rejected) and store.exists(DAY_PARTITIONS, REJECTED):
        return
    if keep_old and store.exists(DAY_PARTITIONS, REJECTED):
        rejected = pd.concat([store.read_table(DAY_PARTITIONS, REJECTED), rejected], ignore_index=True)
    store.write_table(cleaning.sample_rejects(rejected, per_reason), DAY_PARTITIONS, REJECTED)


def rejected_sample(store: Storage) -> pd.DataFrame:
    """The stored sample of rejected rows (up to `reject_sample_size` per reason, the oldest first)."""
    return store.read_table(DAY_PARTITIONS, REJECTED) if store.exists(DAY_PARTITIONS, REJECTED) else pd.DataFrame()


def _commit(
    store: Storage,
    plan: Plan,
    manifest: dict[str, Any] | None,
    result: cleaning.CleanResult,
    unit: str | None,
    merge_duplicates: int,
) -> None:
    totals: dict[str, Any] = dict(manifest["totals"]) if manifest else {"n_raw": 0, "n_duplicates": 0, "impressions": 0}
    counts: dict[str, int] = dict(totals.get("reject_counts", {}))
    impressions = result.notes.get("impressions", 0)
    assert isinstance(impressions, int)
    for reason, n in result.reject_counts.items():
        counts[reason] = counts.get(reason, 0) + n
    totals.update(
        n_raw=totals["n_raw"] + result.n_raw,
        n_duplicates=totals["n_duplicates"] + result.n_duplicates + merge_duplicates,
        impressions=totals["impressions"] + impressions,
        reject_counts=counts,
    )
    new = {
        "version": MANIFEST_VERSION,
        "fingerprint": _digest(plan.fingerprint),
        "config": plan.fingerprint,
        "unit": unit,
        "files": {**(manifest["files"] if manifest else {}), **{p: plan.files[p] for p in plan.new_files}},
        "windows": {**(manifest["windows"] if manifest else {}), **{k: plan.windows[k] for k in plan.new_windows}},
        "totals": totals,
    }
    store.write_text(json.dumps(new, indent=1, sort_keys=True), DAY_PARTITIONS, MANIFEST)


def read_interactions(store: Storage, kcore_user: int = 0, kcore_item: int = 0) -> pa.Table:
    """The union of the day partitions in time order, with the k-core filter applied to it."""
    tables = []
    for d in stored_days(store):
        with store.fs.open(store.path(DAY_PARTITIONS, f"day={d}", PART), "rb") as fh:
            tables.append(pq.read_table(fh))
    if not tables:
        raise DailyIngestionError(f"no day partition is stored under {store.uri(DAY_PARTITIONS)}")
    table = pa.concat_tables(tables, promote_options="permissive")
    if kcore_user or kcore_item:
        ids = table.select(["user_id", "item_id"]).to_pandas()
        ids["row"] = np.arange(len(ids))
        kept = cleaning.kcore_filter(ids, kcore_user, kcore_item)["row"].to_numpy()
        table = table.take(pa.array(kept))
    return table


def write_pending(store: Storage, plan: Plan) -> None:
    """Hand the plan of `raw_sources` to `clean` (the rows are `raw_events`)."""
    store.write_text(plan.to_json(), DAY_PARTITIONS, PENDING)


def read_pending(store: Storage) -> Plan | None:
    if not store.exists(DAY_PARTITIONS, PENDING):
        return None
    return Plan.from_json(store.read_bytes(DAY_PARTITIONS, PENDING).decode())


def clear_pending(store: Storage) -> None:
    if store.exists(DAY_PARTITIONS, PENDING):
        store.fs.rm(store.path(DAY_PARTITIONS, PENDING))


def partition_uri(store: Storage) -> str:
    """The glob DuckDB or pyarrow read the partitions with (`hive_partitioning` gives the `day` column)."""
    return posixpath.join(store.uri(DAY_PARTITIONS), "day=*", PART)


def clean_batch(
    store: Storage, plan: Plan, raw: pd.DataFrame, config: CleaningConfig, unit: str = "auto"
) -> tuple[cleaning.CleanResult, str | None]:
    """The new raw rows and the plan's new live windows, cleaned without the k-core filter (applied to the
    union), and the unit their numeric times read in."""
    live_rows = live.read_live_events(store, unit=unit, keys=plan.new_windows)
    if len(live_rows):
        raw = readers.stack(raw, live_rows) if len(raw) else live_rows.reset_index(drop=True)
    seen_unit = check_unit(store, raw, unit, plan.full)
    rules = config.model_copy(update={"kcore_user": 0, "kcore_item": 0})
    return cleaning.clean_events(raw, rules, unit=unit), seen_unit


def ingest(
    store: Storage,
    source: EventLogSource,
    config: CleaningConfig,
    unit: str = "auto",
    per_reason: int = 200,
    reingest: bool = False,
) -> tuple[Plan, Stored, pa.Table]:
    """One daily run without Dagster (the `raw_sources` and `clean` steps in one call): plan, read the new
    files, clean, store, and the union of the days."""
    todo = plan(store, source, config, reingest=reingest)
    raw = readers.read_event_log(source, only=set(todo.new_files))
    result, seen_unit = clean_batch(store, todo, raw, config, unit)
    stored = store_batch(store, todo, result, seen_unit, per_reason)
    return todo, stored, read_interactions(store, config.kcore_user, config.kcore_item)
