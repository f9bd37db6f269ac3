"""Everything the report reads: the stored tables (through the DuckDB warehouse), the API's event log, the
champion pointer, the training times MLflow recorded, the API's `/metrics` and the roadmap file.

Read-only: nothing here writes to storage, MLflow or the API. A source that does not exist yet is None
(or an empty frame), and the report says "no data yet" for it.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from recsys_assets.contract import attribution, events
from recsys_assets.contract.artifact import read_pointer
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.contract.warehouse import connect

log = logging.getLogger(__name__)

# the tables the report reads besides the ingestion tables
REPORT_TABLES: tuple[str, ...] = (
    events.EVALUATION_REPORT,
    events.MODEL_REGISTRY,
    events.PIPELINE_HEALTH,
    events.RETRAIN_RUNS,
    events.DRIFT_RESULTS,
    events.REJECT_COUNTS,
    events.REPLAY_RUNS,
)
DEFAULT_ROADMAP = Path(__file__).resolve().parents[3] / "docs" / "roadmap.md"
HTTP_TIMEOUT = 3.0


@dataclass
class DataSize:
    """How big the data is: rows of the ingestion tables and bytes on storage."""

    interactions: int | None = None
    users: int | None = None
    items: int | None = None
    table_bytes: int = 0
    event_log_bytes: int = 0
    event_log_segments: int = 0


@dataclass
class ReportInputs:
    storage_uri: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    lists: pd.DataFrame = field(default_factory=pd.DataFrame)
    champion: dict | None = None
    size: DataSize = field(default_factory=DataSize)
    artifact_bytes: dict[str, int] = field(default_factory=dict)
    train_times: pd.DataFrame | None = None
    metrics_text: str | None = None
    api_url: str | None = None
    roadmap: list[str] = field(default_factory=list)

    def table(self, name: str) -> pd.DataFrame | None:
        frame = self.tables.get(name)
        return frame if frame is not None and not frame.empty else None


def _events_root(settings: Settings, store: Storage) -> tuple[object, str]:
    if settings.events_dir:
        import fsspec

        return fsspec.filesystem("file"), str(Path(settings.events_dir).resolve())
    return store.fs, store.path("events")


def read_event_log(settings: Settings, store: Storage) -> tuple[pd.DataFrame, int, int]:
    """The served lists of the API's event log (`attribution.served_lists`), its size in bytes and segments."""
    fs, root = _events_root(settings, store)
    if not fs.exists(root):  # type: ignore[attr-defined]
        return attribution.served_lists(attribution.prepare_events(pd.DataFrame())), 0, 0
    paths = sorted(
        p
        for p in fs.find(root)  # type: ignore[attr-defined]
        if p.endswith(".csv") and not Path(p).name.startswith(".")
    )
    frames, size = [], 0
    for path in paths:
        size += int(fs.size(path))  # type: ignore[attr-defined]
        with fs.open(path, "rb") as fh:  # type: ignore[attr-defined]
            try:
                # the open segment may end in a torn line: it was never acknowledged
                frames.append(pd.read_csv(fh, dtype=str, keep_default_na=False, on_bad_lines="skip"))
            except pd.errors.EmptyDataError:
                continue
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return attribution.served_lists(attribution.prepare_events(raw)), size, len(paths)


def _folder_bytes(store: Storage, *parts: str) -> int:
    return sum(int(store.fs.size(store.path(p))) for p in store.list(*parts))


def artifact_sizes(store: Storage, champion: dict | None) -> dict[str, int]:
    """Bytes of the serving champion's artifact and of each candidate's (`candidates/<model>`)."""
    sizes: dict[str, int] = {}
    if champion is not None and champion.get("path") and store.exists(*champion["path"]):
        sizes[f"champion ({champion.get('model_version', '')})"] = _folder_bytes(store, *champion["path"])
    names = sorted({p.split("/")[1] for p in store.list("candidates") if p.count("/") >= 2})
    for name in names:
        sizes[f"candidate {name}"] = _folder_bytes(store, "candidates", name)
    return sizes


def training_times(settings: Settings) -> pd.DataFrame | None:
    """The latest training time per model and protocol that MLflow recorded (metric `train_duration_s` of
    the candidates' runs), or None without an MLflow store or runs."""
    store = settings.mlflow_store()
    if store.tracking_uri.startswith("sqlite:///") and not Path(store.tracking_uri.removeprefix("sqlite:///")).exists():
        return None
    try:
        from recsys_assets.lib.tracking import TAG_MODEL, MlflowTracking

        tracking = MlflowTracking.for_store(store)
        client = tracking.client()
        exp = client.get_experiment_by_name(tracking.experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], "metrics.train_duration_s >= 0", max_results=5000)
    except Exception as exc:  # a report without training times beats no report
        log.warning("training times not read from MLflow (%s): %s", store.tracking_uri, exc)
        return None
    rows = [
        {
            "model": r.data.tags.get(TAG_MODEL, r.info.run_name),
            "protocol": r.data.tags.get("protocol", ""),
            "train_seconds": float(r.data.metrics["train_duration_s"]),
            "started": pd.Timestamp(r.info.start_time, unit="ms", tz="UTC"),
        }
        for r in runs
    ]
    if not rows:
        return None
    frame = pd.DataFrame(rows).sort_values("started")
    return frame.groupby(["model", "protocol"], as_index=False).last().sort_values("train_seconds", ascending=False)


def fetch_metrics(api_url: str | None) -> str | None:
    """The API's `/metrics` text, or None when no URL is given or it does not answer."""
    if not api_url:
        return None
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/metrics", timeout=HTTP_TIMEOUT) as resp:
            return resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        log.warning("the API's /metrics at %s did not answer (%s): latency and availability not measured", api_url, exc)
        return None


def read_roadmap(path: Path | None) -> list[str]:
    """The open items of the roadmap file: its top-level list entries (`- ...`), continuation lines joined."""
    if path is None or not path.is_file():
        return []
    items: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(("- ", "* ")):
            items.append(line[2:].strip())
        elif items and line.startswith("  ") and line.strip():
            items[-1] += " " + line.strip()
    return items


def load_inputs(settings: Settings, api_url: str | None = None, roadmap: Path | None = DEFAULT_ROADMAP) -> ReportInputs:
    """Read every source of the report (see the module docstring)."""
    store = Storage.from_settings(settings)
    con = connect(store, (events.INTERACTIONS, events.USERS, events.ITEMS, *REPORT_TABLES))
    con.execute("SET TimeZone = 'UTC'")
    views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    tables = {name: con.execute(f'SELECT * FROM "{name}"').df() for name in REPORT_TABLES if name in views}
    size = DataSize()
    for name in (events.INTERACTIONS, events.USERS, events.ITEMS):
        if name in views:
            setattr(size, name, int(con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]))
    size.table_bytes = sum(int(store.fs.size(store.path(p))) for p in store.list() if p.endswith(".parquet"))
    con.close()
    lists, size.event_log_bytes, size.event_log_segments = read_event_log(settings, store)
    champion = read_pointer(store)
    return ReportInputs(
        storage_uri=store.uri(),
        tables=tables,
        lists=lists,
        champion=champion,
        size=size,
        artifact_bytes=artifact_sizes(store, champion),
        train_times=training_times(settings),
        metrics_text=fetch_metrics(api_url),
        api_url=api_url,
        roadmap=read_roadmap(roadmap),
    )
