"""Every fenced shell command of `docs/runbook.md` runs: against a real API (ml-100k champion) and Redis,
on a storage whose tables are written by the project's own writers, so a renamed command, option,
table, column, route or metric fails here. Commands marked `# test: --help` change a deployment: their
`--help` runs instead (`make -n` for a make target); those marked `# cloud` need Azure and are skipped."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from recsys_assets.contract.storage import Storage
from tests.api_support import ADMIN_KEY, API_KEY, ApiProcess, RedisServer, api_env, movielens_artifact, publish
from tests.conftest import ROOT
from tests.console_fixtures import write_event_log, write_ingestion_outputs, write_training_outputs

RUNBOOK = ROOT / "docs" / "runbook.md"
CLOUD, HELP = "# cloud", "# test: --help"
MAX_CLOUD = 6


def fenced_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, one per line (a trailing backslash continues a line)."""
    commands: list[str] = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if pending or (line.strip() and not line.lstrip().startswith("#")):
                pending += line.rstrip("\\") + (" " if line.endswith("\\") else "")
                if not line.endswith("\\"):
                    commands.append(pending.strip())
                    pending = ""
    return commands


def help_form(command: str) -> str:
    """The program and its subcommands (lower-case words up to the first option or placeholder) + `--help`."""
    tokens = shlex.split(command.split(HELP)[0])
    if tokens[0] == "make":
        return "make -n " + " ".join(tokens[1:])
    head = tokens[:3] if tokens[:2] == ["python", "-m"] else tokens[:1]
    subcommands = []
    for token in tokens[len(head) :]:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", token):
            break
        subcommands.append(token)
    return shlex.join([*head, *subcommands, "--help"])


def test_the_parser_finds_marked_and_continued_commands() -> None:
    text = "x\n```bash\n# a comment\ncurl -sS a \\\n  b\nmake report  # test: --help\naz x  # cloud\n```\n"
    assert fenced_commands(text) == ["curl -sS a    b", "make report  # test: --help", "az x  # cloud"]
    assert help_form("python -m recsys_assets champion promote VERSION --reason x  # test: --help") == (
        "python -m recsys_assets champion promote --help"
    )
    assert help_form("dagster job launch -j retrain_job -w workspace.yaml  # test: --help") == (
        "dagster job launch --help"
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A storage with the champion and the pipeline's tables, Redis and the API, as the runbook's variables."""
    import dagster as dg

    from recsys_assets.contract.settings import get_settings
    from recsys_assets.defs import runs

    tmp = tmp_path_factory.mktemp("runbook")
    storage = tmp / "data"
    publish(storage, movielens_artifact())
    store = Storage.from_uri(str(storage))
    settings = get_settings(storage_uri=str(storage), dagster_home=str(tmp / "dagster"))
    write_ingestion_outputs(store, settings)
    write_training_outputs(store)
    publish(storage, movielens_artifact())  # the pointer back on the real artifact
    write_event_log(store)
    store.write_bytes(b"x" * 1024, "candidates", "EASE", "arrays.npz")
    runs.write_reject_counts(store, {"missing_user_id": 1, "unparseable_timestamp": 1})
    # pipeline_health and retrain_runs as the run-status sensors write them, from a real (ephemeral) instance
    with dg.instance_for_test() as instance:

        @dg.asset
        def one() -> int:
            return 1

        assert dg.materialize([one], instance=instance).success
        runs.record(instance, store)
    drift = pd.DataFrame(
        {
            "metric": ["new_item", "event_type"],
            "kind": "data",
            "score": [0.5, 0.01],
            "threshold": 0.1,
            "drifted": [True, False],
            "stattest": "jensenshannon",
            "current_value": [0.3, 0.0],
            "reference_value": [0.0, 0.0],
            "window": "2026-01-02T00:00",
            "window_start": pd.Timestamp("2026-01-02", tz="UTC"),
            "window_end": pd.Timestamp("2026-01-02 01:00", tz="UTC"),
            "window_drifted": True,
        }
    )
    store.write_table(drift, "drift_results.parquet")

    redis = RedisServer().start()
    api = ApiProcess(api_env(storage, redis.url), tmp / "api.log")
    try:
        api.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env.update(
            {
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": str(ROOT),
                "API": api.url,
                "ADMIN_KEY": ADMIN_KEY,
                "EVENTS_KEY": API_KEY,
                "RECSYS_STORAGE_URI": str(storage),
                "RECSYS_REDIS_URL": redis.url,
                "RECSYS_DAGSTER_HOME": str(tmp / "dagster"),
                "DAGSTER_HOME": str(tmp / "dagster"),
            }
        )
        (tmp / "dagster").mkdir(exist_ok=True)
        yield env
    finally:
        api.stop()
        redis.stop()


RUNBOOK_COMMANDS = fenced_commands(RUNBOOK.read_text(encoding="utf-8"))


def test_the_runbook_has_commands_for_every_alert() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    for alert in re.findall(r"- alert: (\w+)", _alert_rules()):
        assert alert in text, f"{alert} (infra/monitoring/alerts.yml) has no section in docs/runbook.md"
    for topic in ("Drift", "Refused", "Failed", "Redis down", "Disk or share full", "Corrupt artifact"):
        assert topic.lower() in text.lower()
    for topic in ("Key rotation", "Rollback", "Weekly checks"):
        assert f"## {topic}" in text or f"### {topic}" in text
    cloud = [c for c in RUNBOOK_COMMANDS if c.endswith(CLOUD)]
    assert 0 < len(cloud) <= MAX_CLOUD, cloud
    assert len(RUNBOOK_COMMANDS) - len(cloud) >= 20


def _alert_rules() -> str:
    path = ROOT / "infra" / "monitoring" / "alerts.yml"
    return path.read_text(encoding="utf-8") if path.exists() else ""


@pytest.mark.integration
@pytest.mark.parametrize("command", [c for c in RUNBOOK_COMMANDS if not c.endswith(CLOUD)])
def test_runbook_command_runs(command: str, deployment: dict[str, str]) -> None:
    run = help_form(command) if HELP in command else command
    result = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; {run}"],
        cwd=ROOT,
        env=deployment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{run}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    if "curl" in run and "-w '%{http_code}" in run:
        # the key checks: an accepted key is answered 400 (empty batch) or 200 (reload), never 401/403
        assert result.stdout.strip() in ("200", "400"), result.stdout
