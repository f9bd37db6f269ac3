"""The daily ingestion's side of `raw_sources` and `clean` (`RECSYS_INGESTION__MODE=daily`): read only the
source files and live windows not ingested yet, merge their cleaned rows into the day partitions, and
hand on `interactions` as the union of the partitions (`recsys_assets.lib.ingest.daily`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys_assets.contract.events import REJECTED_EVENTS
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.lib.ingest import cleaning, daily, readers


def is_daily(settings: Settings) -> bool:
    return settings.ingestion.mode == "daily"


def _refuse(problem: str) -> dg.Failure:
    return dg.Failure(description=problem, allow_retries=False)


def read_new_events(
    context: dg.AssetExecutionContext, settings: Settings, store: Storage
) -> tuple[pd.DataFrame, dict[str, object]]:
    """The raw rows of the files not ingested yet (all of them for a full re-ingest), with metadata; the
    plan is kept in storage for `clean`, which commits it."""
    if settings.source != "event_log" or settings.event_log is None:
        raise _refuse(
            "daily ingestion reads an event log (RECSYS_SOURCE=event_log with RECSYS_EVENT_LOG); "
            "MovieLens-100k is one file: set RECSYS_INGESTION__MODE=full"
        )
    try:
        plan = daily.plan(store, settings.event_log, settings.cleaning(), reingest=settings.ingestion.reingest)
    except daily.DailyIngestionError as exc:
        raise _refuse(str(exc)) from exc
    if plan.full:
        context.log.warning(f"daily ingestion: full re-ingest of {len(plan.files)} files: {plan.reason}")
    else:
        context.log.info(
            f"daily ingestion: {len(plan.new_files)} new of {len(plan.files)} files, "
            f"{len(plan.new_windows)} new live windows"
        )
    raw = readers.read_event_log(settings.event_log, progress=context.log.info, only=set(plan.new_files))
    daily.write_pending(store, plan)
    return raw, {
        "ingestion": "full re-ingest" if plan.full else "daily",
        "reason": plan.reason or "new files only",
        "files_read": len(plan.new_files),
        "files_already_ingested": len(plan.files) - len(plan.new_files),
    }


def _table_metadata(table: pa.Table) -> dict[str, Any]:
    if not table.num_rows:
        return {}
    lo, hi = pc.min_max(table["timestamp"]).values()
    types = pc.value_counts(table["event_type"]).to_pylist()
    return {
        "n_users": pc.count_distinct(table["user_id"]).as_py(),
        "n_items": pc.count_distinct(table["item_id"]).as_py(),
        "event_types": dg.MetadataValue.json({t["values"]: t["counts"] for t in types}),
        "time_min": str(lo.as_py()),
        "time_max": str(hi.as_py()),
    }


def clean_new_events(
    context: dg.AssetExecutionContext, settings: Settings, store: Storage, raw_events: pd.DataFrame, unit: str
) -> Iterator[dg.Output]:
    """Clean the new rows (and new live windows), merge them into their days, and yield `interactions`
    (the union of the days, k-core filtered) and the stored rejects' sample."""
    plan = daily.read_pending(store)
    files = set(raw_events["source_file"].dropna().unique())
    if plan is None or not files <= set(plan.new_files):
        raise _refuse(
            "daily ingestion: `raw_events` was not read by a daily `raw_sources` run (or storage lost its plan): "
            "materialize `raw_sources` and `clean` together"
        )
    try:
        result, seen_unit = daily.clean_batch(store, plan, raw_events, settings.cleaning(), unit)
    except daily.DailyIngestionError as exc:
        raise _refuse(str(exc)) from exc
    if len(result.interactions) == 0 and result.n_raw and (plan.full or not daily.stored_days(store)):
        raise _refuse(f"no interaction left: {cleaning.reject_summary(result)}")
    stored = daily.store_batch(store, plan, result, seen_unit, settings.reject_sample_size)
    daily.clear_pending(store)
    table = daily.read_interactions(store, settings.kcore_user, settings.kcore_item)
    if table.num_rows == 0:
        raise _refuse("the k-core filter removed every interaction: lower RECSYS_KCORE_USER / RECSYS_KCORE_ITEM")
    totals = daily.load_manifest(store)["totals"]  # type: ignore[index]
    n_rejected = sum(result.reject_counts.values())
    context.log.info(
        f"{result.n_raw} new raw rows -> {stored.rows} interactions in {len(stored.days)} days "
        f"({n_rejected} rejected, {result.n_duplicates + stored.duplicates + stored.cross_day_duplicates} "
        f"duplicates); {table.num_rows} interactions stored"
    )
    runs.write_reject_counts(store, totals["reject_counts"])
    sample = daily.rejected_sample(store)
    sample = sample if len(sample.columns) else result.rejected
    yield dg.Output(
        table,
        output_name="interactions",
        metadata={
            "ingestion": "full re-ingest" if plan.full else "daily",
            "reason": plan.reason or "new files only",
            "new_raw_rows": result.n_raw,
            "live_windows_read": len(plan.new_windows),
            "days_written": dg.MetadataValue.json(stored.days),
            "days_removed": dg.MetadataValue.json(stored.removed_days),
            "partitions": dg.MetadataValue.path(daily.partition_uri(store)),
            "raw_rows": totals["n_raw"],
            "rows": table.num_rows,
            "rejected_rows": sum(totals["reject_counts"].values()),
            "duplicates_dropped": totals["n_duplicates"],
            "rejected_by_reason": dg.MetadataValue.json(totals["reject_counts"]),
            "time_mode": "timestamp",
            **_table_metadata(table),
        },
    )
    yield dg.Output(sample, output_name=REJECTED_EVENTS, metadata={"rejected_rows": len(sample)})
