"""The Streamlit console: KPI values from fixture tables with known answers, the empty state of every
page on an empty storage, page switching (Streamlit's AppTest), and the real app in Chromium on the
smoke pipeline's output, with screenshots of every page under `docs/screenshots/`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import runs
from recsys_assets.lib import champion as champion_log
from tests.conftest import ROOT, free_port, wait_for_port
from tests.console_fixtures import (
    EXPECTED_P95_MS,
    PREVIOUS_CHAMPION,
    model_registry,
    stub_api,
    write_event_log,
    write_ingestion_outputs,
    write_monitoring_outputs,
    write_replay_outputs,
    write_synthetic_traffic,
    write_training_outputs,
)

APP = ROOT / "console" / "app.py"
PAGES = ["overview", "online", "drift", "models", "dataset", "lookup"]
TITLES = {
    "overview": "Overview",
    "online": "Online",
    "drift": "Drift",
    "models": "Models",
    "dataset": "Data",
    "lookup": "Lookup",
}
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "docs" / "screenshots"


def console_settings(tmp_path: Path, api_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    return get_settings(storage_uri=str(tmp_path / "data"), dagster_home=str(tmp_path / "dagster"), api_url=api_url)


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def start(settings: Settings) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["settings"] = settings
    return at.run()


def goto(at: AppTest, page: str) -> AppTest:
    return at.switch_page(f"app_pages/{page}.py").run()


def metrics(at: AppTest) -> dict[str, tuple[str, str]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


def page_text(at: AppTest) -> str:
    parts = [e.value for kind in (at.info, at.warning, at.markdown, at.caption, at.success) for e in kind]
    parts += [f"{m.label} {m.value} {m.delta}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture
def fixture_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Every source with known answers, and a stand-in API."""
    with stub_api([("a", 0.9), ("d", 0.8), ("f", 0.7)]) as url:
        settings = console_settings(tmp_path, url, monkeypatch)
        store = Storage.from_settings(settings)
        write_ingestion_outputs(store, settings)
        write_training_outputs(store)
        write_monitoring_outputs(store)
        write_event_log(store)
        write_replay_outputs(store)
        yield settings


def test_overview_kpis_from_fixture_tables(fixture_storage: Settings) -> None:
    at = start(fixture_storage)
    assert_clean(at)
    tiles = metrics(at)
    # the last 7 days of traffic hold all five lists, and nothing before them: no change to show
    assert tiles["CTR"] == ("60.0%", "5 lists")
    # the two conversions, named: 3 of 5 lists served; 3 of the 3 clicked lists
    assert tiles["Conversion per list"] == ("60.0%", "5 lists")
    assert tiles["Conversion per click"] == ("100.0%", "3 clicked lists")
    # EASE against the popularity baseline of the same report
    assert tiles["NDCG@10"] == ("0.2500", "+0.0500")
    assert tiles["MAP@10"] == ("0.1500", "+0.0300")
    assert tiles["API p95 latency"] == (f"{EXPECTED_P95_MS:,.0f} ms", "100 requests")
    assert tiles["Pipeline success rate"] == ("90%", "10 runs")
    assert tiles["Champion"][0] == "EASE"
    assert tiles["Drift"] == ("drift detected", "2 of 2 metrics")
    # 1 of the 100 recommendation requests answered 503 (the probes' and /metrics' are not counted)
    assert tiles["API availability"] == ("99.00%", "-0.90 pp")

    at.segmented_control(key="overview_period").set_value("24 hours").run()
    tiles = metrics(at)
    # r4, r5 against r1, r2, r3 (see console_fixtures)
    assert tiles["CTR"] == ("50.0%", "-16.7 pp")
    assert tiles["Conversion per list"] == ("50.0%", "-16.7 pp")
    assert tiles["Conversion per click"] == ("100.0%", "+0.0 pp")


def test_pages_with_fixture_data(fixture_storage: Settings) -> None:
    at = start(fixture_storage)
    for page in PAGES[1:]:
        goto(at, page)
        assert_clean(at)
        assert at.title[0].value == TITLES[page]

    goto(at, "online")
    tiles = metrics(at)
    assert tiles["Lists served"][0] == "5" and tiles["Impressions"][0] == "10"
    assert tiles["List CTR"][0] == "60.0%" and tiles["Impression CTR"][0] == "30.0%"
    assert tiles["Conversion per list"][0] == "60.0%" and tiles["Conversion per click"][0] == "100.0%"
    by_version = at.dataframe[0].value.set_index("model_version")
    assert by_version.loc["v1", "lists"] == 3 and by_version.loc["v2", "ctr"] == pytest.approx(50.0)  # percent
    at.segmented_control(key="online_by").set_value("A/B arm").run()
    assert set(at.dataframe[0].value["arm"]) == {"A", "B"}
    # the replay's runs, and its drift scenario: CTR per arm and phase, seconds from the shift to each step
    runs, phases = at.dataframe[1].value, at.dataframe[2].value
    assert runs.set_index("arm").loc["champion", "ctr"] == pytest.approx(8.0)  # percent
    champion = phases[phases["arm"] == "champion"].set_index("phase")["ctr"]
    assert champion.index.tolist() == ["before", "during", "after"]
    assert champion.tolist() == pytest.approx([8.0, 1.0, 12.0])
    tiles = metrics(at)
    assert tiles["Drift detected"][0] == "90 s" and tiles["New champion served"][0] == "240 s"

    goto(at, "models")
    table = at.dataframe[0].value
    assert list(table.index[:3]) == ["EASE", "Popularity", "Pop"]
    assert table.loc["EASE", "NDCG"] == pytest.approx(0.25)
    at.segmented_control(key="models_protocol").set_value("random").run()
    assert at.dataframe[0].value.loc["EASE", "NDCG"] == pytest.approx(0.25 * 1.4)

    goto(at, "drift")
    assert metrics(at)["Windows with drift"][0] == "1 of 2"
    # windows, the chosen (latest) window's metrics, the retrain it triggered
    assert list(at.dataframe[2].value["run_id"]) == ["retrain-1"]

    goto(at, "dataset")
    tiles = metrics(at)
    assert tiles["Interactions"][0] == "6" and tiles["Users"][0] == "3" and tiles["Items"][0] == "6"
    # no Dagster run here: the rejects come from the kept sample
    assert at.expander[0].label == "Sample of rejected rows (2)"
    assert set(at.dataframe[0].value["reason"]) == {"missing_user_id", "unparseable_timestamp"}

    goto(at, "lookup")
    assert_clean(at)
    recs, history = at.dataframe[0].value, at.dataframe[1].value
    assert list(recs["item_id"]) == ["a", "d", "f"] and list(recs["title"]) == ["Alpha", "Delta", "Foxtrot"]
    assert set(history["item_id"]) <= {"a", "b", "c", "d", "e"} and len(history) > 0


def test_registry_run_history_and_reject_counts_come_from_the_pipelines_tables(fixture_storage: Settings) -> None:
    """What Dagster and MLflow know reaches the console as tables: the previous champion (`model_registry`)
    is the offline deltas' reference, the newest `pipeline_health` row is the last run, and the rejects
    are the cleaning run's full counts (`reject_counts`), not the kept sample."""
    store = Storage.from_settings(fixture_storage)
    store.write_table(model_registry(), "model_registry.parquet")
    runs.write_reject_counts(store, {"missing_user_id": 7, "unparseable_timestamp": 3, "bad_value": 0})
    for change in (
        {"actor": "dagster run r1", "action": "pipeline", "from_version": "1", "to_version": "3", "reason": "passed"},
        {"actor": "alice", "action": "rollback", "from_version": "3", "to_version": "1", "reason": "CTR fell"},
    ):
        champion_log.record_change(store, change)
    at = start(fixture_storage)
    assert_clean(at)
    tiles = metrics(at)
    assert tiles["NDCG@10"] == ("0.2500", f"+{0.25 - PREVIOUS_CHAMPION['ndcg']:.4f}")
    assert tiles["MAP@10"] == ("0.1500", f"+{0.15 - PREVIOUS_CHAMPION['map']:.4f}")
    assert "vs previous champion v1 (Popularity)" in str(at.metric[5].proto)
    # run-9, the newest of the fixture's runs, failed
    assert tiles["Last pipeline run"][0] == "failure"
    assert any("run-9" in str(m.proto) for m in at.metric)

    goto(at, "models")
    assert_clean(at)
    history = at.dataframe[-2].value
    assert list(history["version"]) == [3, 2, 1]
    changes = at.dataframe[-1].value  # newest first
    assert list(changes["actor"]) == ["alice", "dagster run r1"]
    assert list(changes["to_version"]) == ["1", "3"] and changes["reason"][0] == "CTR fell"
    assert list(history["registered_as"]) == ["champion", "challenger", "champion"]

    goto(at, "dataset")
    assert_clean(at)
    assert "**10** rows rejected by the latest cleaning run" in page_text(at)


def test_empty_storage_every_page_says_no_data_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = console_settings(tmp_path, unreachable_url(), monkeypatch)
    at = start(settings)
    for page in PAGES:
        if page != "overview":
            goto(at, page)
        assert_clean(at)
        assert at.title[0].value == TITLES[page]
        assert "no data yet" in page_text(at).lower(), (page, page_text(at))
    tiles = metrics(goto(at, "overview"))
    assert len(tiles) == 13 and all(value == "—" for value, _ in tiles.values())
    assert "API availability" in tiles


def test_event_log_in_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `events_dir` set (the API on Azure storage keeps its segments on a local disk), the console
    reads the segments there."""
    settings = console_settings(tmp_path, unreachable_url(), monkeypatch)
    settings = settings.model_copy(update={"events_dir": str(tmp_path / "segments")})
    write_event_log(Storage.from_uri(str(tmp_path / "segments")), prefix="")
    at = goto(start(settings), "online")
    assert_clean(at)
    assert metrics(at)["Lists served"][0] == "5"


@pytest.mark.integration
def test_console_on_azure_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azurite: str) -> None:
    """The same numbers with every table, report and segment on Blob (a real Azurite)."""
    settings = console_settings(tmp_path, unreachable_url(), monkeypatch).model_copy(
        update={"storage_uri": "abfs://console/fixture", "azure_connection_string": azurite}
    )
    store = Storage.from_settings(settings)
    write_ingestion_outputs(store, settings)
    write_training_outputs(store)
    write_monitoring_outputs(store)
    write_event_log(store)
    at = start(settings)
    assert_clean(at)
    tiles = metrics(at)
    assert tiles["CTR"] == ("60.0%", "5 lists") and tiles["NDCG@10"] == ("0.2500", "+0.0500")
    assert tiles["Champion"][0] == "EASE" and tiles["Drift"][0] == "drift detected"
    assert metrics(goto(at, "dataset"))["Interactions"][0] == "6"
    goto(at, "drift")
    assert_clean(at)
    assert not at.info  # the stored report of the window was found on Blob
    lookup = goto(at, "lookup")
    assert len(lookup.dataframe) == 1 and len(lookup.dataframe[0].value) > 0


def test_lookup_without_the_api(fixture_storage: Settings) -> None:
    at = start(fixture_storage.model_copy(update={"api_url": unreachable_url()}))
    goto(at, "lookup")
    assert_clean(at)
    assert "not reachable" in at.warning[0].value
    assert len(at.dataframe) == 1  # the history is still there


# ---------------------------------------------------------------------------------------------
# The real app in Chromium, on the smoke pipeline's output
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The smoke pipeline's tables, reports, registry and run history, plus two weeks of synthetic
    two-arm traffic in the API's event-log format (the API itself is not part of this test)."""
    base = tmp_path_factory.mktemp("console-e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {
        "RECSYS_STORAGE_URI": str(base / "data"),
        "RECSYS_DAGSTER_HOME": str(base / "dagster"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_assets", "pipeline", "--budget", "smoke", "--models", "Pop,EASE"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = Storage.from_uri(env["RECSYS_STORAGE_URI"])
    champion = json.loads(store.read_bytes("artifacts", "CHAMPION.json"))["model_version"]
    others = sorted({p.split("/")[1] for p in store.list("artifacts") if p.count("/") > 1} - {champion})
    write_synthetic_traffic(store, {"A": champion, "B": others[0] if others else champion}, {"A": 0.3, "B": 0.36})
    yield env


def popular_unseen(storage_uri: str, k: int = 10) -> list[tuple[str, float]]:
    """What the stand-in API recommends to the most active user (the lookup's default): the most
    popular items the user has not interacted with, scored by relative popularity."""
    root = Path(storage_uri)
    users = pd.read_parquet(root / "users.parquet", columns=["user_id", "n_interactions"])
    user = users.sort_values(["n_interactions", "user_id"], ascending=[False, True])["user_id"].iloc[0]
    inter = pd.read_parquet(root / "interactions.parquet", columns=["user_id", "item_id"])
    items = pd.read_parquet(root / "items.parquet", columns=["item_id", "n_interactions"])
    seen = set(inter.loc[inter["user_id"] == user, "item_id"])
    top = items[~items["item_id"].isin(seen)].nlargest(k, "n_interactions")
    return [
        (str(i), round(n / top["n_interactions"].max(), 4))
        for i, n in zip(top["item_id"], top["n_interactions"], strict=True)
    ]


@contextlib.contextmanager
def console_server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamlit", "run", str(APP)),
            *("--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1"),
            *("--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.browser
def test_console_in_chromium(pipeline_storage: dict[str, str]) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    recommended = popular_unseen(pipeline_storage["RECSYS_STORAGE_URI"])
    champion = json.loads(Path(pipeline_storage["RECSYS_STORAGE_URI"], "artifacts", "CHAMPION.json").read_text())
    with (
        stub_api(recommended, reason="popular among all users", model_version=champion["model_version"]) as api_url,
        console_server(pipeline_storage | {"RECSYS_API_URL": api_url}) as url,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})

            def visit(path: str, ready: str, name: str, min_count: int = 1) -> str:
                page.set_viewport_size({"width": 1440, "height": 900})
                page.goto(f"{url}/{path}")
                page.wait_for_function(f"document.querySelectorAll('{ready}').length >= {min_count}", timeout=60_000)
                # Streamlit shows its running indicator until the script has finished
                page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=60_000)
                # the app scrolls inside its main block: grow the window to the content for a whole-page shot
                height = page.evaluate(
                    "Math.max(...['stMain', 'stAppViewContainer', 'stMainBlockContainer'].map("
                    "id => document.querySelector(`[data-testid=${id}]`)?.scrollHeight || 0))"
                )
                page.set_viewport_size({"width": 1440, "height": max(900, min(int(height) + 40, 4000))})
                page.wait_for_timeout(1000)  # plotly redraws at the new size
                page.screenshot(path=str(SCREENSHOTS / f"console_{name}.png"))
                return page.locator('[data-testid="stMain"]').inner_text()

            text = visit("", '[data-testid="stMetric"]', "overview", min_count=13)
            assert page.locator('[data-testid="stMetric"]').count() == 13
            assert "NDCG@10" in text and champion["model"] in text
            assert f"{EXPECTED_P95_MS:,.0f} ms" in text and "Page not found" not in text

            visit("online", ".js-plotly-plot .main-svg", "online")
            assert page.locator(".js-plotly-plot").count() == 1
            assert page.locator('[data-testid="stMetric"]').count() == 6
            text = visit("models", ".js-plotly-plot .main-svg", "models", min_count=4)
            assert "Champion and challenger history" in text
            # the fixture's pipeline ran no online estimate: that section alone says so
            assert text.count("No data yet") == text.count("No data yet: no online estimate") == 1
            text = visit("drift", '[data-testid="stAlert"]', "drift")
            assert "No data yet" in text
            visit("data", ".js-plotly-plot .main-svg", "data", min_count=2)
            text = visit("lookup", '[data-testid="stDataFrame"]', "lookup", min_count=2)
            # the grids draw on a canvas; the caption names the list the API served
            assert page.locator('[data-testid="stDataFrame"]').count() == 2
            assert champion["model_version"] in text and "not reachable" not in text
        finally:
            browser.close()
    for name in ("overview", "online", "models", "drift", "data", "lookup"):
        assert (SCREENSHOTS / f"console_{name}.png").stat().st_size > 20_000


def test_models_page_shows_the_online_estimates(fixture_storage: Settings) -> None:
    store = Storage.from_settings(fixture_storage)
    estimates = pd.DataFrame(
        {
            "model": ["EASE", "EASE"],
            "estimator": ["ips", "dr"],
            "value": [0.081, 0.079],
            "ci_low": [0.070, 0.071],
            "ci_high": [0.093, 0.088],
            "lists": [5000, 5000],
            "matched_per_list": [7.5, 7.5],
            "logged_value": [0.085, 0.085],
            "logged_ctr": [0.084, 0.084],
        }
    )
    store.write_table(estimates, "online_estimates.parquet")
    at = start(fixture_storage)
    goto(at, "models")
    assert_clean(at)
    shown = next(df.value for df in at.dataframe if "estimator" in df.value.columns)
    assert shown.set_index("estimator").loc["ips", "value"] == pytest.approx(0.081)
    assert shown.set_index("estimator").loc["dr", "ci_high"] == pytest.approx(0.088)


def test_models_page_shows_the_canary_gate_and_its_decisions(fixture_storage: Settings) -> None:
    from recsys_assets.lib.canary import DECISION_COLUMNS

    store = Storage.from_settings(fixture_storage)
    rows = [
        {"at": "2026-01-02T00:00:00Z", "phase": "canary", "verdict": "start", "action": "canary opened"},
        {
            "at": "2026-01-02T06:00:00Z",
            "phase": "canary",
            "verdict": "withdraw",
            "action": "withdrew MultiVAE-x (Hybrid, registry version 4)",
            "champion_lists": 9000,
            "champion_clicks": 740,
            "challenger_lists": 1000,
            "challenger_clicks": 45,
            "estimate": -0.037,
            "low": -0.055,
            "high": -0.012,
        },
    ]
    table = pd.DataFrame([{c: r.get(c) for c in DECISION_COLUMNS} for r in rows])
    table["at"] = pd.to_datetime(table["at"], utc=True)
    store.write_table(table, "promotion_decisions.parquet")
    state = {
        "phase": "holdout",
        "started_at": "2026-01-03T00:00:00+00:00",
        "salt": "s",
        "share": 0.05,
        "champion": {"model": "Hybrid", "model_version": "EASE-fixture-20260101000000", "registry_version": "3"},
        "challenger": {"model": "Popularity", "model_version": "Pop-1", "registry_version": "1"},
        "tests": {},
        "looks": 12,
        "last": {"verdict": "continue", "reason": "ctr: continue: fewer than 500 lists per arm"},
    }
    store.write_text(json.dumps(state), "artifacts", "CANARY.json")
    at = start(fixture_storage)
    goto(at, "models")
    assert_clean(at)
    text = " ".join(m.value for m in at.markdown)
    assert "Open holdout" in text and "EASE-fixture-20260101000000" in text and "12 looks" in text
    shown = next(df.value for df in at.dataframe if "verdict" in df.value.columns)
    assert shown["verdict"].tolist() == ["withdraw", "start"]  # newest first
    assert shown.loc[0, "high"] == pytest.approx(-0.012)


def test_a_report_that_shares_a_script_is_shown_with_it_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from console import data

    settings = console_settings(tmp_path, unreachable_url(), monkeypatch)
    store = Storage.from_settings(settings)
    page = '<html><body><script src="../lib/evidently-9.9.js"></script><p>report</p></body></html>'
    store.write_text(page, "drift", "w1", "report.html")
    store.write_text(page.replace("9.9", "9.8"), "drift", "w2", "report.html")  # its script is not stored
    store.write_text("var renderer = 1;", "drift", "lib", "evidently-9.9.js")

    shown = data.report_html(settings, "drift/w1/report.html")
    assert shown == "<html><body><script>var renderer = 1;</script><p>report</p></body></html>"
    # by the URI the drift table keeps, too
    assert data.report_html(settings, store.uri("drift", "w1", "report.html")) == shown
    assert data.report_html(settings, "drift/w2/report.html") == page.replace("9.9", "9.8")
    assert data.report_html(settings, "drift/w3/report.html") is None
