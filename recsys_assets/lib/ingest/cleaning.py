"""Reading sources into the canonical raw event log, and cleaning it into typed interactions.

Pure functions over DataFrames: the Dagster assets in `recsys_assets.defs.ingestion` call them,
and so do the tests. Reading never drops a row silently: a row the CSV parser cannot split is kept
as a malformed raw row so that cleaning counts it under `malformed_row`.
"""

from __future__ import annotations

import glob
import importlib.resources
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recsys_assets.contract.events import (
    CANONICAL_EVENT_TYPES,
    EVENT_COLUMNS,
    IMPRESSION,
    ITEM_COLUMNS,
    REJECT_REASONS,
    REQUIRED_EVENT_COLUMNS,
    USER_COLUMNS,
    parse_timestamps,  # the event log's timestamp rule, shared with the API's readers (re-exported)
)
from recsys_assets.contract.settings import EventLogSource, Settings, TableSource

RAW_EXTRA_COLUMNS = ("category", "source_file", "source_line", "raw_line")
RAW_COLUMNS = EVENT_COLUMNS + RAW_EXTRA_COLUMNS

Progress = Callable[[str], None]


class IngestionError(ValueError):
    """A source that cannot be ingested at all; the message names the file, the column and the problem."""

    def __init__(self, file: str, problem: str, column: str | None = None) -> None:
        where = f"{file}" + (f", column {column!r}" if column else "")
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
    raw = _conform(raw, RAW_COLUMNS)

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
    return raw, _conform(items, ITEM_COLUMNS), _conform(users, USER_COLUMNS)


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


def _read_csv_text(
    path: str, delimiter: str, header: bool, names: list[str] | None
) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Read every column as text; rows the parser cannot split are returned apart, with their line."""
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
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    with fsspec.open(path, "rb") as fh:
        data = fh.read()
    if not data.strip():
        raise IngestionError(path, "the file is empty")
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
    s = col.to_pandas()
    if pd.api.types.is_float_dtype(s):
        # 5.0 -> "5", keeps integral ids and unix seconds readable
        return s.map(lambda v: None if pd.isna(v) else (repr(int(v)) if float(v).is_integer() else repr(v)))
    return s.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)).astype(object)


def read_event_log(source: EventLogSource, progress: Progress | None = None) -> pd.DataFrame:
    """Read every file of the log into the canonical raw schema (all text)."""
    files = expand_paths(source.paths)
    rename = {v: k for k, v in source.columns.items()}
    frames = []
    for i, path in enumerate(tqdm(files, desc="reading event log", unit="file", disable=len(files) < 2), 1):
        if progress:
            progress(f"reading {path} ({i}/{len(files)})")
        fmt = _detect_format(path, source.format)
        bad: list[tuple[int, str]] = []
        if fmt == "parquet":
            table = _read_parquet(path)
        else:
            table, bad = _read_csv_text(path, source.delimiter, source.header, source.names)
        table = table.rename_columns([rename.get(n, n) for n in table.column_names])
        missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in table.column_names]
        if missing:
            raise IngestionError(
                path,
                f"required column missing (found columns {table.column_names}; "
                "map names with `columns` or give `names` for a file without header)",
                column=missing[0],
            )
        if fmt == "parquet":
            for name, ok in _ALLOWED_PARQUET_TYPES.items():
                if name in table.column_names and not ok(table.schema.field(name).type):
                    raise IngestionError(path, f"wrong type {table.schema.field(name).type}", column=name)
        df = pd.DataFrame({c: _to_text(table[c]) for c in table.column_names if c in EVENT_COLUMNS})
        if source.category_column:
            cat = rename.get(source.category_column, source.category_column)
            if cat not in table.column_names:
                raise IngestionError(path, "category column missing", column=source.category_column)
            df["category"] = _to_text(table[cat])
        _check_column_types(df, path, source)
        df["source_file"] = path
        # data line numbers (1-based, counting the header) for rows we kept
        df["source_line"] = _line_numbers(len(df), bad, header=source.header)
        if bad:
            malformed = pd.DataFrame(
                {"source_file": path, "source_line": [n for n, _ in bad], "raw_line": [t for _, t in bad]}
            )
            df = pd.concat([df, malformed], ignore_index=True)
        frames.append(_conform(df, RAW_COLUMNS))
    raw = pd.concat(frames, ignore_index=True)
    if source.event_types:
        mapped = raw["event_type"].map(source.event_types)
        raw["event_type"] = mapped.where(mapped.notna(), raw["event_type"])
    return raw


def _line_numbers(n_rows: int, bad: list[tuple[int, str]], header: bool) -> np.ndarray:
    """1-based line numbers of the kept rows, skipping the lines the parser rejected."""
    first = 2 if header else 1
    skipped = sorted(n for n, _ in bad if n >= 0)
    lines = np.arange(first, first + n_rows + len(skipped), dtype=np.int64)
    if skipped:
        # pyarrow numbers rows from 1 including the header; lines of rejected rows are not data rows
        lines = lines[~np.isin(lines, skipped)][:n_rows]
    return lines[:n_rows]


def _check_column_types(df: pd.DataFrame, path: str, source: EventLogSource) -> None:
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


def read_table_source(source: TableSource, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read an item catalog or user table into its canonical columns."""
    frames = []
    for path in expand_paths([source.path]):
        if _detect_format(path, source.format) == "parquet":
            table = _read_parquet(path)
        else:
            table, _ = _read_csv_text(path, source.delimiter, source.header, source.names)
        rename = {v: k for k, v in source.columns.items()}
        df = table.to_pandas().rename(columns=rename)
        if columns[0] not in df:
            raise IngestionError(path, f"required column missing (found {list(df.columns)})", column=columns[0])
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df[columns[0]] = df[columns[0]].astype(str)
    if "categories" in df:
        df["categories"] = df["categories"].fillna("").astype(str).str.replace(source.list_separator, "|")
    return _conform(df, columns)


def empty(columns: Iterable[str]) -> pd.DataFrame:
    """An empty table with the given columns."""
    return _conform(pd.DataFrame(), columns)


def _conform(df: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Select and order `columns`, adding missing ones as nulls."""
    out = df.copy()
    for c in columns:
        if c not in out:
            out[c] = None
    return out[list(columns)]


# ---------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------


@dataclass
class CleanResult:
    interactions: pd.DataFrame
    rejected: pd.DataFrame
    reject_counts: dict[str, int]
    n_raw: int
    n_duplicates: int
    kcore_dropped: int = 0
    notes: dict[str, object] = field(default_factory=dict)


def clean_events(raw: pd.DataFrame, settings: Settings, unit: str = "auto") -> CleanResult:
    """Type, validate and de-duplicate raw events; every rejected row gets exactly one reason.

    Impression rows (served lists logged by the API) are set aside, counted in `notes`, and are
    neither interactions nor rejects.
    """
    n_raw = len(raw)
    is_impression = (raw["event_type"].astype("string").str.strip() == IMPRESSION).fillna(False).to_numpy(bool)
    df = raw[~is_impression].reset_index(drop=True)

    def blank(col: str) -> pd.Series:
        s = df[col]
        return s.isna() | (s.astype("string").str.strip() == "")

    event_type = df["event_type"].astype("string").str.strip()
    ts = parse_timestamps(df["timestamp"], unit)
    value = pd.to_numeric(df["value"], errors="coerce")
    has_value = ~blank("value")
    lower, upper = pd.Timestamp(settings.time_min), pd.Timestamp(settings.time_upper)
    is_rating = event_type == "rating"
    rating_ok = value.between(settings.rating_min, settings.rating_max)
    other_value_ok = ~has_value | (value.notna() & np.isfinite(value) & (value >= 0))

    checks: dict[str, pd.Series] = {
        "malformed_row": df["raw_line"].notna(),
        "missing_user_id": blank("user_id"),
        "missing_item_id": blank("item_id"),
        "missing_event_type": blank("event_type"),
        "unknown_event_type": ~event_type.isin(CANONICAL_EVENT_TYPES).fillna(False),
        "missing_timestamp": blank("timestamp"),
        "unparseable_timestamp": ts.isna(),
        "timestamp_out_of_range": (ts < lower) | (ts > upper),
        "bad_value": (is_rating & ~rating_ok.fillna(False)) | (~is_rating & ~other_value_ok),
    }
    reason = pd.Series(pd.NA, index=df.index, dtype="string")
    for name in REJECT_REASONS:
        mask = checks[name].fillna(False).astype(bool) & reason.isna()
        reason[mask] = name
    rejected_mask = reason.notna()
    counts = {name: int((reason == name).sum()) for name in REJECT_REASONS}

    rejected = df[rejected_mask].copy()
    rejected.insert(0, "reason", reason[rejected_mask].astype(str))
    rejected = rejected.astype({c: "string" for c in ("user_id", "item_id", "event_type", "timestamp", "value")})

    good = df[~rejected_mask]
    weights = pd.Series(settings.event_weights, dtype="float64")
    inter = pd.DataFrame(
        {
            "user_id": good["user_id"].astype(str).str.strip(),
            "item_id": good["item_id"].astype(str).str.strip(),
            "event_type": event_type[~rejected_mask].astype(str),
            "timestamp": ts[~rejected_mask],
            "value": value[~rejected_mask].astype("float64"),
            "event_id": good["event_id"].astype("string"),
            "recommendation_id": good["recommendation_id"].astype("string"),
            "category": good["category"].astype("string"),
        }
    )
    inter["weight"] = np.where(
        inter["event_type"] == "rating",
        inter["value"],
        inter["event_type"].map(weights).fillna(1.0),
    ).astype("float64")

    # De-duplicate: by event_id where one is given, else by every field of the event.
    with_id = inter["event_id"].notna()
    dup_id = with_id & inter.duplicated(subset=["event_id"], keep="first")
    dup_fields = ~with_id & inter.duplicated(
        subset=["user_id", "item_id", "event_type", "timestamp", "value"], keep="first"
    )
    dup = dup_id | dup_fields
    n_dup = int(dup.sum())
    inter = inter[~dup].sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)

    result = CleanResult(
        interactions=inter,
        rejected=rejected.reset_index(drop=True),
        reject_counts=counts,
        n_raw=n_raw,
        n_duplicates=n_dup,
        notes={"impressions": int(is_impression.sum())},
    )
    if settings.kcore_user or settings.kcore_item:
        before = len(result.interactions)
        result.interactions = kcore_filter(result.interactions, settings.kcore_user, settings.kcore_item)
        result.kcore_dropped = before - len(result.interactions)
    return result


def kcore_filter(inter: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than the given number of events."""
    df = inter
    while True:
        n = len(df)
        if min_item:
            counts = df.groupby("item_id")["item_id"].transform("size")
            df = df[counts >= min_item]
        if min_user:
            counts = df.groupby("user_id")["user_id"].transform("size")
            df = df[counts >= min_user]
        if len(df) == n:
            return df.reset_index(drop=True)


def sample_rejects(rejected: pd.DataFrame, per_reason: int) -> pd.DataFrame:
    """Keep the first `per_reason` rejected rows of each reason."""
    if rejected.empty:
        return rejected
    return rejected.groupby("reason", sort=False, group_keys=False).head(per_reason).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Derived tables
# ---------------------------------------------------------------------------------------------


def build_items(inter: pd.DataFrame, catalog: pd.DataFrame | None) -> pd.DataFrame:
    """Every item of the catalog and of the interactions, with its popularity.

    Items only in the catalog stay (they are the cold-start items); items only in the log get
    their category from the log when it has one.
    """
    stats = inter.groupby("item_id").agg(
        n_interactions=("user_id", "size"),
        n_users=("user_id", "nunique"),
        first_seen=("timestamp", "min"),
        last_seen=("timestamp", "max"),
    )
    from_log = inter.dropna(subset=["category"]).groupby("item_id")["category"].agg(lambda s: "|".join(sorted(set(s))))
    base = catalog.copy() if catalog is not None and not catalog.empty else _conform(pd.DataFrame(), ITEM_COLUMNS)
    base = base.drop_duplicates("item_id", keep="last").set_index("item_id")
    ids = base.index.union(stats.index)
    items = base.reindex(ids)
    if len(from_log):
        cats = items["categories"].astype("string")
        items["categories"] = cats.where(cats.notna() & (cats != ""), from_log.reindex(ids))
    items = items.join(stats)
    items["n_interactions"] = items["n_interactions"].fillna(0).astype("int64")
    items["n_users"] = items["n_users"].fillna(0).astype("int64")
    items.index.name = "item_id"
    items = items.reset_index()
    items["categories"] = items["categories"].astype("string")
    items["title"] = items["title"].astype("string")
    items["text"] = items["text"].astype("string")
    items["year"] = pd.to_numeric(items["year"], errors="coerce").astype("Int32")
    return _sort_ids(items, "item_id")


def build_users(inter: pd.DataFrame, table: pd.DataFrame | None) -> pd.DataFrame:
    """Every user of the user table and of the interactions, with activity statistics."""
    stats = inter.groupby("user_id").agg(
        n_interactions=("item_id", "size"),
        n_items=("item_id", "nunique"),
        first_seen=("timestamp", "min"),
        last_seen=("timestamp", "max"),
    )
    base = table.copy() if table is not None and not table.empty else _conform(pd.DataFrame(), USER_COLUMNS)
    base = base.drop_duplicates("user_id", keep="last").set_index("user_id")
    users = base.reindex(base.index.union(stats.index)).join(stats)
    users["n_interactions"] = users["n_interactions"].fillna(0).astype("int64")
    users["n_items"] = users["n_items"].fillna(0).astype("int64")
    users.index.name = "user_id"
    users = users.reset_index()
    for c in ("gender", "occupation", "zip_code"):
        users[c] = users[c].astype("string")
    users["age"] = pd.to_numeric(users["age"], errors="coerce").astype("Int32")
    return _sort_ids(users, "user_id")


def build_matrix(inter: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The sparse user x item matrix as (user_idx, item_idx, weight) triples with their ids.

    Indices follow the row order of `users` and `items`, so the id maps are those tables' order;
    repeated events on one pair add up their weights.
    """
    uidx = pd.Series(np.arange(len(users), dtype=np.int32), index=users["user_id"].to_numpy())
    iidx = pd.Series(np.arange(len(items), dtype=np.int32), index=items["item_id"].to_numpy())
    pairs = inter.groupby(["user_id", "item_id"], sort=False).agg(
        weight=("weight", "sum"), n_events=("weight", "size"), last_timestamp=("timestamp", "max")
    )
    pairs = pairs.reset_index()
    pairs.insert(0, "item_idx", iidx.reindex(pairs["item_id"]).to_numpy())
    pairs.insert(0, "user_idx", uidx.reindex(pairs["user_id"]).to_numpy())
    return pairs.sort_values(["user_idx", "item_idx"]).reset_index(drop=True)


def to_csr(matrix: pd.DataFrame, n_users: int, n_items: int):
    """The triples table as a scipy CSR matrix."""
    from scipy.sparse import csr_matrix

    return csr_matrix(
        (matrix["weight"].to_numpy(), (matrix["user_idx"].to_numpy(), matrix["item_idx"].to_numpy())),
        shape=(n_users, n_items),
    )


def _sort_ids(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Sort by id: numeric ids numerically, then the rest as text."""
    num = pd.to_numeric(df[col], errors="coerce")
    order = np.lexsort((df[col].astype(str).to_numpy(), num.fillna(0).to_numpy(), num.isna().to_numpy()))
    return df.iloc[order].reset_index(drop=True)
