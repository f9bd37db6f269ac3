"""Reading an artifact for serving: every failure to parse it is an `ArtifactError`, and every array
is checked against the manifest before a request can touch it.

`parse_artifact` checks the schema version and the checksum of `arrays.npz`; a file whose checksum
was recomputed after it was damaged passes that and then fails in numpy or zipfile (a bad CRC, a
truncated member) with errors of their own, which were a traceback every poll rather than a refusal.
Here reading the bytes is kept apart from parsing them: a storage error propagates (the poll tries
again), while anything raised by the bytes themselves is the artifact's fault and refuses it.
Then each array is checked: the id and text columns are 1-D text of `n_users` / `n_items` from the
manifest, sparse matrices are well formed (indices in range, `indptr` monotonic), component arrays
are numeric and the ones with a known meaning have the manifest's number of rows.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.artifact import (
    ARRAYS,
    MANIFEST,
    ArtifactError,
    ServingArtifact,
    map_artifact,
    parse_artifact,
)
from recsys_assets.contract.storage import Storage

# component array -> which count of the manifest its first dimension must equal
ROWS = {
    "popularity": "n_items",
    "similarity": "n_items",
    "item_features": "n_items",
    "item_factors": "n_items",
    "user_factors": "n_users",
}


def read_files(storage: Storage, parts: tuple[str, ...]) -> dict[str, bytes]:
    """The artifact's files as bytes (a missing one is left out: `parse_artifact` names it)."""
    return {name: storage.read_bytes(*parts, name) for name in (MANIFEST, ARRAYS) if storage.exists(*parts, name)}


def load_verified(storage: Storage, parts: tuple[str, ...]) -> ServingArtifact:
    """The artifact at `parts`, checked: on local storage memory-mapped (workers share its pages),
    on Blob read as bytes."""
    if not storage.is_local:
        return parse_verified(read_files(storage, parts))
    directory = storage.path(*parts)
    try:
        art = map_artifact(directory)
        with open(f"{directory}/{MANIFEST}", "rb") as fh:
            manifest = json.loads(fh.read())
    except ArtifactError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{ARRAYS} cannot be read: {type(exc).__name__}: {exc}") from exc
    verify_arrays(art, manifest)
    return art


def parse_verified(files: dict[str, bytes]) -> ServingArtifact:
    """`parse_artifact` plus the array checks; any failure is an `ArtifactError` saying what failed."""
    try:
        art = parse_artifact(files)
        manifest = json.loads(files[MANIFEST])
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{ARRAYS} cannot be read: {type(exc).__name__}: {exc}") from exc
    verify_arrays(art, manifest)
    return art


def verify_arrays(art: ServingArtifact, manifest: dict[str, Any]) -> None:
    counts = {"n_users": manifest.get("n_users"), "n_items": manifest.get("n_items")}
    for name, value, count in (
        ("user_ids", art.user_ids, "n_users"),
        ("item_ids", art.item_ids, "n_items"),
        ("item_titles", art.item_titles, "n_items"),
        ("item_categories", art.item_categories, "n_items"),
    ):
        if value.ndim != 1 or value.dtype.kind != "U":
            raise ArtifactError(f"array {name}: expected 1-D text, got {value.dtype} of shape {value.shape}")
        if len(value) != counts[count]:
            raise ArtifactError(f"array {name}: {len(value)} entries, the manifest's {count} is {counts[count]}")
    _check_matrix("history", art.history)
    for cname, component in art.scorer.components.items():
        for aname, value in component.arrays.items():
            label = f"{cname}.{aname}"
            if sp.issparse(value):
                _check_matrix(label, value)
            elif not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                raise ArtifactError(f"array {label}: expected numbers, got {getattr(value, 'dtype', type(value))}")
            rows = ROWS.get(aname)
            if rows is not None and (value.ndim < 1 or value.shape[0] != counts[rows]):
                raise ArtifactError(f"array {label}: shape {value.shape}, the manifest's {rows} is {counts[rows]}")


def _check_matrix(label: str, matrix: Any) -> None:
    m = sp.csr_matrix(matrix) if not isinstance(matrix, sp.csr_matrix) else matrix
    if m.data.dtype.kind not in "biuf":
        raise ArtifactError(f"array {label}: expected numbers, got {m.data.dtype}")
    try:
        m.check_format(full_check=True)
    except ValueError as exc:
        raise ArtifactError(f"array {label}: malformed sparse matrix: {exc}") from exc
