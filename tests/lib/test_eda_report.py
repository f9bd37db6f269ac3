"""The EDA report: its numbers, and that it renders its plots in a real browser with no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recsys_assets.contract.settings import Settings
from recsys_assets.lib.ingest import cleaning, readers
from recsys_assets.lib.reports.eda import eda_summary, gini, render_eda_report

CHROMIUM = "/usr/bin/chromium"


def test_gini_bounds() -> None:
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 10]) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def movielens_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from recsys_assets.contract.settings import get_settings

    s: Settings = get_settings(storage_uri=str(tmp_path_factory.mktemp("eda")))
    raw, items, users = readers.read_movielens()
    inter = cleaning.clean_events(raw, s.cleaning()).interactions
    it, us = cleaning.build_items(inter, items), cleaning.build_users(inter, users)
    summary = eda_summary(inter, it, us)
    path = s.local_root() / "eda_report.html"
    path.write_text(render_eda_report(inter, it, us, summary, title="MovieLens-100k"))
    return path, summary


def test_summary_numbers(movielens_report: tuple[Path, dict]) -> None:
    _, summary = movielens_report
    assert summary["n_interactions"] == 100_000
    assert summary["n_users"] == 943 and summary["n_items"] == 1682
    assert summary["sparsity"] == pytest.approx(1 - 100_000 / (943 * 1682))
    assert summary["event_types"] == {"rating": 100_000}
    assert 0.5 < summary["item_popularity_gini"] < 1  # a long tail
    # every ml-100k user has at least 20 ratings; some items have fewer than 5
    assert summary["cold_users_share"] == 0.0 and summary["cold_items_share"] > 0.1


def test_report_is_self_contained(movielens_report: tuple[Path, dict]) -> None:
    html = movielens_report[0].read_text()
    assert "<script src=" not in html and "cdn." not in html.split("</head>")[0]
    assert html.count('class="plotly-graph-div"') == 6


@pytest.mark.browser
def test_report_renders_offline_in_chromium(movielens_report: tuple[Path, dict], tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    path, _ = movielens_report
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.goto(path.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg", timeout=30_000)
            # every figure rendered an SVG with drawn data
            assert page.locator(".plotly-graph-div").count() == 6
            page.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length >= 6")
            assert page.locator("#summary tr").count() >= 10
            page.screenshot(path=str(tmp_path / "eda_report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "eda_report.png").stat().st_size > 20_000
