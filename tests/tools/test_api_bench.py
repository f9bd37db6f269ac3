"""The API load generator (`recsys_assets/tools/loadgen/`) against a real API process and `redis-server`: a few
seconds at a low fixed rate, then the soak command end to end in a short version."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recsys_assets.tools.loadgen.champion import count_logged
from recsys_assets.tools.loadgen.command_line import main
from recsys_assets.tools.loadgen.openloop import check_local, open_loop, run_async
from recsys_assets.tools.loadgen.stack import stack
from recsys_assets.tools.loadgen.workload import Workload
from tests.api_support import movielens_artifact, publish


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "data"
    publish(root, movielens_artifact())
    return root


def test_load_targets_only_the_loopback() -> None:
    assert check_local("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    with pytest.raises(SystemExit):
        check_local("http://example.com:8000")


@pytest.mark.integration
def test_open_loop_at_a_low_rate_has_no_errors_and_ordered_percentiles(storage: Path, tmp_path: Path) -> None:
    art = movielens_artifact()
    workload = Workload(user_ids=art.user_ids.tolist(), item_ids=art.item_ids.tolist(), seed=1)
    with stack(storage, tmp_path, workers=1) as st:
        run = run_async(open_loop(st.url, workload, rate=20, duration=5, warmup=0.5))
        summary = run.summary()
        stored, distinct = count_logged(st.events_dir, f"bench-{workload.tag}-")
    assert summary["errors"] == 0, summary["error_kinds"]
    assert summary["requests"] == 100 and summary["ok"] == 100
    assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    gets, posts = summary["get_recommendations"]["requests"], summary["post_event"]["requests"]
    assert gets + posts == 100 and gets > posts > 0
    assert 15 <= summary["throughput_rps"] <= 25
    # every posted event (warm-up included) is in the event log once
    assert stored == distinct == workload.n_events


@pytest.mark.integration
def test_soak_command_in_a_short_version(storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["soak", "--storage", str(storage), "--work", str(tmp_path), "--out", str(out), "--workers", "1"]
    argv += ["--rate", "20", "--duration", "4", "--warmup", "1", "--sample-every", "1"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["errors"] == 0 and result["requests"] == 80
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    memory = result["memory"]
    assert memory["rss_mb_after_warmup"] > 50 and "growth_pct" in memory
    assert len(result["rss_series"]) >= 3
    assert result["command"].startswith("python -m recsys_assets.tools.loadgen soak")


@pytest.mark.integration
def test_soak_with_a_worker_killed_and_redis_restarted_reports_availability(storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak-faults.json"
    argv = ["soak", "--storage", str(storage), "--work", str(tmp_path), "--out", str(out), "--workers", "2"]
    argv += ["--rate", "20", "--duration", "24", "--warmup", "2", "--sample-every", "2"]
    argv += ["--faults", "kill_worker,redis_restart", "--redis-down", "3"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    avail = result["availability"]
    # the faults happened, at a third and two thirds of the measured window, the worker was replaced
    faults = {f["fault"]: f for f in avail["faults"]}
    assert set(faults) == {"kill_worker", "redis_restart"}
    assert all("error" not in f for f in faults.values()), faults
    assert faults["kill_worker"]["at_s"] == pytest.approx(10, abs=1.5)
    assert faults["redis_restart"]["at_s"] == pytest.approx(18, abs=1.5) and faults["redis_restart"]["down_s"] == 3
    assert faults["kill_worker"]["replaced_after_s"] < 30
    # the client's reading is the summary's requests and errors
    client = avail["client"]
    assert client["requests"] == result["requests"] == 480 and client["failed"] == result["errors"]
    assert client["pct"] == pytest.approx(100 * (480 - result["errors"]) / 480, abs=1e-3)
    # the API's own counters over the window: every request it answered, none a 5xx (Redis down is not
    # an error: the workers fall back to their in-process state), the killed worker's counts kept
    api = avail["api_metrics"]
    assert 480 - client["failed"] - 10 <= api["requests"] <= 480 + 10 and api["answered_5xx"] == 0
    assert api["pct"] == 100.0
    probe = avail["ready_probe"]
    assert 20 <= probe["probes"] <= 25
    # a probe can fail only while the killed worker's slot waits for its replacement (once a second, 2 s
    # timeout): how many depends on how long the replacement took to start on this machine
    failed_probes = round(probe["probes"] * (1 - probe["pct"] / 100))
    assert failed_probes <= math.ceil(faults["kill_worker"]["replaced_after_s"]) + 1, (probe, faults)
    assert client["pct"] >= 98 and avail["goal_pct_min"] == 99.9
    assert avail["met"] == (client["pct"] >= 99.9)


def test_an_unknown_fault_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown kill_redis; choose from kill_worker, redis_restart"):
        main(["soak", "--work", str(tmp_path), "--faults", "kill_redis"])
