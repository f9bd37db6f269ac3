"""Every metric the alert rules (infra/monitoring/alerts.yml) read is exported by a running API, and the
ops gauges say what the pipeline's tables say: a two-worker API process scraped as Prometheus would."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from recsys_assets.contract.events import DRIFT_RESULTS, PIPELINE_HEALTH, RETRAIN_RUNS
from recsys_assets.contract.storage import Storage
from tests.alert_rules import PROMETHEUS_OWN, metric_names, rules
from tests.api_support import api_env, movielens_artifact

pytestmark = pytest.mark.integration


def write_pipeline_tables(storage: Path) -> None:
    store = Storage.from_uri(str(storage))
    now = pd.Timestamp(dt.datetime.now(dt.UTC))
    drift = pd.DataFrame(
        {
            "window": ["2026-12-01T10:00", "2026-12-01T10:00", "2026-12-01T10:01"],
            "metric": ["a", "b", "a"],
            "drifted": [False, False, True],
            "window_drifted": [False, False, True],
        }
    )
    store.write_table(drift, f"{DRIFT_RESULTS}.parquet")
    retrains = pd.DataFrame(
        {
            "run_id": ["r1", "r2"],
            "status": ["SUCCESS", "FAILURE"],
            "triggered_at": [now - pd.Timedelta(hours=5), now - pd.Timedelta(hours=1)],
            "promoted": [True, False],
            "challenger": ["EASE", "EASE"],
            "reason": ["", "EASE NDCG@10 0.1 < champion 0.2"],
        }
    )
    store.write_table(retrains, f"{RETRAIN_RUNS}.parquet")
    # 9 of the 10 runs that ended in the last 7 days succeeded; older and running ones do not count
    statuses = ["SUCCESS"] * 9 + ["FAILURE", "FAILURE", "STARTED"]
    ends = [now - pd.Timedelta(hours=h) for h in range(1, 11)] + [now - pd.Timedelta(days=9), pd.NaT]
    store.write_table(pd.DataFrame({"status": statuses, "end_time": ends}), f"{PIPELINE_HEALTH}.parquet")


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, for the lines of a text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_every_metric_the_rules_read_is_exported(storage: Path, redis_server, start_api) -> None:
    write_pipeline_tables(storage)
    api = start_api(api_env(storage, redis_server.url), workers=2, via_module=True)
    # traffic, including a 404, so the request histogram has samples with status codes
    for path in ("/v1/users/1/recommendations", "/v1/items/50/similar", "/v1/items/no-such-item/similar"):
        httpx.get(api.url + path, timeout=10)
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"{api.url}/metrics", timeout=10).text
        values = samples(text)
        if "recsys_pipeline_runs_7d" in values or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    exported = {key.split("{")[0] for key in values}
    for rule in rules():
        missing = metric_names(rule["expr"]) - exported - PROMETHEUS_OWN
        assert not missing, f"{rule['alert']} reads {sorted(missing)}, which the API does not export"

    assert values["recsys_ready"] == 1
    created = pd.Timestamp(movielens_artifact().created_at).timestamp()
    assert values["recsys_champion_created_timestamp_seconds"] == pytest.approx(created)
    assert values["recsys_drift_flagged"] == 1
    # the latest retrain's challenger was refused by the promotion check (its run failed with it)
    assert values['recsys_retrain_last_outcome{outcome="refused"}'] == 1
    assert values['recsys_retrain_last_outcome{outcome="failed"}'] == 0
    assert values["recsys_pipeline_runs_7d"] == 10
    assert values["recsys_pipeline_success_ratio_7d"] == pytest.approx(0.9)
    counted = [k for k in values if k.startswith("recsys_api_request_duration_seconds_count")]
    assert any('status_code="404"' in k and "similar" in k for k in counted), counted
