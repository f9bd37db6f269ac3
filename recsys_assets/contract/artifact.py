"""The serving artifact: what the API loads to score in milliseconds, without RecBole or torch.

Layout of one artifact (a folder, local or on Blob, written once and never modified):

    manifest.json   schema_version, model_name, model_version, created_at, weights, components
                    (kind + params + array names), n_users, n_items, dataset fingerprint, metrics,
                    trained_until (ISO UTC time of the last event trained on; absent in older
                    manifests, read as ""), sha256 of arrays.npz
    arrays.npz      user_ids, item_ids (str), item_titles, item_categories ("|"-joined), history
                    (CSR users x items of the event weights each user is scored from), and each
                    component's arrays, named `<component>.<array>`; a sparse matrix is stored as
                    `.data/.indices/.indptr/.shape`

`load_artifact` checks the schema version and the checksum and raises `ArtifactError` naming the
problem, so a corrupt or incompatible artifact is never served.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.scoring import Component, Scorer

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"


class ArtifactError(ValueError):
    """An artifact that must not be served (corrupt, incomplete or of another schema)."""


@dataclass
class ServingArtifact:
    model_name: str
    model_version: str
    scorer: Scorer
    user_ids: np.ndarray
    item_ids: np.ndarray
    history: sp.csr_matrix
    item_titles: np.ndarray
    item_categories: np.ndarray
    dataset_fingerprint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    trained_until: str = ""
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    checksum: str = ""

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids.tolist())}

    def item_index(self) -> dict[str, int]:
        return {it: i for i, it in enumerate(self.item_ids.tolist())}

    def topk_for_users(self, user_idx: np.ndarray, k: int, exclude_seen: bool = True) -> np.ndarray:
        """Offline-equivalent top-k for known users (the reference the API must reproduce)."""
        hist = self.history[user_idx]
        return self.scorer.topk(hist, k, user_idx=user_idx, exclude=hist if exclude_seen else None)


def _put(arrays: dict[str, np.ndarray], name: str, value: np.ndarray | sp.spmatrix) -> dict[str, Any]:
    if sp.issparse(value):
        m = sp.csr_matrix(value)
        arrays[f"{name}.data"] = m.data
        arrays[f"{name}.indices"] = m.indices
        arrays[f"{name}.indptr"] = m.indptr
        arrays[f"{name}.shape"] = np.asarray(m.shape, dtype=np.int64)
        return {"name": name, "sparse": True}
    arrays[name] = np.asarray(value)
    return {"name": name, "sparse": False}


def _get(npz: Any, name: str, sparse: bool) -> np.ndarray | sp.csr_matrix:
    if sparse:
        shape = tuple(int(x) for x in npz[f"{name}.shape"])
        return sp.csr_matrix((npz[f"{name}.data"], npz[f"{name}.indices"], npz[f"{name}.indptr"]), shape=shape)
    return npz[name]


def dump_artifact(art: ServingArtifact) -> dict[str, bytes]:
    """Serialise to the two files of the layout (name -> bytes)."""
    arrays: dict[str, np.ndarray] = {}
    _put(arrays, "user_ids", art.user_ids.astype(str))
    _put(arrays, "item_ids", art.item_ids.astype(str))
    _put(arrays, "item_titles", art.item_titles.astype(str))
    _put(arrays, "item_categories", art.item_categories.astype(str))
    _put(arrays, "history", art.history)
    components = {}
    for cname, comp in art.scorer.components.items():
        stored = [_put(arrays, f"{cname}.{aname}", a) for aname, a in comp.arrays.items()]
        components[cname] = {"kind": comp.kind, "params": comp.params, "arrays": stored}
    buf = io.BytesIO()
    # numpy's stub types **kwds as if an array could be named allow_pickle
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    payload = buf.getvalue()
    checksum = hashlib.sha256(payload).hexdigest()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model_name": art.model_name,
        "model_version": art.model_version,
        "created_at": art.created_at,
        "weights": art.scorer.weights,
        "bucket_weights": art.scorer.bucket_weights,
        "components": components,
        "n_users": len(art.user_ids),
        "n_items": len(art.item_ids),
        "dataset_fingerprint": art.dataset_fingerprint,
        "metrics": art.metrics,
        "trained_until": art.trained_until,
        "sha256": checksum,
    }
    art.checksum = checksum
    return {MANIFEST: json.dumps(manifest, indent=2, sort_keys=True).encode(), ARRAYS: payload}


def parse_artifact(files: dict[str, bytes]) -> ServingArtifact:
    """Rebuild an artifact from its files, refusing anything incomplete, corrupt or incompatible."""
    for name in (MANIFEST, ARRAYS):
        if name not in files:
            raise ArtifactError(f"artifact is missing {name}")
    try:
        manifest = json.loads(files[MANIFEST])
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{MANIFEST} is not valid JSON: {exc}") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"artifact schema_version {version!r}, this code reads {SCHEMA_VERSION}")
    digest = hashlib.sha256(files[ARRAYS]).hexdigest()
    if digest != manifest.get("sha256"):
        raise ArtifactError(f"{ARRAYS} checksum mismatch: manifest {manifest.get('sha256')}, file {digest}")
    try:
        npz = np.load(io.BytesIO(files[ARRAYS]), allow_pickle=False)
        components = {
            cname: Component(
                kind=spec["kind"],
                params=spec.get("params", {}),
                arrays={a["name"].split(".", 1)[1]: _get(npz, a["name"], a["sparse"]) for a in spec["arrays"]},
            )
            for cname, spec in manifest["components"].items()
        }
        art = ServingArtifact(
            model_name=manifest["model_name"],
            model_version=manifest["model_version"],
            scorer=Scorer(
                components=components,
                weights=manifest["weights"],
                bucket_weights=manifest.get("bucket_weights", {}),
            ),
            user_ids=npz["user_ids"],
            item_ids=npz["item_ids"],
            history=_get(npz, "history", True),
            item_titles=npz["item_titles"],
            item_categories=npz["item_categories"],
            dataset_fingerprint=manifest.get("dataset_fingerprint", ""),
            metrics=manifest.get("metrics", {}),
            trained_until=manifest.get("trained_until", ""),
            created_at=manifest["created_at"],
            checksum=digest,
        )
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"artifact arrays do not match the manifest: {exc}") from exc
    if art.history.shape != (len(art.user_ids), len(art.item_ids)) or art.scorer.n_items != len(art.item_ids):
        raise ArtifactError("artifact shapes disagree with its id maps")
    return art


def save_artifact(art: ServingArtifact, directory: str) -> None:
    """Write to a local folder (manifest last, so a reader never sees a manifest without arrays)."""
    import os

    os.makedirs(directory, exist_ok=True)
    files = dump_artifact(art)
    for name in (ARRAYS, MANIFEST):
        tmp = os.path.join(directory, f".{name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(files[name])
        os.replace(tmp, os.path.join(directory, name))


def load_artifact(directory: str) -> ServingArtifact:
    import os

    files = {}
    for name in (MANIFEST, ARRAYS):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, "rb") as fh:
                files[name] = fh.read()
    return parse_artifact(files)


# The pointers the pipeline writes and the API follows (JSON: `model_version`, `path`, `data_until`, ...).
CHAMPION_POINTER = ("artifacts", "CHAMPION.json")
CHALLENGER_POINTER = ("artifacts", "CHALLENGER.json")


def read_pointer(storage: Any, pointer: tuple[str, ...] = CHAMPION_POINTER) -> dict | None:
    """A pointer's JSON (the serving champion by default), or None before the first promotion."""
    if not storage.exists(*pointer):
        return None
    return json.loads(storage.read_bytes(*pointer))


def write_to_storage(art: ServingArtifact, storage: Any, *prefix: str) -> None:
    """Write through a `recsys_assets.contract.storage.Storage` (local or Blob); the manifest goes last."""
    files = dump_artifact(art)
    storage.write_bytes(files[ARRAYS], *prefix, ARRAYS)
    storage.write_bytes(files[MANIFEST], *prefix, MANIFEST)


def read_from_storage(storage: Any, *prefix: str) -> ServingArtifact:
    files = {}
    for name in (MANIFEST, ARRAYS):
        if storage.exists(*prefix, name):
            files[name] = storage.read_bytes(*prefix, name)
    return parse_artifact(files)
