"""Storage behind one small interface: a local folder or Azure Blob (adlfs), chosen by URI.

Writes are atomic per object: the bytes go to a temporary name first and replace the final name
only once complete, so a failed or interrupted write never leaves a half-written table behind and
the last good version stays readable.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from recsys_assets.contract.settings import Settings


@dataclass(frozen=True)
class Storage:
    """A root URI plus the fsspec filesystem that serves it."""

    root: str
    fs: fsspec.AbstractFileSystem
    protocol: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        return cls.from_uri(settings.storage_uri, settings.azure_connection_string, settings.azure_account_url)

    @classmethod
    def from_uri(cls, uri: str, connection_string: str | None = None, account_url: str | None = None) -> Storage:
        """A local folder (plain path or file://) or abfs://container/prefix on Azure Blob."""
        parsed = urlparse(uri)
        if parsed.scheme in ("abfs", "az"):
            options: dict[str, object] = {}
            if connection_string:
                options["connection_string"] = connection_string
            elif account_url:
                from azure.identity.aio import DefaultAzureCredential

                options["account_name"] = urlparse(account_url).netloc.split(".")[0]
                options["credential"] = DefaultAzureCredential()
            else:
                raise ValueError(f"{uri}: Azure storage needs a connection string or an account URL")
            # skip_instance_cache: two roots with different credentials must not share a client
            fs = fsspec.filesystem("abfs", skip_instance_cache=True, **options)
            if not fs.exists(parsed.netloc):
                fs.mkdir(parsed.netloc)  # the container
            return cls(root=f"{parsed.netloc}{parsed.path}".rstrip("/"), fs=fs, protocol="abfs")
        root = Path(parsed.path if parsed.scheme == "file" else uri).resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root=str(root), fs=fsspec.filesystem("file"), protocol="file")

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    def path(self, *parts: str) -> str:
        """The filesystem path of a key under the root."""
        return posixpath.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """A URI for humans and for DuckDB (`abfs://...` or a local path)."""
        p = self.path(*parts)
        return p if self.is_local else f"{self.protocol}://{p}"

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write `data` under `parts` atomically; returns the final path."""
        final = self.path(*parts)
        parent = posixpath.dirname(final)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
        if self.is_local:
            self.fs.makedirs(parent, exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            if self.is_local:
                os.replace(tmp, final)
            else:
                # A Blob copy replaces the target in one step; readers see the old or the new blob.
                self.fs.copy(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        return final

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as fh:
            return fh.read()

    def write_table(self, df: pd.DataFrame | pa.Table, *parts: str) -> str:
        """Write a DataFrame (or an Arrow table) as one Parquet object (zstd), atomically."""
        table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return self.write_bytes(buf.getvalue(), *parts)

    def read_table(self, *parts: str) -> pd.DataFrame:
        with self.fs.open(self.path(*parts), "rb") as fh:
            return pq.read_table(fh).to_pandas()

    def write_text(self, text: str, *parts: str) -> str:
        return self.write_bytes(text.encode("utf-8"), *parts)

    def list(self, *parts: str) -> list[str]:
        base = self.path(*parts)
        if not self.fs.exists(base):
            return []
        return sorted(posixpath.relpath(p, self.root) for p in self.fs.find(base))
