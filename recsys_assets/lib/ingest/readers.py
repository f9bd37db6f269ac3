"""Reading sources into the canonical raw event log (all text), and the side tables beside it.

MovieLens-100k from the recbole wheel, a generic event log of CSV/Parquet files, an item catalog or a
user table. Reading never drops a row silently: a row the CSV parser cannot split is kept as a malformed
raw row (its text in `raw_line`) so that cleaning counts it under `malformed_row`.
"""

from __future__ import annotations

import glob
import importlib.resources
import io
import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recsys_assets.contract.events import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    OPTIONAL_EVENT_COLUMNS,
    REQUIRED_EVENT_COLUMNS,
    SEQUENCE,
    USER_COLUMNS,
    parse_timestamps,
)
from recsys_assets.contract.sources import SNIFFED_DELIMITERS, EventLogSource, LogFiles, TableSource

RAW_EXTRA_COLUMNS = ("category", "source_file", "source_line", "raw_line")
RAW_COLUMNS = EVENT_COLUMNS + RAW_EXTRA_COLUMNS
# A log with a `sequence_column` (a basket log's order numbers) adds `SEQUENCE` to the raw rows and
# the interactions: each event's position in its user's sequence. Live windows never have it.
# The one instant every event of a log without time (`time: "none"`, or a `sequence_column` and no
# time column) is given: inside the default valid range, and the same in every run.
NO_TIME = "2000-01-01T00:00:00+00:00"

Progress = Callable[[str], None]


class IngestionError(ValueError):
    """A source that cannot be ingested at all; the message names the file, the column(s) and the problem."""

    def __init__(self, file: str, problem: str, column: str | None = None) -> None:
        where = f"{file}" + (f", column {column!r}" if column and "," not in column else "")
        where += f", columns {column}" if column and "," in column else ""
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.column = column
        self.problem = problem


# ---------------------------------------------------------------------------------------------
# MovieLens-100k from the recbole wheel
# ---------------------------------------------------------------------------------------------


def movielens_dir() -> Path:
    """The ml-100k atomic files shipped inside the recbole wheel."""
    path = Path(str(importlib.resources.files("recbole") / "dataset_example" / "ml-100k"))
    if not (path / "ml-100k.inter").is_file():
        raise IngestionError(str(path), "ml-100k.inter not found: is recbole installed?")
    return path


def _read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file; headers look like `user_id:token`."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def read_movielens(directory: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """MovieLens-100k as (raw events, item catalog, user table) in the canonical schema."""
    directory = directory or movielens_dir()
    inter_file = directory / "ml-100k.inter"
    inter = _read_atomic(inter_file)
    raw = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "event_type": "rating",
            "timestamp": inter["timestamp"],
            "value": inter["rating"],
        }
    )
    raw["source_file"] = str(inter_file)
    raw["source_line"] = np.arange(2, len(raw) + 2)
    raw = conform(raw, RAW_COLUMNS)

    item = _read_atomic(directory / "ml-100k.item")
    items = pd.DataFrame(
        {
            "item_id": item["item_id"],
            "title": item["movie_title"],
            # genres are space-separated tokens in the atomic file
            "categories": item["class"].fillna("").str.split().map(lambda g: "|".join(g)),
            "year": pd.to_numeric(item["release_year"], errors="coerce").astype("Int32"),
        }
    )
    users = _read_atomic(directory / "ml-100k.user").rename(columns={"zip_code": "zip_code"})
    users["age"] = pd.to_numeric(users["age"], errors="coerce").astype("Int32")
    return raw, conform(items, ITEM_COLUMNS), conform(users, USER_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Generic event log
# ---------------------------------------------------------------------------------------------


def expand_paths(patterns: Iterable[str]) -> list[str]:
    """Expand globs (local or fsspec URLs) into a sorted, de-duplicated list of files."""
    files: list[str] = []
    for pattern in patterns:
        if "://" in pattern:
            _fs, _, matches = fsspec.get_fs_token_paths(pattern)
            proto = pattern.split("://", 1)[0]
            found = [f"{proto}://{m}" for m in matches]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise IngestionError(pattern, "no file matches this path")
        files.extend(found)
    return list(dict.fromkeys(files))


def _detect_format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def sniff_delimiter(data: bytes) -> str:
    """The field separator of a CSV/TSV text: the one of `SNIFFED_DELIMITERS` most frequent in its first
    line (`,` when none is there)."""
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    counts = {d: first.count(d) for d in SNIFFED_DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _check_split(path: str, data: bytes, delimiter: str, header: bool) -> None:
    """A first line without the delimiter but with another separator: the file is split by something else."""
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    others = [d for d in SNIFFED_DELIMITERS if d != delimiter and d in first]
    if delimiter not in first and others:
        shown = {"\t": "a tab (\\t)"}.get(others[0], repr(others[0]))
        line = "the header" if header else "the first line"
        raise IngestionError(
            path,
            f"{line} {first!r} has no {delimiter!r} but {shown}: the file is not separated by {delimiter!r}; "
            f"set `delimiter` to {others[0]!r} (or leave `delimiter` out to have it recognized)",
        )


def read_csv_text(
    path: str, delimiter: str | None, header: bool, names: list[str] | None
) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Read every column as text; rows the parser cannot split are returned apart, with their line.

    `delimiter` None: recognized from the first line (see `sniff_delimiter`)."""
    bad: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append((int(row.number) if row.number is not None else -1, row.text))
        return "skip"

    read_opts = pacsv.ReadOptions(
        column_names=names if not header else None,
        autogenerate_column_names=not header and names is None,
        block_size=1 << 24,
        use_threads=False,  # row numbers of invalid rows are only known single-threaded
    )
    with fsspec.open(path, "rb") as fh:
        data = fh.read()
    if not data.strip():
        raise IngestionError(path, "the file is empty")
    delimiter = delimiter or sniff_delimiter(data)
    _check_split(path, data, delimiter, header)
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    try:
        # First pass learns the column names, second reads them all as strings.
        names_probe = pacsv.read_csv(
            io.BytesIO(data[: 1 << 16].rsplit(b"\n", 1)[0] + b"\n" if b"\n" in data[: 1 << 16] else data),
            read_options=read_opts,
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda r: "skip"),
        ).column_names
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names_probe}, strings_can_be_null=True)
        table = pacsv.read_csv(
            io.BytesIO(data), read_options=read_opts, parse_options=parse_opts, convert_options=convert
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise IngestionError(path, f"cannot be parsed as CSV ({exc})") from exc
    return table, bad


_ALLOWED_PARQUET_TYPES: dict[str, Callable[[pa.DataType], bool]] = {
    "user_id": lambda t: pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t),
    "item_id": lambda t: pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t),
    "event_type": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t),
    "timestamp": lambda t: (
        pa.types.is_timestamp(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
    ),
    "value": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t),
}


def _read_parquet(path: str) -> pa.Table:
    try:
        with fsspec.open(path, "rb") as fh:
            return pq.read_table(fh)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestionError(path, f"cannot be read as Parquet ({exc})") from exc


def _to_text(col: pa.ChunkedArray) -> pd.Series:
    """Arrow column -> text, keeping timestamps as ISO strings in UTC."""
    if pa.types.is_timestamp(col.type):
        s = col.to_pandas()
        s = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        return s.map(lambda v: v.isoformat() if pd.notna(v) else None).astype(object)
    if pa.types.is_dictionary(col.type):
        col = col.cast(pa.string())
    if pa.types.is_integer(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        # Arrow's cast writes integers as str() does, and keeps nulls as None, without a Python call per row
        return col.cast(pa.string()).to_pandas().astype(object)
    s = col.to_pandas()
    if pd.api.types.is_float_dtype(s):
        # 5.0 -> "5", keeps integral ids and unix seconds readable
        return s.map(lambda v: None if pd.isna(v) else (repr(int(v)) if float(v).is_integer() else repr(v)))
    return s.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)).astype(object)


def _missing_columns(path: str, found: list[str], source: LogFiles) -> None:
    """Every required column the file lacks (and no constant stands for), reported at once."""
    # without time (or with a per-user order) a timestamp is only read when the file has one
    required = [c for c in REQUIRED_EVENT_COLUMNS if c != "timestamp" or source.time_mode == "timestamp"]
    missing = [
        (c, source.columns.get(c, c))
        for c in required
        if c not in source.defaults and source.columns.get(c, c) not in found
    ]
    wanted = {c: source.columns.get(c, c) for c in OPTIONAL_EVENT_COLUMNS if c in source.columns}
    if source.time_mode == "sequence" and "timestamp" in source.columns:
        wanted["timestamp"] = source.columns["timestamp"]
    missing += [(c, f) for c, f in wanted.items() if f not in found]
    for key in ("category_column", "sequence_column"):
        if getattr(source, key) and getattr(source, key) not in found:
            missing.append((key, getattr(source, key)))
    if not missing:
        return
    named = ", ".join(repr(c) if c == f else f"{c!r} (looked for {f!r})" for c, f in missing)
    fixes = (
        "Map the file's names with `columns` (canonical name -> name in the file), give a constant with "
        '`defaults` (e.g. {"event_type": "rating"}), or `names` for a file without header'
    )
    if any(c == "timestamp" for c, _ in missing):
        fixes += (
            '; a log without time: `time: "none"` (random protocol only), or `sequence_column` for a '
            "per-user order such as order numbers"
        )
    raise IngestionError(
        path,
        f"{len(missing)} column{'s' if len(missing) > 1 else ''} missing: {named}; found columns {found}. {fixes}",
        column=", ".join(c for c, _ in missing),
    )


def log_files(source: EventLogSource) -> list[tuple[LogFiles, str]]:
    """Every file of the log with the source it belongs to, in reading order."""
    return [(src, path) for src in source.files() for path in expand_paths(src.paths)]


def read_event_log(
    source: EventLogSource, progress: Progress | None = None, only: Collection[str] | None = None
) -> pd.DataFrame:
    """Read every file of every source of the log (or the files in `only`) into the canonical raw schema
    (all text).

    A canonical column comes from the file column `columns` names (its own name by default; one file
    column may feed several), else from its constant in `defaults`, which also fills blank cells. With
    several sources whose `timestamp_unit`s differ, each source's times are written as ISO text."""
    sources = source.files()
    files = [(src, path) for src, path in log_files(source) if only is None or path in only]
    units = {src.timestamp_unit for src in sources}
    if not files:
        return empty((*RAW_COLUMNS, *([SEQUENCE] if source.time_mode == "sequence" else [])))
    frames = []
    for i, (src, path) in enumerate(tqdm(files, desc="reading event log", unit="file", disable=len(files) < 2), 1):
        if progress:
            progress(f"reading {path} ({i}/{len(files)})")
        df = _read_log_file(path, src)
        if len(units) > 1:
            df["timestamp"] = _iso_times(df["timestamp"], src.timestamp_unit)
        frames.append(df)
    raw = pd.concat(frames, ignore_index=True)
    if source.time_mode != "sequence":
        raw = raw.drop(columns=[SEQUENCE])
    return raw


def _read_log_file(path: str, source: LogFiles) -> pd.DataFrame:
    """One file of one source in the canonical raw columns (and `sequence`), its event types mapped."""
    fmt = _detect_format(path, source.format)
    bad: list[tuple[int, str]] = []
    if fmt == "parquet":
        table = _read_parquet(path)
    else:
        table, bad = read_csv_text(path, source.delimiter, source.header, source.names)
    _missing_columns(path, table.column_names, source)
    wanted = {c: source.columns.get(c, c) for c in EVENT_COLUMNS}
    if source.time_mode == "none":
        del wanted["timestamp"]
    present = {c: f for c, f in wanted.items() if f in table.column_names}
    if fmt == "parquet":
        for name, ok in _ALLOWED_PARQUET_TYPES.items():
            if name in present and not ok(table.schema.field(present[name]).type):
                raise IngestionError(path, f"wrong type {table.schema.field(present[name]).type}", column=name)
    df = pd.DataFrame({c: _to_text(table[f]) for c, f in present.items()})
    for column, constant in source.defaults.items():
        df[column] = df[column].fillna(constant) if column in df else constant
    if source.time_mode != "timestamp" and "timestamp" not in df:
        df["timestamp"] = no_time(source.timestamp_unit)
    if source.category_column:
        df["category"] = _to_text(table[source.category_column])
    df[SEQUENCE] = _to_text(table[source.sequence_column]) if source.sequence_column else None
    _check_column_types(df, path, source)
    df["source_file"] = path
    # data line numbers (1-based, counting the header) for rows we kept
    df["source_line"] = line_numbers(len(df), bad, header=source.header)
    if bad:
        malformed = pd.DataFrame(
            {"source_file": path, "source_line": [n for n, _ in bad], "raw_line": [t for _, t in bad]}
        )
        df = pd.concat([df, malformed], ignore_index=True)
    df = conform(df, (*RAW_COLUMNS, SEQUENCE))
    if source.event_types:
        mapped = df["event_type"].map(source.event_types)
        df["event_type"] = mapped.where(mapped.notna(), df["event_type"])
    return df


def no_time(unit: str) -> str:
    """`NO_TIME` as text that parses in `unit` (seconds, ms or us since 1970 for a numeric unit)."""
    seconds = int(pd.Timestamp(NO_TIME).timestamp())
    scale = {"s": 1, "ms": 1_000, "us": 1_000_000}.get(unit)
    return NO_TIME if scale is None else str(seconds * scale)


def _iso_times(text: pd.Series, unit: str) -> pd.Series:
    """Times parsed with this source's unit, as ISO text; text that does not parse is kept as it is."""
    parsed = parse_timestamps(text, unit)
    iso = parsed.map(lambda v: v.isoformat() if pd.notna(v) else None).astype(object)
    return iso.where(parsed.notna(), text)


def line_numbers(n_rows: int, bad: list[tuple[int, str]], header: bool) -> np.ndarray:
    """1-based line numbers of the kept rows, skipping the lines the parser rejected."""
    first = 2 if header else 1
    skipped = sorted(n for n, _ in bad if n >= 0)
    lines = np.arange(first, first + n_rows + len(skipped), dtype=np.int64)
    if skipped:
        # pyarrow numbers rows from 1 including the header; lines of rejected rows are not data rows
        lines = lines[~np.isin(lines, skipped)][:n_rows]
    return lines[:n_rows]


def _check_column_types(df: pd.DataFrame, path: str, source: LogFiles) -> None:
    """A column none of whose values parse is a wrong type for the whole file, not bad rows."""
    ts = df["timestamp"].dropna()
    if len(ts) and parse_timestamps(ts.head(1000), source.timestamp_unit).isna().all():
        raise IngestionError(
            path, f"wrong type: no value parses as a timestamp (e.g. {ts.iloc[0]!r})", column="timestamp"
        )
    if "value" in df:
        val = df["value"].dropna()
        if len(val) and pd.to_numeric(val.head(1000), errors="coerce").isna().all():
            raise IngestionError(path, f"wrong type: no value is numeric (e.g. {val.iloc[0]!r})", column="value")
    seq = df[SEQUENCE].dropna() if SEQUENCE in df else pd.Series(dtype=object)
    if len(seq) and pd.to_numeric(seq.head(1000), errors="coerce").isna().all():
        raise IngestionError(
            path,
            f"wrong type: no value is a number (e.g. {seq.iloc[0]!r}); `sequence_column` names a column of "
            "positions in each user's sequence (order numbers)",
            column=source.sequence_column,
        )


def read_table_source(source: TableSource, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read an item catalog or user table into its canonical columns."""
    frames = []
    for path in expand_paths([source.path]):
        if _detect_format(path, source.format) == "parquet":
            table = _read_parquet(path)
        else:
            table, _ = read_csv_text(path, source.delimiter, source.header, source.names)
        rename = {v: k for k, v in source.columns.items()}
        df = table.to_pandas().rename(columns=rename)
        if columns[0] not in df:
            raise IngestionError(path, f"required column missing (found {list(df.columns)})", column=columns[0])
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df[columns[0]] = df[columns[0]].astype(str)
    if "categories" in df:
        df["categories"] = df["categories"].fillna("").astype(str).str.replace(source.list_separator, "|")
    return conform(df, columns)


# ---------------------------------------------------------------------------------------------
# Shared with cleaning and the live windows
# ---------------------------------------------------------------------------------------------


def empty(columns: Iterable[str]) -> pd.DataFrame:
    """An empty table with the given columns."""
    return conform(pd.DataFrame(), columns)


def conform(df: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Select and order `columns`, adding missing ones as nulls."""
    out = df.copy()
    for c in columns:
        if c not in out:
            out[c] = None
    return out[list(columns)]


def stack(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """The rows of `first` then `second` (the same columns). A column typed differently in the two (a source's
    text held as objects, stored live windows' as strings) is held as objects in both, so that a column with no
    value in one table does not decide the type of the result."""
    differ = {c: object for c in first.columns if c in second.columns and first[c].dtype != second[c].dtype}
    return pd.concat([first.astype(differ), second.astype(differ)], ignore_index=True)
