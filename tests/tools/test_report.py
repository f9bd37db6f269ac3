"""`python -m recsys_assets report`: the HTML report and the slide deck built from the console's fixture
tables (known answers), with every KPI in both equal to the value computed here from the same tables."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from pptx import Presentation

from console import kpis as console_kpis
from recsys_assets.contract import attribution, metrics_text
from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.tools import cli
from recsys_assets.tools.report import targets
from recsys_assets.tools.report.inputs import DEFAULT_ROADMAP, read_roadmap
from recsys_assets.tools.report.numbers import format_value
from tests.console_fixtures import (
    EXPECTED_P95_MS,
    METRICS_TEXT,
    evaluation_report,
    event_log_frames,
    model_registry,
    stub_api,
    write_event_log,
    write_ingestion_outputs,
    write_monitoring_outputs,
    write_replay_outputs,
    write_training_outputs,
)

# training times logged to MLflow as the candidates' runs log them
TRAIN_SECONDS = {"EASE": 12.5, "Popularity": 0.4}


@pytest.fixture
def demo_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RECSYS_STORAGE_URI", str(tmp_path / "data"))
    monkeypatch.setenv("RECSYS_DAGSTER_HOME", str(tmp_path / "dagster"))
    settings = get_settings()
    store = Storage.from_settings(settings)
    write_ingestion_outputs(store, settings)
    write_training_outputs(store)
    write_monitoring_outputs(store)
    write_event_log(store)
    write_replay_outputs(store)
    store.write_table(model_registry(), "model_registry.parquet")
    # a candidate's serving artifact, for the artifact sizes
    store.write_bytes(b"x" * 2048, "candidates", "EASE", "arrays.npz")
    from recsys_assets.lib.tracking import MlflowTracking

    tracking = MlflowTracking.for_store(settings.mlflow_store())
    report = evaluation_report()
    for model, seconds in TRAIN_SECONDS.items():
        rows = report[(report["model"] == model) & (report["protocol"] == "temporal")]
        tracking.log_training_run(model, {}, rows, "fixture", {"protocol": "temporal"}, duration_s=seconds)
    return settings


def html_kpis(html: str) -> dict[str, str]:
    rows = re.findall(r'<tr data-kpi="([^"]+)"><th>[^<]*</th><td class="value">([^<]*)</td>', html)
    return {key: value for key, value in rows}


def deck_text(path: Path) -> tuple[dict[str, str], str]:
    """The KPI table of the deck (name -> value) and all the text of every slide."""
    prs = Presentation(str(path))
    kpi_rows: dict[str, str] = {}
    text: list[str] = []
    for slide in prs.slides:
        for shape in slide.shapes:
            # every shape's geometry is valid (integer EMUs, which PowerPoint requires) and on the slide
            assert shape.left + shape.width <= prs.slide_width and shape.top + shape.height <= prs.slide_height
            if shape.has_text_frame:
                text.append(shape.text_frame.text)
            if shape.has_table:
                rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
                text.extend(" | ".join(r) for r in rows)
                if rows[0][:2] == ["KPI", "value"]:
                    kpi_rows.update({r[0]: r[1] for r in rows[1:]})
    return kpi_rows, "\n".join(text)


def expected_kpis() -> dict[str, tuple[str, str]]:
    """KPI key -> (name, value as printed), computed here from the fixture tables."""
    lists = attribution.served_lists(attribution.prepare_events(pd.concat(event_log_frames(), ignore_index=True)))
    totals = attribution.totals(lists)
    report = evaluation_report()

    def offline(model: str, metric: str) -> float:
        sel = report[
            (report["model"] == model)
            & (report["metric"] == metric)
            & (report["k"] == 10)
            & (report["protocol"] == "temporal")
            & (report["slice"] == "all")
        ]
        return float(sel["value"].iloc[0])

    out = {m: (name, format_value(offline("EASE", m), "metric")) for m, name in targets.OFFLINE_METRICS}
    p95 = console_kpis.latency_p95_ms(METRICS_TEXT)
    assert p95 is not None and p95[0] == pytest.approx(EXPECTED_P95_MS)
    out["p95_latency"] = ("API p95 latency", format_value(p95[0], "ms"))
    # the console computes availability once the API exports status codes (else: not measured)
    console_availability = getattr(console_kpis, "availability", lambda text: None)(METRICS_TEXT)
    out["availability"] = (
        "API availability",
        format_value(console_availability[0] if console_availability else math.nan, "pct2"),
    )
    # the fixture's pipeline_health: ten runs within ten hours, one failed
    out["pipeline_success"] = ("Pipeline success (7 days)", format_value(9 / 10, "pct"))
    out["ctr"] = ("CTR (per list)", format_value(totals["ctr"], "pct"))
    out["impression_ctr"] = ("CTR (per impression)", format_value(totals["impression_ctr"], "pct"))
    out["conversion"] = ("Conversion per list", format_value(totals["conversion"], "pct"))
    out["conversion_per_click"] = ("Conversion per click", format_value(totals["conversion_per_click"], "pct"))
    # the fixture's event log has arms A and B: the ratio comes from the replay run (champion 8%, popularity 3.5%)
    out["ctr_ratio"] = ("CTR champion / other arm", format_value(0.08 / 0.035, "ratio"))
    return out


def test_report_and_deck_show_the_numbers_of_the_tables(demo_like: Settings, tmp_path: Path) -> None:
    out = tmp_path / "final"
    with stub_api([("a", 0.9)]) as url:
        assert cli.main(["report", "--out", str(out), "--api-url", url]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    deck_kpis, deck = deck_text(out / "report.pptx")
    expected = expected_kpis()

    # the fixture's known answers, so a wrong computation above cannot hide one below
    assert expected["ctr"][1] == "60.0%" and expected["conversion_per_click"][1] == "100.0%"
    assert expected["ndcg"][1] == "0.2500" and expected["p95_latency"][1] == "43.8 ms"
    shown = html_kpis(html)
    assert set(shown) == set(expected)
    for key, (name, value) in expected.items():
        assert shown[key] == value, key
        assert deck_kpis[name] == value, name
    # targets and verdicts: EASE beats Popularity (0.2000), the pipeline misses 95%, the ratio meets 2x
    assert re.search(r'data-kpi="ndcg">.*?<td>&gt; 0\.2000 \(Popularity\)</td><td class="met">', html)
    assert re.search(r'data-kpi="pipeline_success">.*?<td class="missed">', html)
    assert re.search(r'data-kpi="ctr_ratio">.*?<td class="met">', html)

    # the model comparison, the A/B arms, drift, cost drivers and the roadmap, in both
    for text in (html, deck):
        assert "EASE" in text and "Popularity" in text
        assert "Live windows compared: " in text
        assert "12.5 s" in text and "0.4 s" in text  # training time per model, from MLflow
        assert "2.0 KiB" in text  # the candidate's artifact
        assert f"{len(pd.read_parquet(tmp_path / 'data' / 'interactions.parquet')):,}" in text
    assert re.search(r"Live windows compared: <b>2</b>; with drift: <b>1</b>", html)
    arms = attribution.kpis_by(
        attribution.served_lists(attribution.prepare_events(pd.concat(event_log_frames()))), "arm"
    ).set_index("arm")
    assert arms.loc["A", "lists"] == 3 and f"<td>{format_value(arms.loc['A', 'ctr'], 'pct')}</td>" in html
    roadmap = read_roadmap(DEFAULT_ROADMAP)
    assert len(roadmap) >= 3
    for item in roadmap:
        assert item in deck
        assert item.replace("'", "&#x27;").replace('"', "&quot;") in html

    # self-contained: plots inline, nothing loaded from elsewhere
    assert html.count('src="data:image/png;base64,') >= 4
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html


def test_without_an_api_latency_and_availability_are_not_measured(demo_like: Settings, tmp_path: Path) -> None:
    assert cli.main(["report", "--out", str(tmp_path / "r"), "--api-url", "http://127.0.0.1:9"]) == 0
    shown = html_kpis((tmp_path / "r" / "report.html").read_text(encoding="utf-8"))
    assert shown["p95_latency"] == "not measured" and shown["availability"] == "not measured"
    assert shown["ctr"] == "60.0%"


def test_an_empty_storage_gives_a_report_saying_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RECSYS_STORAGE_URI", str(tmp_path / "empty"))
    monkeypatch.setenv("RECSYS_DAGSTER_HOME", str(tmp_path / "dagster"))
    assert cli.main(["report", "--out", str(tmp_path / "r"), "--api-url", "http://127.0.0.1:9"]) == 0
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert set(html_kpis(html).values()) == {"not measured"}
    assert "the API has served no list yet" in html
    assert (tmp_path / "r" / "report.pptx").stat().st_size > 0


def test_availability_counts_client_requests_only() -> None:
    # 3 of 1,000 client requests answered 5xx; the probes' own 503s are not client traffic
    text = (
        'recsys_api_request_duration_seconds_count{method="GET",path="/v1/model",status_code="200"} 997\n'
        'recsys_api_request_duration_seconds_count{method="GET",path="/v1/model",status_code="503"} 3\n'
        'recsys_api_request_duration_seconds_count{method="GET",path="/ready",status_code="503"} 50\n'
    )
    assert metrics_text.availability(text) == pytest.approx((0.997, 1000))
    assert metrics_text.availability(METRICS_TEXT.replace('status_code="', 'nolabel="')) is None
