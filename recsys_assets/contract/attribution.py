"""Online attribution: served lists, their clicks and conversions, from the API's event log.

Pure functions over DataFrames (no I/O). They are the one definition of an impression, a click and a
conversion for everyone who reads the event log: the pipeline's drift report (per finished window),
the replay's report, and the console. The console applies
them to the log itself rather than reading a table of attributed lists from the pipeline: its CTR
then moves with the log as the API writes it (not one finished window later), and with the same
functions on the same rows its numbers equal the drift report's by construction.

A *served list* is the set of impressions (rows with event_type `impression`, `value` = position)
sharing one `recommendation_id`; it belongs to the model version, A/B arm and policy written on its
impressions and to the period of its first impression, and its `propensity` is the probability that its
policy served exactly that list (the product of its impressions' propensities, `contract/exploration.py`).
Feedback (click, add_to_cart, purchase,
rating) is attributed to a list through its `recommendation_id`; feedback without one, or naming a
list never served, is organic and not counted.

- list CTR = lists with at least one click / lists served
- impression CTR = impressions whose item was clicked / impressions
- conversion per list (`conversion`) = lists with a purchase or a rating ≥ 4 / lists served
- conversion per click (`conversion_per_click`, the seed's definition: the share of clicked recommendations
  that lead to a business event) = lists clicked and converted / lists clicked
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from recsys_assets.contract.events import EVENT_COLUMNS, IMPRESSION, SERVING_COLUMNS, parse_timestamps

# Columns of the API's durable event log (the event-log schema plus the serving fields).
EVENT_LOG_COLUMNS: tuple[str, ...] = (*EVENT_COLUMNS, *SERVING_COLUMNS)
CLICK = "click"
PURCHASE = "purchase"
RATING = "rating"
CONVERTING_RATING = 4.0
# Shown for a list whose impressions carry no model version or arm.
UNKNOWN = "(none)"

LIST_COLUMNS: tuple[str, ...] = (
    "recommendation_id",
    "served_at",
    "user_id",
    "model_version",
    "arm",
    "impressions",
    "clicked_impressions",
    "clicked",
    "converted",
    "policy",
    "propensity",
)
# One row per impression (`impressions`): the list, the position (1-based), the item, the policy and the
# probability with which it showed that item there, and whether the item was clicked from that list.
IMPRESSION_COLUMNS: tuple[str, ...] = (
    "recommendation_id",
    "served_at",
    "user_id",
    "model_version",
    "arm",
    "policy",
    "position",
    "item_id",
    "propensity",
    "clicked",
)


def prepare_events(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw event-log rows (any types, possibly text) -> typed rows.

    Timestamps become UTC (unix s/ms/us or ISO 8601, as the ingestion reads them), `value` a float,
    ids and labels stripped strings; rows without a timestamp or event type are dropped, and a row
    written twice (a retried write repeats its `event_id`) is counted once.
    """
    df = raw.copy()
    for col in EVENT_LOG_COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    df = df[list(EVENT_LOG_COLUMNS)]
    for col in ("user_id", "item_id", "event_type", "event_id", "recommendation_id", "model_version", "arm", "policy"):
        text = df[col].astype("string").str.strip()
        df[col] = text.mask(text == "")
    df["event_type"] = df["event_type"].str.lower()
    df["timestamp"] = parse_timestamps(df["timestamp"].astype("string"))
    # float whatever the source's dtype (a log without ratings may hold nullable integers)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    # a log written before propensities were logged served top-k lists: propensity 1
    propensity = pd.to_numeric(df["propensity"], errors="coerce").astype("float64")
    df["propensity"] = propensity.where(~(df["event_type"] == IMPRESSION) | propensity.notna(), 1.0)
    df = df[df["timestamp"].notna() & df["event_type"].notna()]
    with_id = df[df["event_id"].notna()].drop_duplicates("event_id")
    return (
        pd.concat([with_id, df[df["event_id"].isna()]]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    )


def converts(events: pd.DataFrame) -> pd.Series:
    """Whether each typed event (`prepare_events`) converts the list it names: a purchase, or a rating of
    `CONVERTING_RATING` or more."""
    rating = (events["event_type"] == RATING) & (events["value"].fillna(-math.inf) >= CONVERTING_RATING)
    return (events["event_type"] == PURCHASE) | rating


def served_lists(events: pd.DataFrame) -> pd.DataFrame:
    """One row per served list (columns `LIST_COLUMNS`) from typed events (`prepare_events`)."""
    imp = events[(events["event_type"] == IMPRESSION) & events["recommendation_id"].notna()]
    if imp.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in LIST_COLUMNS})
    imp = imp.drop_duplicates(["recommendation_id", "item_id"])
    lists = imp.groupby("recommendation_id", sort=False).agg(
        served_at=("timestamp", "min"),
        user_id=("user_id", "first"),
        model_version=("model_version", "first"),
        arm=("arm", "first"),
        policy=("policy", "first"),
        impressions=("item_id", "size"),
        # the list's own probability: its positions are drawn independently (`contract/exploration.py`)
        propensity=("propensity", "prod"),
    )
    fb = events[(events["event_type"] != IMPRESSION) & events["recommendation_id"].isin(lists.index)]
    clicks = fb[fb["event_type"] == CLICK]
    clicked_lists = set(clicks["recommendation_id"])
    # an impression counts as clicked once, however many clicks its item got
    clicked_pairs = imp.merge(clicks[["recommendation_id", "item_id"]].drop_duplicates(), how="inner")
    converted_lists = set(fb.loc[converts(fb), "recommendation_id"])

    lists["clicked_impressions"] = clicked_pairs.groupby("recommendation_id").size().reindex(lists.index).fillna(0)
    lists["clicked_impressions"] = lists["clicked_impressions"].astype("int64")
    lists["clicked"] = lists.index.isin(list(clicked_lists))
    lists["converted"] = lists.index.isin(list(converted_lists))
    for col in ("model_version", "arm", "policy"):
        lists[col] = lists[col].fillna(UNKNOWN).astype(str)
    lists["impressions"] = lists["impressions"].astype("int64")
    out = lists.reset_index().sort_values("served_at", kind="stable").reset_index(drop=True)
    return out[list(LIST_COLUMNS)]


def impressions(events: pd.DataFrame) -> pd.DataFrame:
    """One row per impression (columns `IMPRESSION_COLUMNS`) from typed events (`prepare_events`), oldest
    list first; `clicked` when the item got a click naming the list."""
    imp = events[(events["event_type"] == IMPRESSION) & events["recommendation_id"].notna()]
    imp = imp.drop_duplicates(["recommendation_id", "item_id"])
    clicks = events[(events["event_type"] == CLICK) & events["recommendation_id"].notna()]
    pairs = set(zip(clicks["recommendation_id"], clicks["item_id"], strict=True))
    out = pd.DataFrame(
        {
            "recommendation_id": imp["recommendation_id"].astype(str),
            "served_at": imp["timestamp"],
            "user_id": imp["user_id"].astype(str),
            "model_version": imp["model_version"].fillna(UNKNOWN).astype(str),
            "arm": imp["arm"].fillna(UNKNOWN).astype(str),
            "policy": imp["policy"].fillna(UNKNOWN).astype(str),
            "position": imp["value"].fillna(0).astype("int64"),
            "item_id": imp["item_id"].astype(str),
            "propensity": imp["propensity"].astype("float64"),
            "clicked": [(r, i) in pairs for r, i in zip(imp["recommendation_id"], imp["item_id"], strict=True)],
        }
    )
    first = out.groupby("recommendation_id", sort=False)["served_at"].transform("min")
    out = out.assign(_first=first).sort_values(["_first", "recommendation_id", "position"], kind="stable")
    return out.drop(columns="_first").reset_index(drop=True)[list(IMPRESSION_COLUMNS)]


def _summarise(lists: pd.DataFrame) -> dict[str, float]:
    n = len(lists)
    impressions = int(lists["impressions"].sum()) if n else 0
    clicked = int(lists["clicked"].sum()) if n else 0
    clicked_converted = int((lists["clicked"] & lists["converted"]).sum()) if n else 0
    return {
        "lists": n,
        "impressions": impressions,
        "clicked_lists": int(lists["clicked"].sum()) if n else 0,
        "clicked_impressions": int(lists["clicked_impressions"].sum()) if n else 0,
        "converted_lists": int(lists["converted"].sum()) if n else 0,
        "clicked_converted_lists": clicked_converted,
        "ctr": float(lists["clicked"].mean()) if n else math.nan,
        "impression_ctr": float(lists["clicked_impressions"].sum() / impressions) if impressions else math.nan,
        "conversion": float(lists["converted"].mean()) if n else math.nan,
        "conversion_per_click": clicked_converted / clicked if clicked else math.nan,
    }


def totals(lists: pd.DataFrame) -> dict[str, float]:
    """Lists, impressions, clicks and conversions, and the four rates, over the given lists."""
    return _summarise(lists)


def kpis_by(lists: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """`totals` per group (e.g. `model_version`, `arm`), one row each."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = [
        {**dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)), **_summarise(group)}
        for key, group in lists.groupby(keys, sort=True)
    ]
    return pd.DataFrame(rows, columns=[*keys, *_summarise(lists.iloc[:0])])


def kpis_over_time(lists: pd.DataFrame, freq: str = "D", by: str | None = "model_version") -> pd.DataFrame:
    """`totals` per period (`period`: start of the period, UTC) and optional group, oldest first."""
    if lists.empty:
        return kpis_by(lists.assign(period=pd.Series(dtype="datetime64[us, UTC]")), ["period", *([by] if by else [])])
    period = pd.to_datetime(lists["served_at"], utc=True).dt.tz_localize(None).dt.to_period(freq).dt.start_time
    frame = lists.assign(period=period.dt.tz_localize("UTC"))
    return kpis_by(frame, ["period", *([by] if by else [])]).sort_values("period", kind="stable").reset_index(drop=True)


def compare_periods(
    lists: pd.DataFrame, window: pd.Timedelta, end: pd.Timestamp | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """`totals` for the last `window` ending at `end` (default: the latest list) and for the window before."""
    if lists.empty:
        return _summarise(lists), _summarise(lists)
    served = pd.to_datetime(lists["served_at"], utc=True)
    end = served.max() if end is None else pd.Timestamp(end)
    current = lists[(served > end - window) & (served <= end)]
    previous = lists[(served > end - 2 * window) & (served <= end - window)]
    return _summarise(current), _summarise(previous)
