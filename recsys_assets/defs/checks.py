"""Data-quality checks on the ingestion tables; each result carries its numbers as metadata."""

import dagster as dg
import pandas as pd

from recsys_assets.contract.events import CANONICAL_EVENT_TYPES
from recsys_assets.contract.settings import Settings


def build_ingestion_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="interactions", blocking=True, description="At least one interaction survived cleaning.")
    def interactions_not_empty(interactions: pd.DataFrame) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=len(interactions) > 0, metadata={"rows": len(interactions)})

    @dg.asset_check(
        asset="interactions",
        blocking=True,
        description="No duplicate events: unique event_id where present, unique full rows otherwise.",
    )
    def interactions_unique(interactions: pd.DataFrame) -> dg.AssetCheckResult:
        with_id = interactions["event_id"].notna()
        dup_ids = int(interactions.loc[with_id, "event_id"].duplicated().sum())
        dup_rows = int(
            interactions.loc[~with_id]
            .duplicated(subset=["user_id", "item_id", "event_type", "timestamp", "value"])
            .sum()
        )
        return dg.AssetCheckResult(
            passed=dup_ids == 0 and dup_rows == 0,
            metadata={"duplicate_event_ids": dup_ids, "duplicate_rows": dup_rows},
        )

    @dg.asset_check(
        asset="interactions",
        blocking=True,
        description="Every event has a known type, a timestamp inside the configured range and a positive weight.",
    )
    def interactions_valid(interactions: pd.DataFrame) -> dg.AssetCheckResult:
        ts = interactions["timestamp"]
        bad_type = int((~interactions["event_type"].isin(CANONICAL_EVENT_TYPES)).sum())
        bad_time = int(
            (ts.isna() | (ts < pd.Timestamp(settings.time_min)) | (ts > pd.Timestamp(settings.time_upper))).sum()
        )
        bad_weight = int((~(interactions["weight"] > 0)).sum())
        ratings = interactions[interactions["event_type"] == "rating"]["value"]
        bad_rating = int((~ratings.between(settings.rating_min, settings.rating_max)).sum())
        return dg.AssetCheckResult(
            passed=bad_type + bad_time + bad_weight + bad_rating == 0,
            metadata={
                "unknown_event_types": bad_type,
                "timestamps_out_of_range": bad_time,
                "non_positive_weights": bad_weight,
                "ratings_out_of_range": bad_rating,
                "time_min": str(ts.min()),
                "time_max": str(ts.max()),
            },
        )

    @dg.asset_check(
        asset="interaction_matrix",
        blocking=True,
        additional_ins={"interactions": dg.AssetIn(), "items": dg.AssetIn(), "users": dg.AssetIn()},
        description="Every interaction's user and item is known; item and user ids are unique.",
    )
    def referential_integrity(
        interaction_matrix: pd.DataFrame, interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame
    ) -> dg.AssetCheckResult:
        unknown_items = int((~interactions["item_id"].isin(items["item_id"])).sum())
        unknown_users = int((~interactions["user_id"].isin(users["user_id"])).sum())
        dup_items = int(items["item_id"].duplicated().sum())
        dup_users = int(users["user_id"].duplicated().sum())
        unmapped = int(interaction_matrix[["user_idx", "item_idx"]].isna().any(axis=1).sum())
        return dg.AssetCheckResult(
            passed=unknown_items + unknown_users + dup_items + dup_users + unmapped == 0,
            metadata={
                "interactions_with_unknown_item": unknown_items,
                "interactions_with_unknown_user": unknown_users,
                "duplicate_item_ids": dup_items,
                "duplicate_user_ids": dup_users,
                "unmapped_matrix_entries": unmapped,
                "n_users": len(users),
                "n_items": len(items),
            },
        )

    return [interactions_not_empty, interactions_unique, interactions_valid, referential_integrity]
