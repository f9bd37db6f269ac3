"""The live side of the graph: the API's events as time-window partitions, and a drift report per window.

`live_events` holds one window of the API's event log (feedback events and served lists) as stored
rows; `clean` folds every stored window into `interactions`, so the next training run learns from
live feedback. `drift_report` compares each window with the window(s) before it (Evidently), stores an
offline HTML report and a machine-readable result next to the data, and says whether to retrain; the
drift sensor turns that verdict into a retrain run.
"""

import dagster as dg
import pandas as pd

from recsys_assets.contract import shared_scripts
from recsys_assets.contract.artifact import read_from_storage, read_pointer
from recsys_assets.contract.settings import Settings
from recsys_assets.defs.ingestion import INGESTION
from recsys_assets.defs.resources import STORAGE_RETRY, StorageResource
from recsys_assets.lib import live_windows as live

MONITORING = "monitoring"
LIVE_EVENTS = live.LIVE_EVENTS
DRIFT_REPORT = "drift_report"
DRIFT_RESULTS = "drift_results"
DRIFT_CHECK = "no_drift"

# Windows are added as the API's log fills them, so the UI lists only windows that have data.
LIVE_WINDOWS = dg.DynamicPartitionsDefinition(name="live_windows")


@dg.asset(
    group_name=INGESTION,
    partitions_def=LIVE_WINDOWS,
    retry_policy=STORAGE_RETRY,
    kinds={"parquet"},
)
def live_events(
    context: dg.AssetExecutionContext, settings: dg.ResourceParam[Settings], storage: StorageResource
) -> dg.MaterializeResult:
    """The API's event log for one time window: feedback events and served lists (impressions),
    as logged, with the model version and A/B arm that served each list. Partitions are the
    windows (`drift_window_minutes` long, named by their UTC start); the live-events sensor adds
    one when its window is over and requests its materialization. `interactions` include every
    stored window."""
    key = context.partition_key
    start, end = live.window_bounds(key, settings.drift_window_minutes)
    rows = live.read_window(settings.events_path(), key, settings.drift_window_minutes)
    store = storage.get()
    store.write_table(rows, LIVE_EVENTS, f"{live.file_key(key)}.parquet")
    is_impression = rows["event_type"] == "impression"
    context.log.info(f"window {key}: {len(rows)} rows ({int(is_impression.sum())} impressions)")
    return dg.MaterializeResult(
        metadata={
            "window_start": str(start),
            "window_end": str(end),
            "rows": len(rows),
            "impressions": int(is_impression.sum()),
            "events": int((~is_impression).sum()),
            "served_lists": int(rows.loc[is_impression, "recommendation_id"].nunique()),
            "users": int(rows["user_id"].nunique()),
            "items": int(rows["item_id"].nunique()),
            "event_types": dg.MetadataValue.json(
                {str(k): int(v) for k, v in rows["event_type"].value_counts().items()}
            ),
            "segments": dg.MetadataValue.json(sorted({str(f).rsplit("/", 1)[-1] for f in rows["source_file"]})),
            "path": dg.MetadataValue.path(store.uri(LIVE_EVENTS, f"{live.file_key(key)}.parquet")),
        }
    )


@dg.asset(
    group_name=MONITORING,
    partitions_def=LIVE_WINDOWS,
    deps=[live_events],
    retry_policy=STORAGE_RETRY,
    kinds={"evidently", "html"},
    check_specs=[
        dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset=DRIFT_REPORT,
            description="Passes when the window shows no drift against its reference and no performance floor "
            "is breached; the metadata holds every metric's score.",
        )
    ],
)
def drift_report(
    context: dg.AssetExecutionContext, settings: dg.ResourceParam[Settings], storage: StorageResource
) -> dg.MaterializeResult:
    """Evidently drift report of one window against the window(s) before it, relative to the serving
    champion: data drift (event-type mix, ratings, how much history the active users have, item
    popularity, share of new users and new items), prediction drift (served items and their
    popularity), and performance (online CTR and conversion of the served lists, the champion's
    NDCG@10 on the window). Stored as an offline HTML report (`drift/<window>/report.html`, loading
    Evidently's renderer from `drift/lib/`) and as rows of `drift_results`; the metadata's `retrain` is
    what the drift sensor acts on."""
    from recsys_assets.lib import drift

    key = context.partition_key
    start, end = live.window_bounds(key, settings.drift_window_minutes)
    store = storage.get()
    windows = live.stored_windows(store)
    ref_keys = live.window_keys_before(windows, key, settings.drift_reference_windows)
    current = live.read_windows(store, [key])
    reference = live.read_windows(store, ref_keys)
    pointer = read_pointer(store)
    if pointer is None:
        raise dg.Failure("no champion is serving yet: run the pipeline first", allow_retries=False)
    champion = read_from_storage(store, *pointer["path"])
    result = drift.detect_drift(reference, current, champion, settings.drift())

    folder = ("drift", live.file_key(key))
    # Evidently's renderer is stored once under drift/lib/, not in every window's report (3.5 of its 3.8 MB);
    # it is written before the first report that refers to it
    scripts = drift.renderer_scripts()
    page, used = shared_scripts.detach(result.html, scripts)
    for name in used:
        if not store.exists("drift", shared_scripts.LIB, name):
            store.write_text(scripts[name], "drift", shared_scripts.LIB, name)
    store.write_text(page, *folder, "report.html")
    report_uri = store.uri(*folder, "report.html")
    table = result.table.assign(
        window=key,
        window_start=start,
        window_end=end,
        reference_windows=",".join(ref_keys),
        window_drifted=bool(result.drifted),
        champion_version=pointer["model_version"],
        report_path=report_uri,
    )
    store.write_table(table, *folder, "results.parquet")
    # the consolidated table: this window's rows replace any earlier ones (a window run again)
    if store.exists(f"{DRIFT_RESULTS}.parquet"):
        earlier = store.read_table(f"{DRIFT_RESULTS}.parquet")
        table = pd.concat([earlier[earlier["window"] != key], table], ignore_index=True)
    store.write_table(table.sort_values("window", kind="stable"), f"{DRIFT_RESULTS}.parquet")

    scores = {str(r.metric): float(r.score) for r in result.table.itertuples() if pd.notna(r.score)}
    drifted_metrics = sorted(str(m) for m in result.table.loc[result.table["drifted"].astype(bool), "metric"])
    context.log.info(f"window {key} vs {ref_keys or 'nothing'}: drifted={result.drifted} {result.reasons}")
    metadata = {
        "window_start": str(start),
        "window_end": str(end),
        "reference_windows": dg.MetadataValue.json(ref_keys),
        "drifted": bool(result.drifted),
        "retrain": bool(result.drifted),
        "data_drift_share": float(result.data_drift_share),
        "drifted_metrics": dg.MetadataValue.json(drifted_metrics),
        "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in result.reasons) or "(none)"),
        "n_reference": int(result.n_reference),
        "n_current": int(result.n_current),
        "champion": pointer["model_version"],
        "report": dg.MetadataValue.path(report_uri),
    }
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=not result.drifted,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "drifted_metrics": dg.MetadataValue.json(drifted_metrics),
                    "scores": dg.MetadataValue.json(scores),
                    "data_drift_share": float(result.data_drift_share),
                    "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in result.reasons) or "(none)"),
                },
            )
        ],
    )
