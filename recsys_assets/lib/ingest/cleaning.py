"""Cleaning the raw event log into typed interactions, and the tables derived from them.

Every rejected row gets exactly one reason; then k-core filtering, the item and user tables, and the
user x item matrix with its id maps. Pure functions over DataFrames: the Dagster assets in
`recsys_assets.defs.ingestion` call them, and so do the live windows' drift reports and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys_assets.contract.events import (
    CANONICAL_EVENT_TYPES,
    IMPRESSION,
    ITEM_COLUMNS,
    REJECT_REASONS,
    SEQUENCE,
    TIME_MODE,
    USER_COLUMNS,
    parse_timestamps,
)
from recsys_assets.contract.settings import CleaningConfig
from recsys_assets.lib.ingest.readers import conform


@dataclass
class CleanResult:
    interactions: pd.DataFrame
    rejected: pd.DataFrame
    reject_counts: dict[str, int]
    n_raw: int
    n_duplicates: int
    kcore_dropped: int = 0
    notes: dict[str, object] = field(default_factory=dict)


def clean_events(
    raw: pd.DataFrame, config: CleaningConfig, unit: str = "auto", time_mode: str = "timestamp"
) -> CleanResult:
    """Type, validate and de-duplicate raw events; every rejected row gets exactly one reason.

    `config` holds the rules: the valid time range and ratings, the weight of each event type, and the
    k-core filter applied last. Impression rows (served lists logged by the API) are set aside,
    counted in `notes`, and are neither interactions nor rejects. A `time_mode` other than
    "timestamp" (a log ordered per user, or with no time) is written in the `time_mode` column, for
    the splits; a raw `sequence` column (positions in each user's sequence) is kept as numbers.
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
    lower, upper = pd.Timestamp(config.time_min), pd.Timestamp(config.time_upper)
    is_rating = event_type == "rating"
    rating_ok = value.between(config.rating_min, config.rating_max)
    other_value_ok = ~has_value | (value.notna() & np.isfinite(value) & (value >= 0))
    # a log with a per-user order (`sequence_column`); live rows have none and come after it
    has_sequence = SEQUENCE in df.columns
    sequence = pd.to_numeric(df[SEQUENCE], errors="coerce") if has_sequence else pd.Series(np.nan, index=df.index)

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
        "bad_sequence": (~blank(SEQUENCE) & sequence.isna()) if has_sequence else pd.Series(False, index=df.index),
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
    weights = pd.Series(config.event_weights, dtype="float64")
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
    if has_sequence:
        inter[SEQUENCE] = sequence[~rejected_mask].astype("float64")
    inter["weight"] = np.where(
        inter["event_type"] == "rating",
        inter["value"],
        inter["event_type"].map(weights).fillna(1.0),
    ).astype("float64")

    dup = duplicates(inter)
    n_dup = int(dup.sum())
    inter = sort_interactions(inter[~dup])

    result = CleanResult(
        interactions=inter,
        rejected=rejected.reset_index(drop=True),
        reject_counts=counts,
        n_raw=n_raw,
        n_duplicates=n_dup,
        notes={"impressions": int(is_impression.sum())},
    )
    if time_mode != "timestamp":
        result.interactions[TIME_MODE] = pd.Categorical([time_mode] * len(result.interactions))
    if config.kcore_user or config.kcore_item:
        before = len(result.interactions)
        result.interactions = kcore_filter(result.interactions, config.kcore_user, config.kcore_item)
        result.kcore_dropped = before - len(result.interactions)
    return result


def duplicates(inter: pd.DataFrame) -> pd.Series:
    """The rows that repeat an earlier one: by `event_id` where one is given, else by every field."""
    with_id = inter["event_id"].notna()
    dup_id = with_id & inter.duplicated(subset=["event_id"], keep="first")
    fields = ["user_id", "item_id", "event_type", "timestamp", "value", *([SEQUENCE] if SEQUENCE in inter else [])]
    return dup_id | (~with_id & inter.duplicated(subset=fields, keep="first"))


def sort_interactions(inter: pd.DataFrame) -> pd.DataFrame:
    """Interactions in their stored order: by time, user (and position), item; ties keep their order."""
    order = ["timestamp", "user_id", *([SEQUENCE] if SEQUENCE in inter else []), "item_id"]
    return inter.sort_values(order, kind="stable").reset_index(drop=True)


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
    base = catalog.copy() if catalog is not None and not catalog.empty else conform(pd.DataFrame(), ITEM_COLUMNS)
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
    base = table.copy() if table is not None and not table.empty else conform(pd.DataFrame(), USER_COLUMNS)
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


# ---------------------------------------------------------------------------------------------
# Degenerate time
# ---------------------------------------------------------------------------------------------

# Above this share of events at one instant, time is degenerate: a warning (all of them: an error).
DEGENERATE_TIME_SHARE = 0.5
# Times before this look like small integers (order numbers, positions) read as seconds since 1970.
EPOCH_START = pd.Timestamp("1971-01-01", tz="UTC")


def time_problem(inter: pd.DataFrame, time_mode: str = "timestamp") -> tuple[str, str] | None:
    """("error" or "warning", what is wrong) when the interactions' times cannot order them, else None.

    Every event at one instant is an error (a time cut has nothing to cut); most of them at one
    instant, or every time within 1970 (numbers that are no Unix times), is a warning. A log declared
    without time (`time_mode` "none") or ordered per user ("sequence") has no time to check."""
    if time_mode != "timestamp":
        return None
    ts = inter["timestamp"].dropna()
    if len(ts) < 2:
        return None
    counts = ts.value_counts()
    top, share = counts.index[0], counts.iloc[0] / len(ts)
    fix = (
        "map the real time column with `columns` and check `timestamp_unit`; the temporal protocol "
        "(a cut in time) needs times that order the events. A log with no time: set "
        '`time: "none"` in RECSYS_EVENT_LOG (the random protocol only); a log ordered per user (order '
        'numbers, positions): set `sequence_column` (e.g. "order_number")'
    )
    if len(counts) == 1:
        return "error", f"all {len(ts)} interactions share one timestamp ({top}): the log has no usable time; {fix}"
    if share > DEGENERATE_TIME_SHARE:
        return "warning", f"{share:.0%} of the {len(ts)} interactions share one timestamp ({top}); {fix}"
    if ts.max() < EPOCH_START:
        return "warning", (
            f"every timestamp is within 1970 ({ts.min()} .. {ts.max()}): these look like small numbers "
            "(order numbers, positions) read as seconds since 1970, and a time cut would compare the "
            f"numbers of different users; {fix}"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Explaining rejects
# ---------------------------------------------------------------------------------------------

# What to change for each reject reason, said with the reason in a failure message.
REJECT_FIXES: dict[str, str] = {
    "malformed_row": "the row does not split into the header's columns: check `delimiter` and quoting",
    "missing_user_id": "map the user column with `columns`",
    "missing_item_id": "map the item column with `columns`",
    "missing_event_type": 'map the type column with `columns`, or set `defaults: {"event_type": "rating"}`',
    "unknown_event_type": "map the file's values to event types with `event_types`, or set `defaults`",
    "missing_timestamp": "map the time column with `columns`",
    "unparseable_timestamp": "set `timestamp_unit` (s, ms, us or iso)",
    "timestamp_out_of_range": "check `timestamp_unit`, or widen RECSYS_TIME_MIN / RECSYS_TIME_MAX",
    "bad_value": "ratings must lie in RECSYS_RATING_MIN..RECSYS_RATING_MAX; other events need a number >= 0 or none",
    "bad_sequence": "`sequence_column` must hold numbers (each event's position in its user's sequence)",
}


def reject_summary(result: CleanResult, top: int = 3) -> str:
    """The `top` reject reasons with their counts, what to change, and one example row each."""
    n_rejected = sum(result.reject_counts.values())
    kept = result.n_raw - int(result.notes.get("impressions", 0))
    lines = [f"{n_rejected} of {kept} rows rejected ({n_rejected / max(1, kept):.0%})"]
    ranked = sorted(((n, r) for r, n in result.reject_counts.items() if n), reverse=True)[:top]
    for n, reason in ranked:
        lines.append(f"  {reason}: {n} rows ({REJECT_FIXES.get(reason, '')})")
        rows = result.rejected[result.rejected["reason"] == reason]
        if len(rows):
            lines.append(f"    e.g. {_example(rows.iloc[0])}")
    return "\n".join(lines)


def _example(row: pd.Series) -> str:
    where = f"{row.get('source_file')} line {row.get('source_line')}" if pd.notna(row.get("source_file")) else "row"
    if pd.notna(row.get("raw_line")):
        return f"{where}: {row['raw_line']!r}"
    fields = ", ".join(
        f"{c}={row[c]!r}" for c in ("user_id", "item_id", "event_type", "timestamp", "value") if pd.notna(row.get(c))
    )
    return f"{where}: {fields}"
