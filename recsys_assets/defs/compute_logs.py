"""Dagster step logs (stdout/stderr) on Azure Blob, at any Blob endpoint: Azure, or Azurite for tests.

dagster-azure's manager only reaches `https://<account>.blob.<suffix>`; this one also takes an account
URL or a connection string, like the rest of the project's Blob storage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from dagster import Field, Noneable, StringSource

# Private on purpose: a compute log manager is built on Dagster's internal compute-log API, which has no
# public counterpart. The methods overridden below take its `ComputeIOType`, and a log's file extension
# is its `IO_TYPE_EXTENSION`, as in the parent class.
from dagster._core.storage.compute_log_manager import ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION
from dagster_azure.blob import AzureBlobComputeLogManager

if TYPE_CHECKING:
    from recsys_assets.contract.settings import Settings

# Seconds between uploads of a running step's partial logs, so a UI on another machine can follow a
# long training step.
UPLOAD_INTERVAL = 30


class BlobComputeLogManager(AzureBlobComputeLogManager):
    """`AzureBlobComputeLogManager` that also accepts `account_url` and/or `connection_string`.

    With `connection_string`, the client comes from it (endpoint, account and key). With `account_url`
    (e.g. `http://127.0.0.1:10000/devstoreaccount1`), the client goes to that URL signed with the
    parent's credential options (`access_key_or_sas_token`, `secret_credential`, or by default
    `DefaultAzureCredential`). `storage_account` is then optional. The container is created if missing.
    """

    def __init__(
        self,
        container: str,
        storage_account: str | None = None,
        account_url: str | None = None,
        connection_string: str | None = None,
        access_key_or_sas_token: str | None = None,
        **kwargs: Any,
    ) -> None:
        service = BlobServiceClient.from_connection_string(connection_string) if connection_string else None
        if service is not None and not access_key_or_sas_token:
            # a key for download-link SAS; it also keeps the parent from building a DefaultAzureCredential
            access_key_or_sas_token = getattr(service.credential, "account_key", None)
        if service is not None:
            account = storage_account or service.account_name
        else:
            account = storage_account or (BlobServiceClient(account_url).account_name if account_url else None)
        if not account:
            raise ValueError("BlobComputeLogManager needs a connection_string, an account_url or a storage_account")
        super().__init__(
            storage_account=account, container=container, access_key_or_sas_token=access_key_or_sas_token, **kwargs
        )
        if service is None and account_url:
            # the parent's client holds the configured credential but points at the public endpoint
            service = BlobServiceClient(account_url, credential=access_key_or_sas_token or self._blob_client.credential)
        if service is not None:
            self._blob_client = service
            self._container_client = service.get_container_client(container)
        self._key_signed = bool(access_key_or_sas_token)
        if not self._container_client.exists():
            with contextlib.suppress(ResourceExistsError):  # another process created it in between
                self._container_client.create_container()

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **super().config_type(),
            "storage_account": Field(Noneable(StringSource), is_required=False, default_value=None),
            "account_url": Field(
                Noneable(StringSource),
                is_required=False,
                default_value=None,
                description="Blob endpoint, e.g. https://acct.blob.core.windows.net or an Azurite URL.",
            ),
            "connection_string": Field(
                Noneable(StringSource),
                is_required=False,
                default_value=None,
                description="Storage connection string; takes precedence over every other credential option.",
            ),
        }

    def _blob_url(self, blob_key: str) -> str:
        # without the query string, which holds the SAS token when one signs the client
        return self._container_client.get_blob_client(blob_key).url.partition("?")[0]

    def display_path_for_type(self, log_key: Sequence[str], io_type: ComputeIOType) -> str:
        if not self.is_capture_complete(log_key):
            return self.local_manager.get_captured_local_path(log_key, IO_TYPE_EXTENSION[io_type])
        return self._blob_url(self._blob_key(log_key, io_type))

    def _get_shell_cmd_for_type(self, log_key: Sequence[str], io_type: ComputeIOType) -> str:
        endpoint = self._blob_client.url.partition("?")[0]
        return (
            f"az storage blob download --auth-mode {'key' if self._key_signed else 'login'} "
            f"--blob-endpoint {endpoint} --container-name {self._container} --name {self._blob_key(log_key, io_type)}"
        )

    def get_log_keys_for_log_key_prefix(
        self, log_key_prefix: Sequence[str], io_type: ComputeIOType
    ) -> Sequence[list[str]]:
        # The parent splits every blob name on "." and fails on the `.partial` blobs that
        # `upload_interval` leaves behind; only complete logs name a log key.
        prefix = "/".join([*self._resolve_path_for_namespace(log_key_prefix), ""])
        suffix = f".{IO_TYPE_EXTENSION[io_type]}"
        return [
            [*log_key_prefix, blob.name[len(prefix) : -len(suffix)]]
            for blob in self._container_client.list_blobs(name_starts_with=prefix)
            if blob.name.endswith(suffix) and "/" not in blob.name[len(prefix) :]
        ]


def compute_logs_config(settings: Settings) -> dict[str, Any] | None:
    """The `compute_logs:` section of dagster.yaml for Blob storage (None for local storage).

    Logs go to the storage URI's container under `<prefix>/compute-logs`. The connection string is
    referenced from `RECSYS_AZURE_CONNECTION_STRING`, never written into the file, so that variable
    must be set wherever Dagster runs.
    """
    if not settings.is_azure:
        return None
    uri = urlparse(settings.storage_uri)
    config: dict[str, Any] = {
        "container": uri.netloc,
        "prefix": "/".join(part for part in (uri.path.strip("/"), "compute-logs") if part),
        # staged where Dagster's default manager keeps step logs, and deleted once uploaded
        "local_dir": str(Path(settings.dagster_home).resolve() / "storage"),
        "upload_interval": UPLOAD_INTERVAL,
    }
    if settings.azure_connection_string:
        config["connection_string"] = {"env": "RECSYS_AZURE_CONNECTION_STRING"}
    else:
        # signed in with DefaultAzureCredential, like the project's Blob storage
        config["account_url"] = settings.azure_account_url
    return {"module": __name__, "class": BlobComputeLogManager.__name__, "config": config}
