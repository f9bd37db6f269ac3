"""The serving artifact: what the API loads to score in milliseconds, without RecBole or torch.

Layout of one artifact (a folder, local or on Blob, written once and never modified):

    manifest.json   schema_version, model_name, model_version, created_at, weights, components
                    (kind + params + array names), n_users, n_items, dataset fingerprint, metrics,
                    trained_until (ISO UTC time of the last event trained on; absent in older
                    manifests, read as ""), sha256 of arrays.npz
    arrays.npz      user_ids, item_ids (str), item_titles, item_categories ("|"-joined), history
                    (CSR users x items of the event weights each user is scored from), each
                    component's arrays, named `<component>.<array>`, and the candidate path's arrays
                    (`retrieval.<name>`: score moments, ANN indexes, see `contract/retrieval.py`,
                    listed in the manifest's `retrieval`); a sparse matrix is stored as
                    `.data/.indices/.indptr/.shape`. Written uncompressed (`np.savez`), so every
                    member is a plain `.npy` at a fixed offset of the file.

`load_artifact` checks the schema version and the checksum and raises `ArtifactError` naming the
problem, so a corrupt or incompatible artifact is never served. With `mmap=True` (the API's way) the
checksum is computed by streaming the file, and then each array is a read-only view of one shared
memory map of `arrays.npz`: N worker processes serving one artifact share its pages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import mmap
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
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
    # the candidate path's arrays by name (moments, ANN index bytes); empty in artifacts made without them
    retrieval: dict[str, np.ndarray] = field(default_factory=dict)

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
        parts = (npz[f"{name}.data"], npz[f"{name}.indices"], npz[f"{name}.indptr"])
        return sp.csr_matrix(parts, shape=shape, copy=False)
    return npz[name]


def map_npz(path: str) -> dict[str, np.ndarray]:
    """Every member of an uncompressed `.npz` as a read-only array over one memory map of the file.

    The pages belong to the page cache, not to the process: processes mapping one file share them.
    A compressed member, or one that is not a plain `.npy`, raises `ArtifactError`.
    """
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    out: dict[str, np.ndarray] = {}
    try:
        infos = zipfile.ZipFile(path).infolist()
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{ARRAYS} is not a zip archive: {exc}") from exc
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
            raise ArtifactError(f"{ARRAYS} member {info.filename} is compressed or not .npy: cannot be mapped")
        # the local header: 30 bytes, then the name and an extra field of its own lengths
        if buf[info.header_offset : info.header_offset + 4] != b"PK\x03\x04":
            raise ArtifactError(f"{ARRAYS} member {info.filename} has no local header where the index says")
        name_len, extra_len = struct.unpack_from("<HH", buf, info.header_offset + 26)
        start = info.header_offset + 30 + name_len + extra_len
        # as zipfile does when it reads a member: damage behind a recomputed sha256 is still refused
        if zlib.crc32(memoryview(buf)[start : start + info.file_size]) != info.CRC:
            raise ArtifactError(f"{ARRAYS} member {info.filename} fails its CRC check")
        fh_npy = io.BytesIO(buf[start : start + min(65_536, info.file_size)])
        version = np.lib.format.read_magic(fh_npy)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(fh_npy)
        if dtype.hasobject:
            raise ArtifactError(f"{ARRAYS} member {info.filename} holds Python objects")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if fh_npy.tell() + size > info.file_size:
            raise ArtifactError(f"{ARRAYS} member {info.filename} is shorter than its header says")
        offset = start + fh_npy.tell()
        out[info.filename[:-4]] = np.ndarray(shape, dtype, buffer=buf, offset=offset, order="F" if fortran else "C")
    return out


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def dump_artifact(art: ServingArtifact) -> dict[str, bytes]:
    """Serialise to the two files of the layout (name -> bytes)."""
    arrays: dict[str, np.ndarray] = {}
    _put(arrays, "user_ids", art.user_ids.astype(str))
    _put(arrays, "item_ids", art.item_ids.astype(str))
    _put(arrays, "item_titles", art.item_titles.astype(str))
    _put(arrays, "item_categories", art.item_categories.astype(str))
    _put(arrays, "history", art.history)
    for rname, value in art.retrieval.items():
        _put(arrays, f"retrieval.{rname}", value)
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
        "retrieval": sorted(art.retrieval),
        "sha256": checksum,
    }
    art.checksum = checksum
    return {MANIFEST: json.dumps(manifest, indent=2, sort_keys=True).encode(), ARRAYS: payload}


def _manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{MANIFEST} is not valid JSON: {exc}") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"artifact schema_version {version!r}, this code reads {SCHEMA_VERSION}")
    return manifest


def _check_digest(manifest: dict[str, Any], digest: str) -> None:
    if digest != manifest.get("sha256"):
        raise ArtifactError(f"{ARRAYS} checksum mismatch: manifest {manifest.get('sha256')}, file {digest}")


def parse_artifact(files: dict[str, bytes]) -> ServingArtifact:
    """Rebuild an artifact from its files, refusing anything incomplete, corrupt or incompatible."""
    for name in (MANIFEST, ARRAYS):
        if name not in files:
            raise ArtifactError(f"artifact is missing {name}")
    manifest = _manifest(files[MANIFEST])
    digest = hashlib.sha256(files[ARRAYS]).hexdigest()
    _check_digest(manifest, digest)
    return _assemble(manifest, lambda: np.load(io.BytesIO(files[ARRAYS]), allow_pickle=False), digest)


def _assemble(manifest: dict[str, Any], open_arrays: Callable[[], Any], digest: str) -> ServingArtifact:
    try:
        npz = open_arrays()
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
            retrieval={name: npz[f"retrieval.{name}"] for name in manifest.get("retrieval", [])},
        )
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"artifact arrays do not match the manifest: {exc}") from exc
    if art.history.shape != (len(art.user_ids), len(art.item_ids)) or art.scorer.n_items != len(art.item_ids):
        raise ArtifactError("artifact shapes disagree with its id maps")
    return art


def save_artifact(art: ServingArtifact, directory: str) -> None:
    """Write to a local folder (manifest last, so a reader never sees a manifest without arrays)."""
    os.makedirs(directory, exist_ok=True)
    files = dump_artifact(art)
    for name in (ARRAYS, MANIFEST):
        tmp = os.path.join(directory, f".{name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(files[name])
        os.replace(tmp, os.path.join(directory, name))


def load_artifact(directory: str, mmap: bool = False) -> ServingArtifact:
    """Read a local artifact folder; with `mmap` its arrays are read-only views of a shared memory map."""
    if mmap:
        return map_artifact(directory)
    files = {}
    for name in (MANIFEST, ARRAYS):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, "rb") as fh:
                files[name] = fh.read()
    return parse_artifact(files)


def map_artifact(directory: str) -> ServingArtifact:
    """`load_artifact` with every array memory-mapped read-only; the same checks, the same refusals."""
    paths = {name: os.path.join(directory, name) for name in (MANIFEST, ARRAYS)}
    for name, path in paths.items():
        if not os.path.exists(path):
            raise ArtifactError(f"artifact is missing {name}")
    with open(paths[MANIFEST], "rb") as fh:
        manifest = _manifest(fh.read())
    digest = _sha256_file(paths[ARRAYS])
    _check_digest(manifest, digest)
    return _assemble(manifest, lambda: map_npz(paths[ARRAYS]), digest)


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
