"""Online attribution (served lists, CTR, conversion) for the library's drift report and the replay.

The rules are part of the contract, `recsys_assets.contract.attribution`, because the console applies
them to the API's event log too; this module re-exports them under their library name.
"""

from __future__ import annotations

from recsys_assets.contract.attribution import (
    CLICK,
    CONVERTING_RATING,
    EVENT_LOG_COLUMNS,
    LIST_COLUMNS,
    PURCHASE,
    RATING,
    UNKNOWN,
    compare_periods,
    kpis_by,
    kpis_over_time,
    prepare_events,
    served_lists,
    totals,
)

__all__ = [
    "CLICK",
    "CONVERTING_RATING",
    "EVENT_LOG_COLUMNS",
    "LIST_COLUMNS",
    "PURCHASE",
    "RATING",
    "UNKNOWN",
    "compare_periods",
    "kpis_by",
    "kpis_over_time",
    "prepare_events",
    "served_lists",
    "totals",
]
