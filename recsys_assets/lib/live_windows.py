"""Live events: the API's event-log segments cut into fixed time windows.

The API appends every served list (impression rows) and every feedback event to CSV segments under
`Settings.events_path()` (`serving/eventlog.py`). The pipeline reads them back here, window by window:
a window is `[start, start + drift_window_minutes)` in UTC, named by its start (`2026-11-27T16:00`),
and a row belongs to the window of its `timestamp` (for an impression, when the list was served).
A torn last line (a write cut by a crash, never acknowledged) has no timestamp: it goes to the
window of the row before it and is rejected by cleaning as `malformed_row`.

Nothing here imports Dagster: the sensor, the assets and the tests share these functions.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from recsys_assets.contract.events import SERVING_COLUMNS, parse_timestamps
from recsys_assets.contract.storage import Storage
from recsys_assets.lib.ingest import readers

# Raw columns of a live window: the ingestion's raw schema plus the serving fields.
LIVE_COLUMNS: tuple[str, ...] = (*readers.RAW_COLUMNS, *SERVING_COLUMNS)
LIVE_EVENTS = "live_events"  # the stored windows: `live_events/<window>.parquet`
KEY_FORMAT = "%Y-%m-%dT%H:%M"
SEGMENT_GLOB = "events-*.csv"


def window_floor(ts: pd.Series, minutes: int) -> pd.Series:
    """The start of the window of each timestamp (UTC)."""
    return ts.dt.floor(f"{minutes}min")


def window_key(start: pd.Timestamp | dt.datetime) -> str:
    return pd.Timestamp(start).tz_convert("UTC").strftime(KEY_FORMAT)


def window_bounds(key: str, minutes: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """`[start, end)` of a window, from its key."""
    try:
        start = pd.Timestamp(dt.datetime.strptime(key, KEY_FORMAT), tz="UTC")
    except ValueError as exc:
        raise ValueError(f"window key {key!r}: expected the format {KEY_FORMAT}") from exc
    return start, start + pd.Timedelta(minutes=minutes)


def segments(directory: str | os.PathLike[str]) -> list[Path]:
    path = Path(directory)
    return sorted(path.glob(SEGMENT_GLOB)) if path.is_dir() else []


def read_segment(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Every row of one segment as text in `LIVE_COLUMNS`; a row the parser cannot split keeps its
    text in `raw_line`. An empty or header-only segment gives no rows."""
    path = str(path)
    if os.path.getsize(path) == 0:
        return readers.empty(LIVE_COLUMNS)
    table, bad = readers.read_csv_text(path, ",", True, None)
    df = pd.DataFrame({c: table[c].to_pandas().astype("string") for c in table.column_names if c in LIVE_COLUMNS})
    df["source_file"] = path
    df["source_line"] = readers.line_numbers(len(df), bad, header=True)
    if bad:
        torn = pd.DataFrame({"source_file": path, "source_line": [n for n, _ in bad], "raw_line": [t for _, t in bad]})
        df = pd.concat([df, torn], ignore_index=True).sort_values("source_line", kind="stable")
    return readers.conform(df, LIVE_COLUMNS).reset_index(drop=True)


def read_appended(path: str | os.PathLike[str], offset: int) -> tuple[pd.DataFrame, int]:
    """The complete lines appended to a segment since byte `offset` (0: the whole segment), and the
    offset after them. A line still being written (no newline yet) is left for the next read."""
    with open(path, "rb") as fh:
        header = fh.readline()
        start = max(offset, len(header))
        fh.seek(start)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    if end == 0:
        return readers.empty(LIVE_COLUMNS), start
    table = pacsv.read_csv(
        io.BytesIO(header + data[:end]),
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in LIVE_COLUMNS}, strings_can_be_null=True
        ),
    )
    df = pd.DataFrame({c: table[c].to_pandas().astype("string") for c in table.column_names if c in LIVE_COLUMNS})
    return readers.conform(df, LIVE_COLUMNS), start + end


def with_windows(rows: pd.DataFrame, minutes: int) -> pd.Series:
    """The window key of each row (a malformed row takes the window of the row before it)."""
    ts = parse_timestamps(rows["timestamp"].astype("string"))
    keys = window_floor(ts, minutes).map(lambda t: window_key(t) if pd.notna(t) else None)
    return keys.ffill().bfill()


def read_window(directory: str | os.PathLike[str], key: str, minutes: int) -> pd.DataFrame:
    """Every row of every segment that falls in window `key`."""
    frames = []
    for path in segments(directory):
        rows = read_segment(path)
        if rows.empty:
            continue
        frames.append(rows[(with_windows(rows, minutes) == key).to_numpy()])
    if not frames:
        return readers.empty(LIVE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


@dataclass
class ScanState:
    """What the live-events sensor remembers between ticks: how far it has read every segment (a
    byte offset: segments are append-only, so only new lines are read), and windows that have data but
    have not been requested yet (not over, or new rows since)."""

    files: dict[str, int] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"files": self.files, "pending": sorted(self.pending)}

    @classmethod
    def from_json(cls, data: dict[str, object] | None) -> ScanState:
        data = data or {}
        return cls(dict(data.get("files", {})), list(data.get("pending", [])))  # type: ignore[arg-type]


@dataclass
class ScanResult:
    state: ScanState
    ready: list[str]  # windows to materialize now, oldest first
    changed: list[str]  # segments read on this tick
    signature: str  # changes whenever a segment grows: part of the run key


def scan(
    directory: str | os.PathLike[str],
    state: ScanState,
    now: dt.datetime,
    minutes: int,
    grace_seconds: float,
) -> ScanResult:
    """Read the lines appended to segments since `state`, note the windows they touch, and return the
    windows that are over (end + grace <= now) and not yet requested."""
    files = dict(state.files)
    pending = set(state.pending)
    changed = []
    for path in segments(directory):
        offset = files.get(path.name, 0)
        if path.stat().st_size <= offset:
            continue
        rows, files[path.name] = read_appended(path, offset)
        if files[path.name] != offset:
            changed.append(path.name)
        if not rows.empty:
            pending.update(k for k in with_windows(rows, minutes).dropna().unique())
    cutoff = pd.Timestamp(now).tz_convert("UTC") - pd.Timedelta(seconds=grace_seconds)
    ready = sorted(k for k in pending if window_bounds(k, minutes)[1] <= cutoff)
    signature = f"{len(files)}-{sum(files.values())}"
    return ScanResult(ScanState(files, sorted(pending - set(ready))), ready, changed, signature)


def window_keys_before(keys: Iterable[str], key: str, n: int) -> list[str]:
    """The `n` latest keys strictly before `key` (keys sort in time order)."""
    return sorted(k for k in keys if k < key)[-n:] if n > 0 else []


def file_key(key: str) -> str:
    """A window key as a file name (no colon)."""
    return key.replace(":", "")


def stored_windows(store: Storage) -> list[str]:
    """Keys of the stored `live_events` windows, oldest first."""
    keys = []
    for path in store.list(LIVE_EVENTS):
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".parquet"):
            stem = name.removesuffix(".parquet")
            keys.append(f"{stem[:-2]}:{stem[-2:]}")
    return sorted(keys)


def read_windows(store: Storage, keys: list[str]) -> pd.DataFrame:
    frames = [store.read_table(LIVE_EVENTS, f"{file_key(k)}.parquet") for k in keys]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else readers.empty(LIVE_COLUMNS)


def read_live_events(store: Storage, unit: str = "auto", keys: list[str] | None = None) -> pd.DataFrame:
    """Every stored window (or those of `keys`), in the ingestion's raw schema (the serving columns
    dropped), timestamps written in `unit`, the source log's (the API writes ISO 8601; a log declared in
    unix seconds, say, is cleaned with that unit, so live rows are converted to it)."""
    rows = read_windows(store, stored_windows(store) if keys is None else keys)[list(readers.RAW_COLUMNS)]
    if unit in ("s", "ms", "us") and len(rows):
        ts = parse_timestamps(rows["timestamp"].astype("string"))
        micros = (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
        value = micros.astype("float64") / {"s": 1e6, "ms": 1e3, "us": 1.0}[unit]
        rows = rows.assign(timestamp=value.map(lambda v: repr(v) if pd.notna(v) else None).astype("string"))
    return rows
