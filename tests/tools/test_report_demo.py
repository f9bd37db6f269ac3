"""`python -m recsys_assets report` on the demo's own data: MovieLens-100k cut in time, the pipeline
trained on the past (smoke budget, Pop and EASE), Redis and the API serving the champion and the
popularity arm, the future replayed through it, then the report and the deck built while the API
still runs. Every KPI printed in both must equal the value computed here from the tables the pipeline
wrote, the API's event log and its `/metrics`: none of the numbers is typed in anywhere."""

from __future__ import annotations

import json
import math
import os
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from recsys_assets.contract import attribution, metrics_text
from recsys_assets.contract.settings import get_settings
from recsys_assets.tools import cli, demo
from recsys_assets.tools import services as svcs
from recsys_assets.tools.pipeline import run_pipeline
from recsys_assets.tools.report import targets
from recsys_assets.tools.report.numbers import format_value
from tests.conftest import free_port
from tests.tools.test_report import deck_text, html_kpis

pytestmark = pytest.mark.integration
MODELS = ["Pop", "EASE"]


def offline(report: pd.DataFrame, model: str, metric: str) -> float:
    """The evaluation report's value as the console's Overview reads it: temporal, all users, K = 10."""
    if "setting" in report:
        report = report[report["setting"].fillna("discovery") == "discovery"]
    sel = report[
        (report["model"] == model)
        & (report["metric"] == metric)
        & (report["k"] == 10)
        & (report["protocol"] == "temporal")
        & (report["slice"] == "all")
    ]
    assert len(sel) == 1, (model, metric, sel)
    return float(sel["value"].iloc[0])


def event_log(events_dir: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted(events_dir.rglob("*.csv"))]
    assert frames, f"no event-log segment under {events_dir}"
    return pd.concat(frames, ignore_index=True)


@pytest.mark.timeout(900)
def test_report_and_deck_from_the_demo_loop_show_the_numbers_of_its_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    # as a user runs the demo: the settings come from RECSYS_* variables, which its services inherit
    env = {
        "RECSYS_STORAGE_URI": str(tmp_path / "data"),
        "RECSYS_DAGSTER_HOME": str(tmp_path / "home"),
        "RECSYS_API_PORT": str(free_port()),
        "RECSYS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "RECSYS_API_KEYS": "report-key:events",
        "RECSYS_MLFLOW_UI_PORT": str(free_port()),  # not started here: the API follows the pointer file
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    work = demo.replay_workdir(settings)
    source, _ = demo.cut_dataset(work)
    settings = demo.demo_settings(settings, source)
    assert run_pipeline(settings, {"budget": "smoke", "models": MODELS})

    # Redis and the API as `make demo` starts them (champion and popularity arms, 50/50)
    services = [s for s in demo.demo_services(settings, replay=True) if s.name.startswith(("Redis", "Recommendation"))]
    assert len(services) == 2
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [svcs.spawn(s.cmd, s.env, logs / s.log, header=True) for s in services]
    out = tmp_path / "final"
    try:
        assert svcs.wait_ready(services, procs, logs)
        assert demo.DemoReplay(work, 20.0).run(settings)
        api = services[-1].url.removesuffix("/docs")
        assert cli.main(["report", "--out", str(out), "--api-url", api]) == 0
        # the probes and /metrics are not counted, so this is the text the report read
        with urllib.request.urlopen(f"{api}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
    finally:
        svcs.stop_all(procs)

    data = Path(settings.storage_uri)
    champion = json.loads((data / "artifacts" / "CHAMPION.json").read_text())["model"]
    evaluation = pd.read_parquet(data / "evaluation_report.parquet")
    baseline = next(m for m in targets.BASELINE_MODELS if m in set(evaluation["model"]))
    health = pd.read_parquet(data / "pipeline_health.parquet")
    lists = attribution.served_lists(attribution.prepare_events(event_log(settings.events_path())))
    totals = attribution.totals(lists)
    arms = attribution.kpis_by(lists, "arm").set_index("arm")
    p95, _ = metrics_text.latency_p95_ms(metrics) or (math.nan, 0)
    availability, requests = metrics_text.availability(metrics) or (math.nan, 0)

    # the demo's data really is behind them: lists in both arms, clicks, runs, requests
    assert {"champion", "challenger"} <= set(arms.index) and totals["lists"] > 20 and totals["ctr"] > 0
    assert set(health["status"]) == {"SUCCESS"} and requests >= totals["lists"]
    expected = {m: format_value(offline(evaluation, champion, m), "metric") for m, _ in targets.OFFLINE_METRICS}
    expected |= {
        "p95_latency": format_value(p95, "ms"),
        "availability": format_value(availability, "pct2"),
        "pipeline_success": format_value(float((health["status"] == "SUCCESS").mean()), "pct"),
        "ctr": format_value(totals["ctr"], "pct"),
        "impression_ctr": format_value(totals["impression_ctr"], "pct"),
        "conversion": format_value(totals["conversion"], "pct"),
        "conversion_per_click": format_value(totals["conversion_per_click"], "pct"),
        "ctr_ratio": format_value(arms.loc["champion", "ctr"] / arms.loc["challenger", "ctr"], "ratio"),
    }
    assert "not measured" not in expected.values(), expected
    print(f"KPIs of the demo's data ({champion} serving, {totals['lists']} lists): {expected}")
    names = {key: name for key, name in targets.OFFLINE_METRICS} | {
        "p95_latency": "API p95 latency",
        "availability": "API availability",
        "pipeline_success": f"Pipeline success ({targets.PIPELINE_WINDOW_DAYS} days)",
        "ctr": "CTR (per list)",
        "impression_ctr": "CTR (per impression)",
        "conversion": "Conversion per list",
        "conversion_per_click": "Conversion per click",
        "ctr_ratio": "CTR champion / other arm",
    }
    html = (out / "report.html").read_text(encoding="utf-8")
    deck_kpis, deck = deck_text(out / "report.pptx")
    assert html_kpis(html) == expected
    assert {names[key]: value for key, value in expected.items()} == deck_kpis
    # the model comparison names both trained models with their NDCG@10, in both
    for text in (html, deck):
        for model in set(evaluation["model"]):
            assert model in text
        assert format_value(offline(evaluation, baseline, "ndcg"), "metric") in text
