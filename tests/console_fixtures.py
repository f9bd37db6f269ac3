"""Fixture data for the console tests, with known answers: an API event log, an evaluation report, a
champion pointer, drift results, pipeline health, and a small HTTP server standing in for the API.

The event log serves five lists (two model versions, two A/B arms, two days):

| list | served (UTC)     | version | arm | items   | feedback                          | clicked | converted |
|------|------------------|---------|-----|---------|-----------------------------------|---------|-----------|
| r1   | 2026-01-01 10:00 | v1      | A   | a, b, c | click b, purchase b               | yes (1) | yes       |
| r2   | 2026-01-01 11:00 | v1      | A   | a, d    | none                              | no      | no        |
| r3   | 2026-01-01 12:00 | v2      | B   | e, f    | click e twice, rating 5 on f      | yes (1) | yes       |
| r4   | 2026-01-02 09:00 | v2      | B   | a, b    | rating 3 on a, add_to_cart b      | no      | no        |
| r5   | 2026-01-02 12:00 | v1      | A   | c       | click c (written twice), purchase | yes (1) | yes       |

plus an organic click (no recommendation_id) and a click naming a list never served, neither counted.
Totals: 5 lists, 10 impressions, list CTR 3/5, impression CTR 3/10, conversion 3/5.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd

from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.lib.ingest import cleaning
from recsys_assets.lib.reports.eda import eda_summary

COLUMNS = [
    "user_id",
    "item_id",
    "event_type",
    "timestamp",
    "value",
    "event_id",
    "recommendation_id",
    "model_version",
    "arm",
]


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def _impressions(rec: str, user: str, when: str, version: str, arm: str, items: list[str]) -> list[list]:
    return [
        [user, item, "impression", when, pos, f"{rec}-imp-{pos}", rec, version, arm]
        for pos, item in enumerate(items, start=1)
    ]


# first segment: ISO timestamps (day 1)
SEGMENT_1 = [
    *_impressions("r1", "u1", "2026-01-01T10:00:00Z", "v1", "A", ["a", "b", "c"]),
    ["u1", "b", "click", "2026-01-01T10:01:00Z", "", "e1", "r1", "v1", "A"],
    ["u1", "b", "purchase", "2026-01-01T10:05:00Z", "12.5", "e2", "r1", "v1", "A"],
    *_impressions("r2", "u2", "2026-01-01T11:00:00Z", "v1", "A", ["a", "d"]),
    *_impressions("r3", "u3", "2026-01-01T12:00:00Z", "v2", "B", ["e", "f"]),
    ["u3", "e", "click", "2026-01-01T12:01:00Z", "", "e3", "r3", "v2", "B"],
    ["u3", "e", "click", "2026-01-01T12:02:00Z", "", "e4", "r3", "v2", "B"],
    ["u3", "f", "rating", "2026-01-01T12:03:00Z", "5", "e5", "r3", "v2", "B"],
    ["u9", "a", "click", "2026-01-01T13:00:00Z", "", "e6", "", "", ""],
]
# second segment: unix seconds (day 2), one row written twice
SEGMENT_2 = [
    *_impressions("r4", "u4", str(int(_ts("2026-01-02T09:00:00").timestamp())), "v2", "B", ["a", "b"]),
    ["u4", "a", "rating", str(int(_ts("2026-01-02T09:10:00").timestamp())), "3", "e7", "r4", "v2", "B"],
    ["u4", "b", "add_to_cart", str(int(_ts("2026-01-02T09:11:00").timestamp())), "", "e8", "r4", "v2", "B"],
    *_impressions("r5", "u5", str(int(_ts("2026-01-02T12:00:00").timestamp())), "v1", "A", ["c"]),
    ["u5", "c", "click", str(int(_ts("2026-01-02T12:01:00").timestamp())), "", "e9", "r5", "v1", "A"],
    ["u5", "c", "click", str(int(_ts("2026-01-02T12:01:00").timestamp())), "", "e9", "r5", "v1", "A"],
    ["u5", "c", "purchase", str(int(_ts("2026-01-02T12:03:00").timestamp())), "", "e10", "r5", "v1", "A"],
    ["u6", "z", "click", str(int(_ts("2026-01-02T13:00:00").timestamp())), "", "e11", "r-unknown", "v1", "A"],
]

EXPECTED_TOTALS = {
    "lists": 5,
    "impressions": 10,
    "clicked_lists": 3,
    "clicked_impressions": 3,
    "converted_lists": 3,
    "clicked_converted_lists": 3,
    "ctr": 0.6,
    "impression_ctr": 0.3,
    "conversion": 0.6,
    # every clicked list (r1, r3, r5) converted
    "conversion_per_click": 1.0,
}
# the last 24 hours of traffic (r4, r5) against the 24 hours before (r1, r2, r3)
EXPECTED_LAST_DAY = {"ctr": 0.5, "conversion": 0.5}
EXPECTED_DAY_BEFORE = {"ctr": 2 / 3, "conversion": 2 / 3}


def event_log_frames() -> list[pd.DataFrame]:
    return [pd.DataFrame(SEGMENT_1, columns=COLUMNS), pd.DataFrame(SEGMENT_2, columns=COLUMNS)]


def write_event_log(store: Storage, prefix: str = "events") -> None:
    """The two segments, as the API names them, under `prefix` (`events/` of the storage by default)."""
    for n, frame in enumerate(event_log_frames(), start=1):
        name = f"events-2026010{n}T000000-host-1-{n:04d}-abcdef.csv"
        store.write_text(frame.to_csv(index=False), *([prefix] if prefix else []), name)


# The evaluation report: EASE is the champion; NDCG@10 (temporal, all) 0.25 vs Popularity 0.20.
CHAMPION_NDCG10 = 0.25
BASELINE_NDCG10 = 0.20


def evaluation_report() -> pd.DataFrame:
    rows = []
    base = {"EASE": 1.0, "Popularity": 0.8, "Pop": 0.7}
    for model, scale in base.items():
        for protocol, pscale in (("temporal", 1.0), ("random", 1.4)):
            for slice_, n_users, sscale in (("all", 100, 1.0), ("0", 10, 0.3), ("1-5", 30, 0.6), ("20+", 60, 1.2)):
                for metric, mbase in (("ndcg", 0.25), ("map", 0.15), ("precision", 0.2), ("recall", 0.1)):
                    for k, kscale in ((5, 0.8), (10, 1.0), (20, 1.2)):
                        rows.append(
                            {
                                "model": model,
                                "protocol": protocol,
                                "slice": slice_,
                                "metric": metric,
                                "k": k,
                                "value": mbase * scale * pscale * sscale * kscale,
                                "n_users": n_users,
                                "dataset_fingerprint": "fixture",
                            }
                        )
    return pd.DataFrame(rows)


def write_training_outputs(store: Storage) -> None:
    store.write_table(evaluation_report(), "evaluation_report.parquet")
    pointer = {
        "model": "EASE",
        "model_version": "EASE-fixture-20260101000000",
        "path": ["artifacts", "EASE-fixture-20260101000000"],
        "promoted_at": "2026-01-01T00:00:00+00:00",
        "registry_version": "3",
        "ndcg@10": CHAMPION_NDCG10,
    }
    store.write_text(json.dumps(pointer), "artifacts", "CHAMPION.json")


# The model registry as `runs.write_model_registry` writes it: EASE v3 is the champion, the Popularity
# champion v1 before it, with NDCG@10 0.22 and MAP@10 0.14 (the champion's deltas: +0.03, +0.01).
PREVIOUS_CHAMPION = {"ndcg": 0.22, "map": 0.14}


def model_registry() -> pd.DataFrame:
    created = pd.date_range("2025-12-30", periods=3, freq="D", tz="UTC")
    return pd.DataFrame(
        {
            "version": [1, 2, 3],
            "aliases": ["", "challenger", "champion"],
            "created_at": created,
            "run_id": ["run-a", "run-b", "run-c"],
            "model": ["Popularity", "Pop", "EASE"],
            "model_version": ["Popularity-fixture", "Pop-fixture", "EASE-fixture-20260101000000"],
            "dataset_fingerprint": "fixture",
            "sha256": ["a" * 64, "b" * 64, "c" * 64],
            "map_at_10.temporal.all": [PREVIOUS_CHAMPION["map"], 0.105, 0.15],
            "ndcg_at_10.temporal.all": [PREVIOUS_CHAMPION["ndcg"], 0.175, CHAMPION_NDCG10],
            "run_name": ["Popularity (champion)", "Pop (challenger)", "EASE (champion)"],
            "registered_as": ["champion", "challenger", "champion"],
        }
    )


def write_monitoring_outputs(store: Storage) -> None:
    """Drift results over two windows (the second drifted), a retrain it triggered, pipeline health."""
    w1 = (pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-02", tz="UTC"))
    w2 = (pd.Timestamp("2026-01-02", tz="UTC"), pd.Timestamp("2026-01-03", tz="UTC"))
    drift = pd.DataFrame(
        [
            [*w1, "share_of_drifted_columns", 0.1, False, "reports/drift/w1.html"],
            [*w1, "item_popularity", 0.05, False, "reports/drift/w1.html"],
            [*w2, "share_of_drifted_columns", 0.6, True, "reports/drift/w2.html"],
            [*w2, "item_popularity", 0.4, True, "reports/drift/w2.html"],
        ],
        columns=["window_start", "window_end", "metric", "score", "drifted", "report_path"],
    )
    store.write_table(drift, "drift_results.parquet")
    for name in ("w1", "w2"):
        store.write_text(f"<html><body><h1>Drift report {name}</h1></body></html>", "reports", "drift", f"{name}.html")
    store.write_table(
        pd.DataFrame({"run_id": ["retrain-1"], "window_end": [w2[1]], "status": ["SUCCESS"]}),
        "retrain_runs.parquet",
    )
    statuses = ["SUCCESS"] * 9 + ["FAILURE"]
    store.write_table(
        pd.DataFrame(
            {
                "run_id": [f"run-{n}" for n in range(10)],
                "status": statuses,
                "end_time": pd.date_range("2026-01-01", periods=10, freq="h", tz="UTC"),
            }
        ),
        "pipeline_health.parquet",
    )


def write_replay_outputs(store: Storage) -> None:
    """A replay run (both arms) and its drift scenario: the champion at 8% before the shift, 1% during,
    12% after the retrained champion serves 240 s after the shift."""
    started = pd.Timestamp("2026-01-03 10:00", tz="UTC")
    runs = pd.DataFrame(
        {
            "run_id": "sim-1",
            "started_at": started,
            "dataset": "ml-100k",
            "arm": ["champion", "challenger"],
            "model_versions": ["Hybrid-a,Hybrid-b", "Popularity-a"],
            "lists": [1000, 1000],
            "ctr": [0.08, 0.035],
            "conversion": [0.06, 0.03],
            "hit_rate": [0.08, 0.035],
            "freshness_requests_max": [1, 1],
        }
    )
    store.write_table(runs, "replay_runs.parquet")
    phase = ["before", "during", "after"]
    starts = [started, started + pd.Timedelta(seconds=360), started + pd.Timedelta(seconds=600)]
    phases = pd.DataFrame(
        {
            "run_id": "sim-1",
            "dataset": "ml-100k",
            "arm": ["champion"] * 3 + ["challenger"] * 3,
            "phase": phase * 2,
            "lists": [800, 100, 100, 800, 100, 100],
            "ctr": [0.08, 0.01, 0.12, 0.035, 0.0, 0.0],
            "conversion": [0.06, 0.0, 0.09, 0.03, 0.0, 0.0],
            "hit_rate": [0.08, 0.01, 0.12, 0.035, 0.0, 0.0],
            "phase_started_at": starts * 2,
            "shift": "newest-items",
            "window": "2026-01-03T10:06",
            "window_run_started": 70.0,
            "drift_detected": 90.0,
            "retrain_started": 105.0,
            "promoted": 238.0,
            "served": 240.0,
            "champion_before": "Hybrid-a",
            "champion_after": "Hybrid-b",
            "retrain_status": "SUCCESS",
        }
    )
    store.write_table(phases, "replay_phases.parquet")


# ---------------------------------------------------------------------------------------------
# A stand-in for the API: `/metrics` and one recommendation route, in the documented shapes
# ---------------------------------------------------------------------------------------------

# p95 of 100 requests: rank 95 falls in (0.025, 0.05] holding 80..100, so 0.025 + 0.025 * 15/20 = 43.75 ms;
# the /metrics route's own (slow) requests are left out.
METRICS_TEXT = """# HELP recsys_api_request_duration_seconds Request duration, in seconds
# TYPE recsys_api_request_duration_seconds histogram
recsys_api_request_duration_seconds_bucket{method="GET",path="/v1/users/{user_id}/recommendations",le="0.01"} 50
recsys_api_request_duration_seconds_bucket{method="GET",path="/v1/users/{user_id}/recommendations",le="0.025"} 80
recsys_api_request_duration_seconds_bucket{method="GET",path="/v1/users/{user_id}/recommendations",le="0.05"} 100
recsys_api_request_duration_seconds_bucket{method="GET",path="/v1/users/{user_id}/recommendations",le="+Inf"} 100
recsys_api_request_duration_seconds_count{method="GET",path="/v1/users/{user_id}/recommendations",status_code="200"} 99
recsys_api_request_duration_seconds_count{method="GET",path="/v1/users/{user_id}/recommendations",status_code="503"} 1
recsys_api_request_duration_seconds_count{method="GET",path="/metrics",status_code="500"} 40
recsys_api_request_duration_seconds_bucket{method="GET",path="/metrics",le="0.01"} 0
recsys_api_request_duration_seconds_bucket{method="GET",path="/metrics",le="0.025"} 0
recsys_api_request_duration_seconds_bucket{method="GET",path="/metrics",le="0.05"} 0
recsys_api_request_duration_seconds_bucket{method="GET",path="/metrics",le="+Inf"} 40
"""
EXPECTED_P95_MS = 43.75


def recommendation_payload(user_id: str, k: int, items: list[tuple[str, float]], reason: str, version: str) -> dict:
    """The API's answer without titles (the console fills them in from `items` when they are missing)."""
    return {
        "recommendation_id": f"rec-{user_id}",
        "user_id": user_id,
        "model_version": version,
        "arm": "A",
        "cold_start": False,
        "items": [
            {"item_id": i, "rank": n, "score": s, "categories": [], "reason": reason, "reason_kind": "popular"}
            for n, (i, s) in enumerate(items[:k], start=1)
        ],
    }


@contextmanager
def stub_api(
    items: list[tuple[str, float]],
    reason: str = "similar to your history",
    model_version: str = "EASE-fixture-20260101000000",
) -> Iterator[str]:
    """Serve `/metrics` and `/v1/users/{id}/recommendations` on a free port; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            if path == "/metrics":
                self._send(200, METRICS_TEXT.encode(), "text/plain; version=0.0.4")
            elif path.startswith("/v1/users/") and path.endswith("/recommendations"):
                user = path.split("/")[3]
                if user == "unknown":
                    self._send(404, json.dumps({"detail": "unknown user"}).encode(), "application/json")
                else:
                    body = recommendation_payload(user, int(params.get("k", 10)), items, reason, model_version)
                    self._send(200, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b"{}", "application/json")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Ingestion tables: a few users and items, two rows rejected
# ---------------------------------------------------------------------------------------------

TITLES = {"a": "Alpha", "b": "Bravo", "c": "Charlie", "d": "Delta", "e": "Echo", "f": "Foxtrot"}


def write_ingestion_outputs(store: Storage, settings: Settings) -> None:
    events = [
        ("u1", "a", "rating", "2025-12-01T10:00:00Z", "4"),
        ("u1", "b", "click", "2025-12-02T10:00:00Z", ""),
        ("u1", "c", "purchase", "2025-12-03T10:00:00Z", "9.5"),
        ("u2", "a", "view", "2025-12-01T11:00:00Z", ""),
        ("u2", "d", "rating", "2025-12-04T11:00:00Z", "2"),
        ("u3", "e", "add_to_cart", "2025-12-05T12:00:00Z", ""),
        ("", "f", "click", "2025-12-05T12:00:00Z", ""),  # missing_user_id
        ("u3", "f", "click", "yesterday", ""),  # unparseable_timestamp
    ]
    raw = pd.DataFrame(events, columns=["user_id", "item_id", "event_type", "timestamp", "value"])
    for col in ("event_id", "recommendation_id", "category", "raw_line"):
        raw[col] = None
    result = cleaning.clean_events(raw, settings.cleaning())
    catalog = pd.DataFrame(
        {"item_id": list(TITLES), "title": list(TITLES.values()), "categories": "Fixture", "text": "", "year": 2000}
    )
    items, users = cleaning.build_items(result.interactions, catalog), cleaning.build_users(result.interactions, None)
    store.write_table(result.interactions, "interactions.parquet")
    store.write_table(items, "items.parquet")
    store.write_table(users, "users.parquet")
    store.write_table(cleaning.sample_rejects(result.rejected, 10), "rejected_events.parquet")
    # as the `eda_report` asset writes it beside the report
    runs.write_eda_summary(store, eda_summary(result.interactions, items, users))


def write_synthetic_traffic(
    store: Storage, versions: dict[str, str], ctr: dict[str, float], days: int = 14, lists_per_day: int = 120
) -> None:
    """A plausible two-arm event log ending now (arm -> model version, arm -> click probability), one
    segment per day, for the browser test's pages; no known answers, just realistic volume."""
    import numpy as np

    rng = np.random.default_rng(7)
    now = pd.Timestamp.now(tz="UTC").floor("h")
    for day in range(days):
        rows = []
        start = now - pd.Timedelta(days=days - day)
        for n in range(lists_per_day):
            arm = "A" if n % 2 == 0 else "B"
            rec, user = f"rec-{day}-{n}", f"{rng.integers(1, 944)}"
            served = start + pd.Timedelta(seconds=int(rng.integers(0, 86_400)))
            items = rng.choice(np.arange(1, 1683), size=10, replace=False)
            for pos, item in enumerate(items, start=1):
                rows.append(
                    [user, str(item), "impression", served.isoformat(), pos, f"{rec}-{pos}", rec, versions[arm], arm]
                )
            # a weekly rhythm on top of the arm's rate, so the chart is not flat
            p = ctr[arm] * (1 + 0.25 * np.sin(2 * np.pi * day / 7))
            if rng.random() < p:
                item, when = str(items[rng.integers(0, 3)]), served + pd.Timedelta(minutes=2)
                rows.append([user, item, "click", when.isoformat(), "", f"{rec}-c", rec, versions[arm], arm])
                if rng.random() < 0.3:
                    when += pd.Timedelta(minutes=5)
                    rows.append([user, item, "purchase", when.isoformat(), "19.9", f"{rec}-p", rec, versions[arm], arm])
        frame = pd.DataFrame(rows, columns=COLUMNS)
        store.write_text(frame.to_csv(index=False), "events", f"{start:%Y%m%d}-0000.csv")
