"""The event-log contract shared by the pipeline and the API, and the names of every table.

Importing this module imports neither Dagster nor torch: the API writes events in this schema and
the pipeline reads them back (timestamps with `parse_timestamps`, as does the console).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Canonical event types, in funnel order. `rating` carries its score in `value`.
CANONICAL_EVENT_TYPES: tuple[str, ...] = (
    "view",
    "click",
    "favorite",
    "add_to_cart",
    "purchase",
    "rating",
)

# A served list, logged by the API in the same log as events (one row per item, `value` = position).
# Impressions are not interactions: cleaning sets them aside for attribution (CTR, conversion).
IMPRESSION = "impression"

# The event log: required columns first, then optional ones.
REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event_type", "timestamp")
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = ("value", "event_id", "recommendation_id")
EVENT_COLUMNS: tuple[str, ...] = REQUIRED_EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS
# What the API adds to each row of its log (empty on feedback rows): the model version and A/B arm that
# served the list, the policy (`contract.exploration.policy_id`) and the probability with which that
# policy showed the item at its position (`value`); see `contract/exploration.py`.
SERVING_COLUMNS: tuple[str, ...] = ("model_version", "arm", "policy", "propensity")

# Columns the interactions carry for a log without real time (`RECSYS_EVENT_LOG` `time` /
# `sequence_column`): the time mode ("sequence" or "none"; absent for real timestamps), and each
# event's position in its user's sequence.
TIME_MODE = "time_mode"
SEQUENCE = "sequence"

# Item catalog and user table columns (all optional but the id).
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title", "categories", "text", "year")
USER_COLUMNS: tuple[str, ...] = ("user_id", "age", "gender", "occupation", "zip_code")

# Why a raw row was rejected; the order is the order in which the checks apply.
REJECT_REASONS: tuple[str, ...] = (
    "malformed_row",
    "missing_user_id",
    "missing_item_id",
    "missing_event_type",
    "unknown_event_type",
    "missing_timestamp",
    "unparseable_timestamp",
    "timestamp_out_of_range",
    "bad_value",
    "bad_sequence",
)

# Table names under the storage root (each `<name>.parquet`).
RAW_EVENTS = "raw_events"
INTERACTIONS = "interactions"
ITEMS = "items"
USERS = "users"
INTERACTION_MATRIX = "interaction_matrix"
REJECTED_EVENTS = "rejected_events"

# Tables the pipeline writes for the console (and the replay), each `<name>.parquet` like those above.
EVALUATION_REPORT = "evaluation_report"
DRIFT_RESULTS = "drift_results"
# one row per recent Dagster run, and per run of the retrain job (`defs/runs.py`, after every run)
PIPELINE_HEALTH = "pipeline_health"
RETRAIN_RUNS = "retrain_runs"
# every version in the MLflow registry with its run's metrics (`defs/runs.py`, on every promotion)
MODEL_REGISTRY = "model_registry"
# every change of the serving champion: when, who or what, from and to which registry version, why
# (`lib/champion.py`: the promotion, `champion promote|rollback`, and the sync that follows the alias)
CHAMPION_CHANGES = "champion_changes"
# every start and verdict of the canary gate with its evidence (`lib/canary.py`, `lib/canary.DECISION_COLUMNS`)
PROMOTION_DECISIONS = "promotion_decisions"
# rows the latest cleaning run rejected, per reason (`reason`, `rows`): full counts, where
# `rejected_events` keeps a sample
REJECT_COUNTS = "reject_counts"
# one row per replay run x A/B arm, and per run x arm x phase of its drift scenario (`tools/replay`)
REPLAY_RUNS = "replay_runs"
REPLAY_PHASES = "replay_phases"
# each retrain candidate's clicks per list estimated off-policy on the champion's logged lists
# (`lib/off_policy.py`, `lib/off_policy.ESTIMATE_COLUMNS`)
ONLINE_ESTIMATES = "online_estimates"

# The EDA report and its key numbers (`lib/reports/eda.eda_summary` as JSON), keys under the storage root.
EDA_REPORT = ("reports", "eda_report.html")
EDA_SUMMARY = ("reports", "eda_summary.json")


def parse_timestamps(text: pd.Series, unit: str = "auto") -> pd.Series:
    """Text -> UTC timestamps (NaT where unparseable). Numbers are unix time in `unit` (`s`, `ms`, `us`, or
    `auto`: by magnitude), other text ISO 8601 (with `auto` or `iso`)."""
    text = text.astype("string").str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    is_num = numeric.notna()
    if is_num.any():
        n = numeric[is_num].astype("float64")
        if unit in ("auto", "s", "ms", "us"):
            num_unit = unit
            if unit == "auto":
                mag = n.abs().median()
                num_unit = "us" if mag > 1e14 else "ms" if mag > 1e11 else "s"
            scale = {"s": 1e6, "ms": 1e3, "us": 1.0}[num_unit]
            micros = (n * scale).round()
            ok = micros.abs() < 9e15  # years ~1685..2255, the range datetime64[us] holds comfortably
            out.loc[micros[ok].index] = pd.to_datetime(micros[ok].astype("int64"), unit="us", utc=True)
    rest = (~is_num & (text.fillna("") != "")).to_numpy(dtype=bool)
    if rest.any() and unit in ("auto", "iso"):
        parsed = pd.to_datetime(text[rest].astype(object), utc=True, errors="coerce", format="ISO8601")
        out.iloc[np.flatnonzero(rest)] = parsed.astype("datetime64[us, UTC]").to_numpy()
    return out
