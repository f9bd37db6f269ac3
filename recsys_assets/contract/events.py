"""The event-log contract shared by the pipeline and the API, and the names of every table.

Importing this module imports neither Dagster nor torch: the API writes events in this schema and
the pipeline reads them back.
"""

from __future__ import annotations

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
)

# Table names under the storage root (each `<name>.parquet`).
RAW_EVENTS = "raw_events"
INTERACTIONS = "interactions"
ITEMS = "items"
USERS = "users"
INTERACTION_MATRIX = "interaction_matrix"
REJECTED_EVENTS = "rejected_events"
