"""The API's documentation page renders in a real browser that may reach nothing but the API itself."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.api_support import API_KEYS, ApiProcess, movielens_artifact, publish

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.integration
@pytest.mark.browser
def test_swagger_ui_renders_without_a_cdn(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import Route, sync_playwright

    publish(tmp_path / "data", movielens_artifact())
    env = {"RECSYS_STORAGE_URI": str(tmp_path / "data"), "RECSYS_REDIS_URL": "", "RECSYS_API_KEYS": API_KEYS}
    api = ApiProcess(env, tmp_path / "api.log").start()
    refused: list[str] = []

    def only_the_api(route: Route) -> None:
        if urlparse(route.request.url).port == api.port:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.route("**/*", only_the_api)
                page.goto(f"{api.url}/docs")
                page.wait_for_selector(".opblock", timeout=30_000)
                assert page.locator(".opblock").count() >= 8
                assert page.locator(".info .title").inner_text().startswith("recsys recommendation API")
                page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
            finally:
                browser.close()
    finally:
        api.stop()
    assert not refused, refused
    assert (tmp_path / "docs.png").stat().st_size > 20_000
