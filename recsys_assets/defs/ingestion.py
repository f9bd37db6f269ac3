"""Ingestion assets: raw events from the configured source, cleaned interactions, items, users,
the interaction matrix, and the EDA report."""

import dagster as dg
import pandas as pd

from recsys_assets.contract.events import EDA_REPORT, ITEM_COLUMNS, REJECTED_EVENTS, USER_COLUMNS
from recsys_assets.contract.settings import Settings
from recsys_assets.defs import day_partitions, runs
from recsys_assets.defs.resources import STORAGE_RETRY, StorageResource
from recsys_assets.lib import live_windows as live
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.ingest import cleaning, readers
from recsys_assets.lib.reports.eda import eda_summary, render_eda_report

INGESTION = "ingestion"


def _md_table(df: pd.DataFrame, limit: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.head(limit).astype(str).to_markdown(index=False) if len(df) else "(none)")


def _timestamp_unit(settings: Settings) -> str:
    """The unit the log's times are cleaned with (sources of different units are read as ISO text)."""
    if not settings.event_log:
        return "auto"
    units = {src.timestamp_unit for src in settings.event_log.files()}
    return units.pop() if len(units) == 1 else "auto"


def time_mode(settings: Settings) -> str:
    """How the configured log orders its events: "timestamp", "sequence" (per user) or "none"."""
    return settings.event_log.time_mode if settings.source == "event_log" and settings.event_log else "timestamp"


# Said once at ingestion for a log without real time.
TIME_MODE_NOTES = {
    "none": S.NO_TIME_NOTE,
    "sequence": "the log is ordered per user (`sequence_column`), not in time: the temporal protocol is a "
    "per-user sequence split (the last 10% of each user's sequence tests)",
}


def _source_description(settings: Settings) -> str:
    if settings.source == "movielens":
        return "MovieLens-100k (recbole wheel)"
    assert settings.event_log is not None
    return f"event log {settings.event_log.all_paths()}"


def _read_source(
    context: dg.AssetExecutionContext, settings: Settings, events: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    if settings.source == "movielens":
        return readers.read_movielens()
    src = settings.event_log
    assert src is not None
    raw = readers.read_event_log(src, progress=context.log.info) if events else readers.empty(readers.RAW_COLUMNS)
    items = readers.read_table_source(src.items, ITEM_COLUMNS) if src.items else readers.empty(ITEM_COLUMNS)
    users = readers.read_table_source(src.users, USER_COLUMNS) if src.users else readers.empty(USER_COLUMNS)
    return raw, items, users


@dg.multi_asset(
    group_name=INGESTION,
    retry_policy=STORAGE_RETRY,
    outs={
        "raw_events": dg.AssetOut(description="Every row of the source log, as text, in the canonical columns."),
        "raw_items": dg.AssetOut(description="The item catalog as given by the source (may be empty)."),
        "raw_users": dg.AssetOut(description="The user table as given by the source (may be empty)."),
    },
)
def raw_sources(context: dg.AssetExecutionContext, settings: dg.ResourceParam[Settings], storage: StorageResource):
    """Reads the configured source (MovieLens-100k by default, or a generic CSV/Parquet event log). With
    daily ingestion (`RECSYS_INGESTION__MODE=daily`), `raw_events` holds only the files not ingested yet."""
    context.log.info(f"reading {_source_description(settings)}")
    try:
        if day_partitions.is_daily(settings):
            raw, daily_meta = day_partitions.read_new_events(context, settings, storage.get())
            _, items, users = _read_source(context, settings, events=False)
        else:
            (raw, items, users), daily_meta = _read_source(context, settings), {}
    except readers.IngestionError as exc:
        # Fail the step with the file, column and problem; nothing is written, so the last good
        # materialization of every table stays in place.
        raise dg.Failure(
            description=str(exc),
            allow_retries=False,
            metadata={"file": exc.file, "column": exc.column or "", "problem": exc.problem},
        ) from exc
    files = sorted(raw["source_file"].dropna().unique())
    yield dg.Output(
        raw,
        output_name="raw_events",
        metadata={
            "source": _source_description(settings),
            "files": dg.MetadataValue.json(files),
            "malformed_rows": int(raw["raw_line"].notna().sum()),
            **daily_meta,
        },
    )
    yield dg.Output(
        items.astype({c: "string" for c in ("item_id", "title", "categories", "text")}), output_name="raw_items"
    )
    yield dg.Output(
        users.astype({c: "string" for c in ("user_id", "gender", "occupation", "zip_code")}),
        output_name="raw_users",
    )


@dg.multi_asset(
    group_name=INGESTION,
    ins={"raw_events": dg.AssetIn()},
    deps=[dg.AssetKey(live.LIVE_EVENTS)],
    retry_policy=STORAGE_RETRY,
    outs={
        "interactions": dg.AssetOut(
            description="Typed, validated, de-duplicated events with their weight, sorted by time."
        ),
        REJECTED_EVENTS: dg.AssetOut(
            description="A sample of the rejected raw rows (up to `reject_sample_size` per reason), with the reason."
        ),
    },
)
def clean(
    context: dg.AssetExecutionContext,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    raw_events: pd.DataFrame,
):
    """Cleans raw events, the source's and every stored `live_events` window's: rejects rows with
    missing ids, bad timestamps, unknown event types or bad values (counted per reason), drops
    duplicates (by `event_id`, else by every field), weighs each event by its type, and applies the
    optional k-core filter. With daily ingestion, only the new rows are cleaned, merged into the day
    partitions under `<storage>/interactions/`, and `interactions` is their union."""
    unit = _timestamp_unit(settings)
    if day_partitions.is_daily(settings):
        yield from day_partitions.clean_new_events(context, settings, storage.get(), raw_events, unit)
        return
    live_rows = live.read_live_events(storage.get(), unit=unit)
    if len(live_rows):
        context.log.info(f"adding {len(live_rows)} rows of {len(live.stored_windows(storage.get()))} live windows")
        raw_events = readers.stack(raw_events, live_rows)
    mode = time_mode(settings)
    result = cleaning.clean_events(raw_events, settings.cleaning(), unit=unit, time_mode=mode)
    inter = result.interactions
    if mode in TIME_MODE_NOTES:
        context.log.warning(f"time: {TIME_MODE_NOTES[mode]}")
    n_rejected = sum(result.reject_counts.values())
    context.log.info(
        f"{result.n_raw} raw rows -> {len(inter)} interactions; "
        f"{n_rejected} rejected {result.reject_counts}; {result.n_duplicates} duplicates"
    )
    sample = cleaning.sample_rejects(result.rejected, settings.reject_sample_size)
    runs.write_reject_counts(storage.get(), result.reject_counts)
    _fail_or_warn(context, settings, result, mode)
    yield dg.Output(
        inter,
        output_name="interactions",
        metadata={
            "raw_rows": result.n_raw,
            "rows": len(inter),
            "live_rows": len(live_rows),
            "rejected_rows": n_rejected,
            "duplicates_dropped": result.n_duplicates,
            "impressions_set_aside": int(result.notes.get("impressions", 0)),
            "kcore_dropped": result.kcore_dropped,
            "rejected_by_reason": dg.MetadataValue.json(result.reject_counts),
            "n_users": int(inter["user_id"].nunique()),
            "n_items": int(inter["item_id"].nunique()),
            "event_types": dg.MetadataValue.json(inter["event_type"].value_counts().to_dict()),
            "time_mode": mode,
            "time_min": str(inter["timestamp"].min()) if mode == "timestamp" else "no time",
            "time_max": str(inter["timestamp"].max()) if mode == "timestamp" else "no time",
        },
    )
    yield dg.Output(
        sample,
        output_name=REJECTED_EVENTS,
        metadata={"preview": _md_table(sample), "rejected_rows": n_rejected},
    )


# Above this share of rejected rows the run goes on with a warning that says why.
WARN_REJECTED_SHARE = 0.5


def _fail_or_warn(
    context: dg.AssetExecutionContext, settings: Settings, result: cleaning.CleanResult, mode: str
) -> None:
    """Fail the step, before anything is written, when no interaction is left, saying why in the message
    itself (the top reject reasons with one example row each); warn when most rows were rejected."""
    n_rejected = sum(result.reject_counts.values())
    n_rows = result.n_raw - int(result.notes.get("impressions", 0))
    if len(result.interactions) == 0 and n_rejected:
        raise dg.Failure(
            description=f"no interaction left: {cleaning.reject_summary(result)}",
            allow_retries=False,
            metadata={"rejected_by_reason": dg.MetadataValue.json(result.reject_counts)},
        )
    if len(result.interactions) == 0 and result.kcore_dropped:
        raise dg.Failure(
            description=f"the k-core filter (RECSYS_KCORE_USER={settings.kcore_user}, RECSYS_KCORE_ITEM="
            f"{settings.kcore_item}) removed all {result.kcore_dropped} interactions: lower it",
            allow_retries=False,
        )
    if n_rows and n_rejected / n_rows > WARN_REJECTED_SHARE:
        context.log.warning(f"most rows were rejected: {cleaning.reject_summary(result)}")
    problem = cleaning.time_problem(result.interactions, mode)
    if problem:
        # said here too, at ingestion: the blocking check `interactions_have_time` decides
        context.log.warning(f"time: {problem[1]}")


@dg.asset(group_name=INGESTION)
def items(interactions: pd.DataFrame, raw_items: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Every known item: the catalog's items (including those with no interaction yet) and every item
    seen in the log, with title, categories, text and popularity statistics."""
    df = cleaning.build_items(interactions, raw_items)
    cold = int((df["n_interactions"] == 0).sum())
    return dg.Output(df, metadata={"n_items": len(df), "items_without_interactions": cold})


@dg.asset(group_name=INGESTION)
def users(interactions: pd.DataFrame, raw_users: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Every known user with demographics (when the source has them) and activity statistics."""
    df = cleaning.build_users(interactions, raw_users)
    return dg.Output(df, metadata={"n_users": len(df)})


@dg.asset(group_name=INGESTION)
def interaction_matrix(interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """The sparse user x item matrix as (user_idx, item_idx, weight) triples. `user_idx` and
    `item_idx` index the rows of `users` and `items` in their stored order (the id maps)."""
    df = cleaning.build_matrix(interactions, users, items)
    density = len(df) / max(1, len(users) * len(items))
    return dg.Output(
        df,
        metadata={
            "shape": dg.MetadataValue.json([len(users), len(items)]),
            "nnz": len(df),
            "density": float(density),
        },
    )


@dg.asset(group_name=INGESTION, kinds={"html"}, retry_policy=STORAGE_RETRY)
def eda_report(
    context: dg.AssetExecutionContext,
    settings: dg.ResourceParam[Settings],
    storage: StorageResource,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
) -> dg.MaterializeResult:
    """A self-contained HTML report (plots embedded, works offline): size and sparsity, the item
    popularity long tail, user activity, events over time, the event-type funnel, ratings and
    the cold-start share."""
    summary = eda_summary(interactions, items, users)
    html = render_eda_report(interactions, items, users, summary, title=_source_description(settings))
    store = storage.get()
    store.write_text(html, *EDA_REPORT)
    runs.write_eda_summary(store, summary)
    uri = store.uri(*EDA_REPORT)
    context.log.info(f"EDA report written to {uri}")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(uri),
            **{k: v for k, v in summary.items() if not isinstance(v, dict)},
        }
    )
