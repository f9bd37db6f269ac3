"""Gauges the alert rules need beyond request metrics: readiness, the champion's age, and what the
pipeline's tables say (the latest drift verdict, the latest retrain's outcome, the pipeline's success
rate over 7 days), so one Prometheus scrape of the API carries every alert of `infra/monitoring/`.

The API reads those tables (`recsys_assets.contract.events` names them) from storage at most every
`TABLE_SECONDS`, in the model poller's thread; a table that is absent leaves its gauge unset, and one
that cannot be read leaves the last value. Gauges are `livemin`/`livemax` across workers, so a dead
worker's values drop out.

* `recsys_ready` (min over workers): 1 when the worker has a champion loaded;
* `recsys_champion_created_timestamp_seconds` (min): when the oldest served champion's artifact was built;
* `recsys_drift_flagged`: 1 when the latest window's drift report said `retrain`;
* `recsys_retrain_last_outcome{outcome="promoted|refused|failed"}`: 1 for the latest retrain's outcome;
* `recsys_pipeline_success_ratio_7d`, `recsys_pipeline_runs_7d`: ended runs in the last 7 days.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from prometheus_client import Gauge

from recsys_assets.contract.events import DRIFT_RESULTS, PIPELINE_HEALTH, RETRAIN_RUNS
from recsys_assets.contract.storage import Storage

log = logging.getLogger(__name__)

TABLE_SECONDS = 60.0
OUTCOMES = ("promoted", "refused", "failed")
ENDED = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass(frozen=True)
class OpsGauges:
    ready: Gauge
    champion_created: Gauge
    drift_flagged: Gauge
    retrain_outcome: Gauge
    pipeline_success: Gauge
    pipeline_runs: Gauge


@functools.cache
def gauges() -> OpsGauges:
    return OpsGauges(
        ready=Gauge("recsys_ready", "1 when this worker serves a champion", multiprocess_mode="livemin"),
        champion_created=Gauge(
            "recsys_champion_created_timestamp_seconds",
            "Unix time the served champion's artifact was built (the oldest over workers)",
            multiprocess_mode="livemin",
        ),
        drift_flagged=Gauge(
            "recsys_drift_flagged",
            "1 when the latest window's drift report asked for a retrain",
            multiprocess_mode="livemax",
        ),
        retrain_outcome=Gauge(
            "recsys_retrain_last_outcome",
            "1 for the outcome of the latest retrain (promoted, refused by the promotion check, failed)",
            ["outcome"],
            multiprocess_mode="livemax",
        ),
        pipeline_success=Gauge(
            "recsys_pipeline_success_ratio_7d",
            "Successful pipeline runs / ended runs over the last 7 days",
            multiprocess_mode="livemin",
        ),
        pipeline_runs=Gauge(
            "recsys_pipeline_runs_7d", "Pipeline runs that ended in the last 7 days", multiprocess_mode="livemax"
        ),
    )


def _timestamp(text: str) -> float | None:
    try:
        return pd.Timestamp(text).timestamp() if text else None
    except ValueError:
        return None


def retrain_outcome(row: Any) -> str | None:
    """promoted / refused (the promotion check said no) / failed, or None while it runs."""
    if bool(row.get("promoted", False)):
        return "promoted"
    if str(row.get("challenger") or "") and str(row.get("reason") or ""):
        return "refused"
    if str(row.get("status", "")).upper() in {"FAILURE", "CANCELED"}:
        return "failed"
    return None


class OpsObserver:
    """Sets the gauges after every model poll; reads the pipeline's tables every `TABLE_SECONDS`."""

    def __init__(self, storage: Storage, table_seconds: float = TABLE_SECONDS) -> None:
        self.storage = storage
        self.table_seconds = table_seconds
        self._read_at = -float("inf")

    def observe(self, champion: Any | None) -> None:
        g = gauges()
        g.ready.set(1 if champion is not None else 0)
        created = _timestamp(champion.artifact.created_at) if champion is not None else None
        if created is not None:
            g.champion_created.set(created)
        if time.monotonic() - self._read_at < self.table_seconds:
            return
        self._read_at = time.monotonic()
        for name, apply in ((DRIFT_RESULTS, self._drift), (RETRAIN_RUNS, self._retrain), (PIPELINE_HEALTH, self._runs)):
            try:
                if self.storage.exists(f"{name}.parquet"):
                    apply(self.storage.read_table(f"{name}.parquet"))
            except Exception as exc:  # a table being rewritten, storage down: the last values stay
                log.warning("could not read %s for the ops gauges: %s: %s", name, type(exc).__name__, exc)

    @staticmethod
    def _drift(table: pd.DataFrame) -> None:
        if table.empty or "window" not in table:
            return
        latest = table[table["window"] == table["window"].max()]
        column = "window_drifted" if "window_drifted" in latest else "drifted"
        gauges().drift_flagged.set(1 if latest[column].astype(bool).any() else 0)

    @staticmethod
    def _retrain(table: pd.DataFrame) -> None:
        if table.empty:
            return
        order = pd.to_datetime(table["triggered_at"], utc=True) if "triggered_at" in table else table.index
        outcome = retrain_outcome(table.loc[pd.Series(order, index=table.index).idxmax()])
        if outcome is None:
            return
        for name in OUTCOMES:
            gauges().retrain_outcome.labels(name).set(1 if name == outcome else 0)

    @staticmethod
    def _runs(table: pd.DataFrame) -> None:
        since = pd.Timestamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=7))
        ended = pd.to_datetime(table.get("end_time"), utc=True) if "end_time" in table else None
        if ended is None:
            return
        recent = table[(ended >= since).to_numpy() & table["status"].astype(str).str.upper().isin(ENDED).to_numpy()]
        gauges().pipeline_runs.set(len(recent))
        ratio = float((recent["status"].astype(str).str.upper() == "SUCCESS").mean()) if len(recent) else float("nan")
        gauges().pipeline_success.set(ratio)
