"""`make demo`'s servers: every service comes up on its URL and Ctrl-C stops all of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from .conftest import ROOT, free_port

pytestmark = pytest.mark.integration


def test_demo_serves_every_ui_and_stops_cleanly(tmp_path: Path) -> None:
    port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {
        "RECSYS_STORAGE_URI": str(tmp_path / "data"),
        "RECSYS_DAGSTER_HOME": str(tmp_path / "home"),
        "RECSYS_DAGSTER_PORT": str(port),
        "RECSYS_MLFLOW_UI_PORT": str(mlflow_port),
    }
    code = "from recsys_assets.cli import serve; from recsys_assets.settings import get_settings; serve(get_settings())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        urls = [f"http://127.0.0.1:{port}/server_info", f"http://127.0.0.1:{mlflow_port}/health"]
        deadline = time.monotonic() + 120
        pending = set(urls)
        while pending and time.monotonic() < deadline:
            for url in list(pending):
                try:
                    if urllib.request.urlopen(url, timeout=2).status == 200:
                        pending.discard(url)
                except OSError:
                    pass
            time.sleep(1)
        assert not pending, f"not serving: {pending}"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    out = proc.stdout.read()
    assert f"http://127.0.0.1:{port}" in out and f"http://127.0.0.1:{mlflow_port}" in out
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
