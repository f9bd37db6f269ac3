"""Everything the console reads, in one place: stored tables and reports (through `Storage` and the DuckDB
warehouse, so local folders and Azure Blob work alike), the API's event log, and the API itself.

What Dagster and MLflow know (run history, the registry, the cleaning run's reject counts, the EDA
numbers) reaches the console as tables the pipeline writes (`recsys_assets.defs.runs`): it imports
only `recsys_assets.contract`, so its image carries neither.

Every function takes the `Settings` the entry point built and returns None (or an empty frame) when
its source does not exist yet, so pages can show "no data yet" rather than an error. Queries are
cached with `st.cache_data` (short TTLs: the pipeline and the API keep writing), connections with
`st.cache_resource`; the settings are part of every cache key, so two storages never share entries.
Nothing here trains or scores a model.
"""

from __future__ import annotations

import json
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pandas as pd
import streamlit as st

from console import kpis
from recsys_assets.contract import events as schema
from recsys_assets.contract import shared_scripts
from recsys_assets.contract.events import (
    CHAMPION_CHANGES,
    DRIFT_RESULTS,
    EDA_SUMMARY,
    EVALUATION_REPORT,
    MODEL_REGISTRY,
    ONLINE_ESTIMATES,
    PIPELINE_HEALTH,
    PROMOTION_DECISIONS,
    REJECT_COUNTS,
    REPLAY_PHASES,
    REPLAY_RUNS,
    RETRAIN_RUNS,
)
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.contract.warehouse import TABLES

# Tables the console reads besides the ingestion tables (`recsys_assets.contract.events` says who
# writes each); some are written by later pipeline stages.
ALL_TABLES = (
    *TABLES,
    *(EVALUATION_REPORT, DRIFT_RESULTS, RETRAIN_RUNS, PIPELINE_HEALTH, MODEL_REGISTRY, REJECT_COUNTS),
    *(REPLAY_RUNS, REPLAY_PHASES, CHAMPION_CHANGES, ONLINE_ESTIMATES, PROMOTION_DECISIONS),
)
EVENTS_DIR = "events"
EVALUATION_REPORT_HTML = ("reports", "evaluation_report.html")

TABLE_TTL = 60
API_TTL = 15
HTTP_TIMEOUT = 3.0
USER_AGENT = "recsys-console"


# ---------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def storage(settings: Settings) -> Storage:
    """The storage root (a local folder or a Blob container) of these settings."""
    return Storage.from_settings(settings)


# The views are made when the connection opens; the TTL picks up tables written since.
@st.cache_resource(ttl=300, show_spinner=False)
def warehouse(settings: Settings) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per stored table (`recsys_assets.contract.warehouse.connect`)."""
    from recsys_assets.contract.warehouse import connect

    con = connect(storage(settings), ALL_TABLES)
    # timestamps come back in UTC, as stored, whatever the machine's time zone (cursors inherit it)
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    return con


def _cursor(settings: Settings, *needed: str) -> duckdb.DuckDBPyConnection | None:
    """A cursor (one per query: Streamlit serves sessions from several threads) with the `needed`
    views, or None when one of those tables is not stored yet."""
    store = storage(settings)
    if not all(store.exists(f"{name}.parquet") for name in needed):
        return None
    con = warehouse(settings)
    views = {row[0] for row in con.cursor().execute("SELECT view_name FROM duckdb_views()").fetchall()}
    if not set(needed) <= views:
        # written after the connection opened
        warehouse.clear(settings)
        con = warehouse(settings)
    return con.cursor()


def clear_caches() -> None:
    """Forget every cached query and connection (the sidebar's Refresh)."""
    st.cache_data.clear()
    st.cache_resource.clear()


# ---------------------------------------------------------------------------------------------
# Stored tables and reports
# ---------------------------------------------------------------------------------------------


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def table(settings: Settings, name: str) -> pd.DataFrame | None:
    """A whole stored table (`<name>.parquet`), or None before it is first written."""
    cur = _cursor(settings, name)
    if cur is None:
        return None
    return cur.execute(f'SELECT * FROM "{name}"').df()


def evaluation_report(settings: Settings) -> pd.DataFrame | None:
    """The evaluation report's rows of the discovery setting (the repeat setting's are in its HTML report)."""
    report = table(settings, EVALUATION_REPORT)
    if report is not None and "setting" in report:
        report = report[report["setting"].fillna("discovery") == "discovery"]
    return report


@st.cache_data(ttl=300, show_spinner=False)
def report_html(settings: Settings, path: str) -> str | None:
    """A stored HTML report by key under the storage root (or by full path/URI), or None."""
    store = storage(settings)
    key = path
    for prefix in (store.uri(""), store.root + "/", f"{store.protocol}://"):
        key = key.removeprefix(prefix)
    if store.exists(key):

        def read(k: str) -> bytes | None:
            return store.read_bytes(k) if store.exists(k) else None

    elif store.fs.exists(path):
        key = path

        def read(k: str) -> bytes | None:
            if not store.fs.exists(k):
                return None
            with store.fs.open(k, "rb") as fh:
                return bytes(fh.read())

    else:
        return None

    def script(name: str) -> str | None:
        # the page is shown from a string, with no folder to load a shared script from: it goes inline
        data = read(shared_scripts.lib_key(key, name))
        return None if data is None else data.decode("utf-8")

    page = read(key)
    return None if page is None else shared_scripts.inline(page.decode("utf-8", errors="replace"), script)


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def champion(settings: Settings) -> dict | None:
    """`artifacts/CHAMPION.json`: the serving champion (model, version, promoted_at, ...), or None."""
    from recsys_assets.contract.artifact import read_pointer

    return read_pointer(storage(settings))


@st.cache_data(ttl=300, show_spinner=False)
def eda(settings: Settings) -> dict[str, Any] | None:
    """The EDA report's key numbers (`reports/eda_summary.json`, written with the report), or None."""
    store = storage(settings)
    if not store.exists(*EDA_SUMMARY):
        return None
    return json.loads(store.read_bytes(*EDA_SUMMARY))


@st.cache_data(ttl=300, show_spinner=False)
def events_over_time(settings: Settings) -> pd.DataFrame | None:
    """Interactions per period and event type (`period`, `event_type`, `events`), the period a day, a
    week or a month depending on the span of the data; None without interactions."""
    cur = _cursor(settings, schema.INTERACTIONS)
    if cur is None:
        return None
    days = cur.execute("SELECT date_diff('day', min(timestamp), max(timestamp)) FROM interactions").fetchone()[0]
    unit = "day" if (days or 0) <= 120 else "week" if days <= 1000 else "month"
    return cur.execute(
        f"""SELECT date_trunc('{unit}', timestamp) AS period, event_type, count(*) AS events
            FROM interactions GROUP BY ALL ORDER BY period, event_type"""
    ).df()


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def sample_users(settings: Settings, n: int = 200) -> list[str]:
    """The most active users (for the lookup's picker), most active first."""
    cur = _cursor(settings, schema.USERS)
    if cur is None:
        return []
    rows = cur.execute(
        "SELECT CAST(user_id AS VARCHAR) FROM users ORDER BY n_interactions DESC, user_id LIMIT ?", [n]
    ).fetchall()
    return [r[0] for r in rows]


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def user_history(settings: Settings, user_id: str, limit: int = 20) -> pd.DataFrame | None:
    """A user's latest interactions with the items' titles, newest first; None without interactions."""
    cur = _cursor(settings, schema.INTERACTIONS)
    if cur is None:
        return None
    has_items = _cursor(settings, schema.ITEMS) is not None
    title = "it.title, it.categories" if has_items else "NULL AS title, NULL AS categories"
    join = "LEFT JOIN items it ON CAST(it.item_id AS VARCHAR) = CAST(i.item_id AS VARCHAR)" if has_items else ""
    return cur.execute(
        f"""SELECT i.timestamp, i.event_type, i.value, CAST(i.item_id AS VARCHAR) AS item_id, {title}
            FROM interactions i {join}
            WHERE CAST(i.user_id AS VARCHAR) = ?
            ORDER BY i.timestamp DESC LIMIT ?""",
        [str(user_id), limit],
    ).df()


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def item_titles(settings: Settings, item_ids: tuple[str, ...]) -> dict[str, str]:
    """Titles of the given items (for the API's answers, which carry ids)."""
    cur = _cursor(settings, schema.ITEMS)
    if cur is None or not item_ids:
        return {}
    rows = cur.execute(
        "SELECT CAST(item_id AS VARCHAR), title FROM items WHERE CAST(item_id AS VARCHAR) IN "
        "(SELECT UNNEST(?::VARCHAR[]))",
        [list(item_ids)],
    ).fetchall()
    return {r[0]: r[1] for r in rows}


# ---------------------------------------------------------------------------------------------
# The API's event log
# ---------------------------------------------------------------------------------------------


def _events_root(settings: Settings) -> tuple[fsspec.AbstractFileSystem, str]:
    """Where the API writes its segments: `events_dir` (a local folder) when set, else `<storage>/events`."""
    local = getattr(settings, "events_dir", None)
    if local:
        return fsspec.filesystem("file"), str(Path(local).resolve())
    store = storage(settings)
    return store.fs, store.path(EVENTS_DIR)


def event_segments(settings: Settings) -> list[str]:
    """Paths of the event log's CSV segments, oldest name first (temporary and hidden files excluded)."""
    fs, root = _events_root(settings)
    if not fs.exists(root):
        return []
    return sorted(
        p for p in fs.find(root) if p.endswith(".csv") and not posixpath.basename(p).startswith((".tmp-", "."))
    )


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def served_lists(settings: Settings) -> pd.DataFrame | None:
    """One row per served list with its clicks and conversion (`kpis.served_lists`), or None when the
    API has not written a segment yet."""
    segments = event_segments(settings)
    if not segments:
        return None
    fs, _ = _events_root(settings)
    frames = []
    for path in segments:
        with fs.open(path, "rb") as fh:
            try:
                # the open segment may end in a torn line: skip it, it was never acknowledged
                frames.append(pd.read_csv(fh, dtype=str, keep_default_na=False, on_bad_lines="skip"))
            except pd.errors.EmptyDataError:
                continue
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=kpis.EVENT_LOG_COLUMNS)
    return kpis.served_lists(kpis.prepare_events(raw))


# ---------------------------------------------------------------------------------------------
# What the pipeline records of its runs and its registry
# ---------------------------------------------------------------------------------------------


def registry_history(settings: Settings) -> pd.DataFrame | None:
    """Every registered model version, oldest first (the `model_registry` table: version, aliases,
    model, serving version, the run's metrics, `registered_as`), or None when nothing is registered."""
    history = table(settings, MODEL_REGISTRY)
    if history is None or history.empty:
        return None
    return history.sort_values("version").reset_index(drop=True)


def previous_champion(history: pd.DataFrame | None) -> tuple[dict[str, float], str] | None:
    """Offline metrics (metric -> value, NDCG/MAP@10 temporal) and label of the champion before the
    current one, from the registry history; None when there was none."""
    if history is None or "registered_as" not in history:
        return None
    champs = history[history["registered_as"] == "champion"].sort_values("version")
    if len(champs) < 2:
        return None
    prev = champs.iloc[-2]
    values = {
        m: float(prev[col])
        for m in kpis.OFFLINE_METRICS
        if (col := f"{m}_at_10.temporal.all") in prev.index and pd.notna(prev[col])
    }
    return values, f"previous champion v{int(prev['version'])} ({prev['model']})"


def champion_changes(settings: Settings) -> pd.DataFrame | None:
    """Every change of the serving champion, newest first (the `champion_changes` table: when, who
    or what, from and to which registry version, why), or None before the first."""
    changes = table(settings, CHAMPION_CHANGES)
    if changes is None or changes.empty:
        return None
    return changes.sort_values("at", ascending=False).reset_index(drop=True)


def promotion_decisions(settings: Settings) -> pd.DataFrame | None:
    """Every start and verdict of the canary gate with its evidence, newest first (`promotion_decisions`)."""
    decisions = table(settings, PROMOTION_DECISIONS)
    if decisions is None or decisions.empty:
        return None
    return decisions.sort_values("at", ascending=False).reset_index(drop=True)


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def canary_state(settings: Settings) -> dict[str, Any] | None:
    """The open canary or holdout and its last look (`artifacts/CANARY.json`), or None when none is open."""
    from recsys_assets.contract.canary import CANARY_STATE

    store = storage(settings)
    if not store.exists(*CANARY_STATE):
        return None
    doc = json.loads(store.read_bytes(*CANARY_STATE))
    return doc if doc.get("phase") in ("canary", "holdout") else None


def latest_reject_counts(settings: Settings) -> dict[str, int] | None:
    """Rejected rows per reason of the latest cleaning run (the `reject_counts` table: full counts,
    where `rejected_events` keeps only a sample), or None."""
    counts = table(settings, REJECT_COUNTS)
    if counts is None:
        return None
    return {str(r): int(n) for r, n in zip(counts["reason"], counts["rows"], strict=True)}


def _runs(settings: Settings) -> pd.DataFrame | None:
    """The `pipeline_health` table (one row per recent run), newest first, or None before the first."""
    health = table(settings, PIPELINE_HEALTH)
    if health is None or health.empty:
        return None
    time_col = next((c for c in ("created_at", "end_time", "start_time", "timestamp") if c in health), None)
    return health.sort_values(time_col, ascending=False, kind="stable") if time_col else health


def last_run(settings: Settings) -> dict[str, Any] | None:
    """The newest recorded run: run_id, job, status and `when` (its end, else its creation), or None."""
    runs = _runs(settings)
    if runs is None:
        return None
    run = runs.iloc[0]
    when = next((run[c] for c in ("end_time", "created_at", "start_time") if c in run and pd.notna(run[c])), pd.NaT)
    return {"run_id": run.get("run_id", ""), "job": run.get("job", ""), "status": str(run["status"]), "when": when}


@dataclass(frozen=True)
class PipelineHealth:
    """Share of successful runs over the last `n` and over the `n` before; `source` says where from."""

    rate: float
    n: int
    previous: float
    source: str


def pipeline_health(settings: Settings, last_n: int = 20) -> PipelineHealth | None:
    """From the `pipeline_health` table the run-status sensors write after every run, or None."""
    health = _runs(settings)
    if health is None:
        return None
    if "status" in health:
        rate, n, prev = kpis.success_rate(health["status"].astype(str).tolist(), last_n)
        return PipelineHealth(rate, n, prev, "pipeline_health table") if n else None
    if "success_rate" in health:
        rates = health["success_rate"].astype(float).tolist()
        prev = rates[1] if len(rates) > 1 else float("nan")
        n = int(health["n_runs"].iloc[0]) if "n_runs" in health else 0
        return PipelineHealth(rates[0], n, prev, "pipeline_health table")
    return None


# ---------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------


class ApiUnavailable(Exception):
    """The API did not answer (not running, wrong URL, timeout)."""


def _get(url: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json, text/plain"})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiUnavailable(f"{url}: {reason}") from exc


@st.cache_data(ttl=API_TTL, show_spinner=False)
def api_metrics(settings: Settings) -> str | None:
    """The API's `/metrics` text, or None when it is unreachable."""
    try:
        status, body = _get(settings.api_url.rstrip("/") + "/metrics")
    except ApiUnavailable:
        return None
    return body.decode("utf-8", errors="replace") if status == 200 else None


def api_latency(settings: Settings) -> tuple[float, int] | None:
    """p95 latency (ms) and request count from the API's `/metrics`, or None when it is unreachable
    or exposes no latency histogram."""
    text = api_metrics(settings)
    return kpis.latency_p95_ms(text) if text is not None else None


def api_availability(settings: Settings) -> tuple[float, int] | None:
    """Share of requests answered without a 5xx since the API started, and how many, or None."""
    text = api_metrics(settings)
    return kpis.availability(text) if text is not None else None


@dataclass(frozen=True)
class Recommendations:
    """The API's answer for one user, or why there is none (`error`)."""

    items: pd.DataFrame
    recommendation_id: str | None = None
    model_version: str | None = None
    arm: str | None = None
    cold_start: bool = False
    error: str | None = None


@st.cache_data(ttl=API_TTL, show_spinner=False)
def recommendations(settings: Settings, user_id: str, k: int = 10) -> Recommendations:
    """`GET /v1/users/{user_id}/recommendations?k=` from the API. Raises `ApiUnavailable`."""
    url = f"{settings.api_url.rstrip('/')}/v1/users/{urllib.parse.quote(str(user_id), safe='')}/recommendations?k={k}"
    status, body = _get(url)
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        payload = {}
    if status != 200:
        detail = payload.get("detail") if isinstance(payload, dict) else None
        return Recommendations(pd.DataFrame(), error=f"HTTP {status}: {detail or body[:200].decode(errors='replace')}")
    items = pd.DataFrame(payload.get("items") or [])
    return Recommendations(
        items,
        recommendation_id=payload.get("recommendation_id"),
        model_version=payload.get("model_version"),
        arm=payload.get("arm"),
        cold_start=bool(payload.get("cold_start", False)),
    )
