"""Dagster step logs on Blob: a real run against Azurite writes them, and the instance reads them back."""

from __future__ import annotations

import sys
import time
import urllib.request
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from azure.storage.blob import BlobServiceClient
from dagster._core.storage.compute_log_manager import ComputeIOType

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.defs.compute_logs import BlobComputeLogManager, compute_logs_config


@dg.op(config_schema={"marker": str})
def chatty(context) -> None:  # unannotated: with postponed annotations dagster would reject the hint
    marker = context.op_config["marker"]
    print(f"stdout {marker}", flush=True)
    print(f"stderr {marker}", file=sys.stderr, flush=True)
    time.sleep(2.5)  # past the test's upload interval, so a partial upload happens too


@dg.job
def chatty_job() -> None:
    chatty()


def test_config_only_for_blob_and_without_secrets(settings: Settings) -> None:
    assert compute_logs_config(settings) is None
    blob = get_settings(storage_uri="abfs://recsys/ml100k/", azure_connection_string="UseDevelopmentStorage=true")
    section = compute_logs_config(blob)
    assert section is not None
    assert section["config"]["container"] == "recsys"
    assert section["config"]["prefix"] == "ml100k/compute-logs"
    assert section["config"]["connection_string"] == {"env": "RECSYS_AZURE_CONNECTION_STRING"}
    assert "UseDevelopmentStorage" not in yaml.safe_dump(section)


@pytest.mark.integration
def test_step_logs_land_on_blob_and_read_back(azurite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a container no other test uses, so the manager has to create it
    settings = get_settings(
        storage_uri="abfs://steplogs/pipeline", azure_connection_string=azurite, dagster_home=str(tmp_path / "home")
    )
    section = compute_logs_config(settings)
    assert section is not None
    section["config"]["upload_interval"] = 1
    home = Path(settings.dagster_home)
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"compute_logs": section}))
    monkeypatch.setenv("RECSYS_AZURE_CONNECTION_STRING", azurite)
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    marker = uuid.uuid4().hex
    with dg.DagsterInstance.get() as instance:
        manager = instance.compute_log_manager
        assert isinstance(manager, BlobComputeLogManager)
        # the multiprocess executor runs the step in a child process, which captures its output
        # through the instance's compute log manager as a deployed run does
        with dg.execute_job(
            dg.reconstructable(chatty_job),
            instance,
            run_config={"ops": {"chatty": {"config": {"marker": marker}}}},
        ) as result:
            assert result.success
            run_id = result.run_id

        # the blobs, read with the plain SDK
        container = BlobServiceClient.from_connection_string(azurite).get_container_client("steplogs")
        run_prefix = f"pipeline/compute-logs/storage/{run_id}/compute_logs/"
        names = [b.name for b in container.list_blobs(name_starts_with=run_prefix)]
        out = [n for n in names if n.endswith(".out")]
        assert len(out) == 1, names
        assert f"stdout {marker}" in container.download_blob(out[0]).readall().decode()
        assert any(n.endswith(".out.partial") for n in names), names

        # what the UI does: the log key from the run's capture event, then the manager's reads
        captured = instance.all_logs(run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED)
        assert len(captured) == 1
        data = captured[0].dagster_event.event_specific_data
        assert "chatty" in data.step_keys
        log_key = manager.build_log_key_for_run(run_id, data.file_key)
        assert out[0].endswith(f"/{data.file_key}.out")
        assert not manager.has_local_file(log_key, ComputeIOType.STDOUT)  # staged copy gone: reads hit Blob
        logs = manager.get_log_data(log_key)
        assert f"stdout {marker}" in logs.stdout.decode()
        assert f"stderr {marker}" in logs.stderr.decode()
        lines, _ = manager.read_log_lines_for_log_key_prefix([run_id, "compute_logs"], None, ComputeIOType.STDOUT)
        assert f"stdout {marker}" in lines

        # locations and signed download links point at Azurite, not at devstoreaccount1.blob.core.windows.net
        endpoint = BlobServiceClient.from_connection_string(azurite).url
        meta = manager.get_log_metadata(log_key)
        assert meta.stdout_location == f"{endpoint}steplogs/{out[0]}"
        assert meta.stdout_download_url.startswith(meta.stdout_location + "?")
        with urllib.request.urlopen(meta.stdout_download_url, timeout=10) as response:
            assert f"stdout {marker}" in response.read().decode()
