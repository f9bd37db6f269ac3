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
    port, mlflow_port, api_port, console_port, redis_port = (free_port() for _ in range(5))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    # every service on its own free port; Redis is started by the demo since none listens there
    env |= {
        "RECSYS_STORAGE_URI": str(tmp_path / "data"),
        "RECSYS_DAGSTER_HOME": str(tmp_path / "home"),
        "RECSYS_DAGSTER_PORT": str(port),
        "RECSYS_MLFLOW_UI_PORT": str(mlflow_port),
        "RECSYS_API_PORT": str(api_port),
        "RECSYS_CONSOLE_PORT": str(console_port),
        "RECSYS_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
    }
    code = "from recsys_assets.cli import serve; from recsys_assets.settings import get_settings; serve(get_settings())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        urls = [
            f"http://127.0.0.1:{port}/server_info",
            f"http://127.0.0.1:{mlflow_port}/health",
            f"http://127.0.0.1:{api_port}/health",
            f"http://127.0.0.1:{console_port}/_stcore/health",
        ]
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
    for p in (port, mlflow_port, api_port, console_port):
        assert f"http://127.0.0.1:{p}" in out
    assert f"redis://127.0.0.1:{redis_port}" in out and "demo-key" in out
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
