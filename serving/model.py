"""The models the API serves: the champion, an optional challenger, hot reload and the A/B split.

`ModelHolder.refresh` (run every `model_poll_seconds`, and by `POST /v1/admin/reload`) reads
`artifacts/CHAMPION.json`; when it names a new artifact, the artifact is read and checked in a worker
thread, and only a complete, valid one replaces the served model, by assigning one attribute.
A request takes its model reference once at its start, so a switch never fails or mixes two
models within a request. An artifact that is refused (`ArtifactError`: `parse_artifact`'s checks,
every array checked against the manifest in `serving/verify.py`, a trial scoring) is reported in four
places: a log line naming it, the reason and what serves instead; `GET /v1/model`'s `last_rejected`;
`recsys_model_reloads_total{outcome="rejected"}`; and a 409 from `POST /v1/admin/reload`. The old
model keeps serving, and the same pointer is not retried until it changes.

A worker that has nothing to serve yet (starting, or restarted by its master) when the pointer
names a refused artifact serves the last good champion instead and is ready: the one named by
`artifacts/LAST_GOOD.json`, which every worker writes when a champion loads, or, without it, the
newest artifact under `artifacts/` that loads.

The challenger is `RECSYS_AB_CHALLENGER_PATH` (a folder under the storage root, e.g.
`candidates/EASE`) or, when unset, the folder named by an optional `artifacts/CHALLENGER.json`
(same format as the champion pointer). A share `RECSYS_AB_CHALLENGER_SHARE` of users, chosen by a
stable hash of the user id, is served by it; every impression records its arm. With a share of 0 (the
default) no challenger is loaded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import scipy.sparse as sp

from recsys_assets.contract import registry_alias
from recsys_assets.contract.artifact import (
    CHALLENGER_POINTER,
    CHAMPION_POINTER,
    MANIFEST,
    ArtifactError,
    ServingArtifact,
)
from recsys_assets.contract.lookup import (
    SIMILARITY_T,
    Categories,
    CategoryIndex,
    CategorySpelling,
    IdIndex,
    LookupTableError,
    Titles,
    lookup_arrays,
)
from recsys_assets.contract.retrieval import Retriever, use_candidates
from recsys_assets.contract.storage import Storage
from serving.errors import ArtifactRejectedError, ModelNotReadyError
from serving.schemas import ArtifactInfo, RejectedArtifact
from serving.telemetry import get_metrics
from serving.verify import load_verified

log = logging.getLogger(__name__)

# The last champion a worker loaded (same format as the pointer), written by the API: a worker that
# cannot load the champion the pointer names, and serves nothing yet, serves this one instead.
LAST_GOOD = ("artifacts", "LAST_GOOD.json")
# without LAST_GOOD.json, how many of the newest artifact folders to try
MAX_FALLBACK_TRIES = 3


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class LoadedModel:
    """An artifact plus the look-up tables a request needs, built once at load.

    The tables are views of the artifact's own arrays (`recsys_assets.contract.lookup`): with a
    memory-mapped artifact, N workers share them rather than each holding Python dicts and lists of
    every id and title. An artifact made before its look-up tables were stored gets them computed here.
    """

    artifact: ServingArtifact
    path: str
    loaded_at: str
    user_index: IdIndex
    item_index: IdIndex
    titles: Titles
    categories: Categories
    # casefolded category -> item indices, and -> the catalog's spelling
    category_items: CategoryIndex
    category_names: CategorySpelling
    components: dict[str, Any] = field(default_factory=dict)
    # item-item matrices transposed (CSR): a recommended item's column is then a cheap row, for reasons
    similarity_t: dict[str, sp.csr_matrix] = field(default_factory=dict)
    # the candidate path, for a catalog above the threshold; None: every item is scored
    retriever: Retriever | None = None

    @property
    def version(self) -> str:
        return self.artifact.model_version

    @property
    def n_items(self) -> int:
        return len(self.artifact.item_ids)

    @classmethod
    def build(cls, art: ServingArtifact, path: str, candidate_threshold: int = 20_000) -> LoadedModel:
        tables = art.lookup
        n_items = len(art.item_ids)
        if not tables:  # an artifact made before the look-up tables were stored
            tables = lookup_arrays(art.user_ids, art.item_ids, art.item_categories, art.scorer.components)
        try:
            categories = CategoryIndex(
                tables["category_keys"], tables["category_names"], tables["category_items"], n_items
            )
            similarity_t = {
                name: tables[f"{name}.{SIMILARITY_T}"]
                for name, c in art.scorer.components.items()
                if c.kind == "item_item"
            }
            for name, sim_t in similarity_t.items():
                if sim_t.shape != (n_items, n_items):
                    raise LookupTableError(f"{name}.{SIMILARITY_T} has shape {sim_t.shape}, expected {n_items} items")
            model = cls(
                artifact=art,
                path=path,
                loaded_at=_now(),
                user_index=IdIndex(art.user_ids, tables["user_order"]),
                item_index=IdIndex(art.item_ids, tables["item_order"]),
                titles=Titles(art.item_titles, art.item_ids),
                categories=Categories(art.item_categories),
                category_items=categories,
                category_names=categories.spelling,
                components=dict(art.scorer.components),
                similarity_t=similarity_t,
                retriever=(
                    Retriever(art.scorer, art.retrieval) if use_candidates(n_items, candidate_threshold) else None
                ),
            )
        except (KeyError, LookupTableError) as exc:
            raise ArtifactError(f"artifact look-up tables do not fit its arrays: {exc}") from exc
        model.smoke_test()
        return model

    def smoke_test(self) -> None:
        """Score an empty and a one-item history with every component: an artifact that cannot score is
        not served, and each component builds its look-up caches here rather than in the first request."""
        scorer = self.artifact.scorer
        one = (np.array([0], dtype=np.int64), np.ones(1, dtype=np.float32))
        empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        try:
            for component in scorer.components.values():
                component.score_one(*one, -1)
            results = [scorer.score_one(*one, -1), scorer.score_one(*empty, -1)]
        except Exception as exc:
            raise ArtifactError(f"artifact cannot score: {type(exc).__name__}: {exc}") from exc
        for scores in results:
            if scores.shape != (self.n_items,):
                raise ArtifactError(f"artifact scores have shape {scores.shape}, expected ({self.n_items},)")
        if self.retriever is not None:
            try:  # maps the ANN indexes now rather than in the first request
                self.retriever.topk_one(*one, 10)
            except Exception as exc:
                raise ArtifactError(f"artifact cannot score candidates: {type(exc).__name__}: {exc}") from exc

    def info(self) -> ArtifactInfo:
        art = self.artifact
        return ArtifactInfo(
            model_name=art.model_name,
            model_version=art.model_version,
            path=self.path,
            created_at=art.created_at,
            loaded_at=self.loaded_at,
            checksum=art.checksum,
            n_users=len(art.user_ids),
            n_items=len(art.item_ids),
            components={name: c.kind for name, c in art.scorer.components.items()},
            weights={k: float(v) for k, v in art.scorer.weights.items()},
            metrics={k: float(v) for k, v in art.metrics.items()},
        )


def _parts(path: Any) -> tuple[str, ...]:
    if isinstance(path, list | tuple) and path and all(isinstance(p, str) for p in path):
        return tuple(path)
    if isinstance(path, str) and path.strip("/"):
        return tuple(p for p in path.strip("/").split("/") if p)
    raise ArtifactError(f"pointer `path` must be a folder under the storage root, got {path!r}")


def challenger_arm(user_id: str, share: float) -> bool:
    """Stable assignment: the same user always lands in the same arm for a given share."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"ab:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


@dataclass
class _Loaded:
    model: LoadedModel | None = None
    rejected: RejectedArtifact | None = None
    marker: bytes | None = None


class ModelHolder:
    """The served champion and challenger; swapped whole, never mutated."""

    def __init__(
        self,
        storage: Storage,
        challenger_share: float,
        challenger_path: str | None,
        candidate_threshold: int = 20_000,
        registry_url: str | None = None,
    ) -> None:
        self.storage = storage
        # asked for the `champion` alias every poll; the pointer file when unset or it cannot answer
        self.registry_url = registry_url
        self._registry_down = False
        self.candidate_threshold = candidate_threshold
        self.challenger_share = challenger_share
        self.challenger_path = challenger_path
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.last_rejected: RejectedArtifact | None = None
        self._champion_marker: bytes | None = None
        self._challenger_marker: bytes | None = None
        self._last_good_warned = False
        self._lock = anyio.Lock()

    def pick(self, user_id: str) -> tuple[LoadedModel, str]:
        """The model and arm serving this user."""
        champion, challenger = self.champion, self.challenger
        if champion is None:
            raise ModelNotReadyError("no model loaded yet: no champion published, or its artifact was rejected")
        if challenger is not None and challenger_arm(user_id, self.challenger_share):
            return challenger, "challenger"
        return champion, "champion"

    def require_champion(self) -> LoadedModel:
        champion = self.champion
        if champion is None:
            raise ModelNotReadyError("no model loaded yet: no champion published, or its artifact was rejected")
        return champion

    async def refresh(self, force: bool = False) -> bool:
        """Load a newly published champion (and challenger); True if a served model changed.

        With `force` (admin reload) a rejected artifact raises `ArtifactRejectedError`, after any
        fallback to the last good champion is in place.
        """
        async with self._lock:
            champ = await anyio.to_thread.run_sync(self._check_champion, force)
            chall = await anyio.to_thread.run_sync(self._check_challenger, force)
            changed = False
            refused: list[str] = []
            for arm, loaded in (("champion", champ), ("challenger", chall)):
                if loaded.rejected is not None:
                    self.last_rejected = loaded.rejected
                    get_metrics().model_reloads.labels("rejected").inc()
                    refused.append(f"{arm} artifact {loaded.rejected.path} rejected: {loaded.rejected.error}")
                if loaded.model is not None:
                    self._swap(arm, loaded.model)
                    changed = True
                if loaded.marker is not None:
                    if arm == "champion":
                        self._champion_marker = loaded.marker
                    else:
                        self._challenger_marker = loaded.marker
            if champ.model is not None:
                await anyio.to_thread.run_sync(self._record_last_good, champ.model)
            if force and refused:
                raise ArtifactRejectedError("; ".join(refused))
            return changed

    def _swap(self, arm: str, model: LoadedModel) -> None:
        old = self.champion if arm == "champion" else self.challenger
        # one attribute assignment: requests hold the reference they took at their start
        if arm == "champion":
            self.champion = model
        else:
            self.challenger = model
        metrics = get_metrics()
        if old is not None:
            metrics.model_info.labels(arm, old.artifact.model_name, old.version).set(0)
        metrics.model_info.labels(arm, model.artifact.model_name, model.version).set(1)
        metrics.model_reloads.labels("loaded").inc()
        log.info(
            "serving %s %s (%s) from %s%s",
            arm,
            model.version,
            model.artifact.model_name,
            model.path,
            f", replacing {old.version}" if old is not None else "",
        )

    def _build(self, parts: tuple[str, ...]) -> LoadedModel:
        """Read, verify and build one artifact; `ArtifactError` for anything wrong with its files."""
        path = "/".join(parts)
        # a storage error propagates (the next poll tries again); the files' own faults refuse them
        art = load_verified(self.storage, parts)
        try:
            return LoadedModel.build(art, path, self.candidate_threshold)
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(f"artifact cannot be served: {type(exc).__name__}: {exc}") from exc

    def _load(self, parts: tuple[str, ...], arm: str, marker: bytes) -> _Loaded:
        path = "/".join(parts)
        try:
            model = self._build(parts)
        except ArtifactError as exc:
            rejected = RejectedArtifact(path=path, error=str(exc), at=_now())
            current = self.champion if arm == "champion" else self.challenger
            if current is not None or arm != "champion":
                log.error(
                    "rejected %s artifact %s: %s; still serving %s",
                    arm,
                    path,
                    exc,
                    current.version if current is not None else "nothing",
                )
                return _Loaded(rejected=rejected, marker=marker)
            # nothing served yet (a worker starting, or restarted, while the pointer names a bad
            # artifact): the last good champion serves rather than nothing
            fallback, source = self._last_good(exclude=path)
            if fallback is None:
                log.error(
                    "rejected champion artifact %s (named by %s): %s; no earlier artifact could be loaded "
                    "either (%s): nothing to serve, /ready answers 503 until a servable champion is published",
                    path,
                    "/".join(CHAMPION_POINTER),
                    exc,
                    source,
                )
                return _Loaded(rejected=rejected, marker=marker)
            log.error(
                "rejected champion artifact %s (named by %s): %s; serving the last good champion %s (%s) from %s",
                path,
                "/".join(CHAMPION_POINTER),
                exc,
                fallback.version,
                fallback.path,
                source,
            )
            return _Loaded(model=fallback, rejected=rejected, marker=marker)
        return _Loaded(model=model, marker=marker)

    def _last_good(self, exclude: str) -> tuple[LoadedModel | None, str]:
        """The last champion that loaded (`artifacts/LAST_GOOD.json`), else the newest artifact under
        `artifacts/` that loads; with where it came from (or why there is none)."""
        tried: list[str] = []
        if self.storage.exists(*LAST_GOOD):
            try:
                parts = _parts(json.loads(self.storage.read_bytes(*LAST_GOOD)).get("path"))
                if "/".join(parts) != exclude:
                    return self._build(parts), "/".join(LAST_GOOD)
                tried.append(f"{'/'.join(LAST_GOOD)} names the rejected artifact too")
            except (ValueError, AttributeError, ArtifactError) as exc:
                tried.append(f"{'/'.join(LAST_GOOD)}: {exc}")
        else:
            tried.append(f"no {'/'.join(LAST_GOOD)}")
        # found otherwise: the artifact folders next to the pointer, newest manifest first
        for created, parts in self._artifact_folders(exclude)[:MAX_FALLBACK_TRIES]:
            try:
                return self._build(parts), f"the newest loadable artifact under artifacts/ (created {created})"
            except ArtifactError as exc:
                tried.append(f"{'/'.join(parts)}: {exc}")
        return None, "; ".join(tried) or "no other artifact under artifacts/"

    def _artifact_folders(self, exclude: str) -> list[tuple[str, tuple[str, ...]]]:
        found = []
        for key in self.storage.list(CHAMPION_POINTER[0]):
            parts = tuple(key.split("/"))
            if parts[-1] != MANIFEST or "/".join(parts[:-1]) == exclude:
                continue
            try:
                created = str(json.loads(self.storage.read_bytes(*parts)).get("created_at", ""))
            except ValueError:
                continue
            found.append((created, parts[:-1]))
        return sorted(found, reverse=True)

    def _record_last_good(self, model: LoadedModel) -> None:
        """Remember the champion that loaded, for a worker that cannot load the pointer's later."""
        body = {"path": model.path.split("/"), "model_version": model.version, "model_name": model.artifact.model_name}
        try:
            if self.storage.exists(*LAST_GOOD) and json.loads(self.storage.read_bytes(*LAST_GOOD)) == body:
                return
            self.storage.write_text(json.dumps(body), *LAST_GOOD)
        except Exception as exc:
            # e.g. a read-only storage identity: serving goes on, the fallback then scans artifacts/
            if not self._last_good_warned:
                log.warning("could not write %s (%s: %s)", "/".join(LAST_GOOD), type(exc).__name__, exc)
                self._last_good_warned = True

    def _registry_pointer(self) -> bytes | None:
        """The pointer the registry's `champion` alias names, when a registry URL is set, it answers, and
        the version's artifact is on storage (else the pointer file decides, which the sync then rewrites)."""
        if self.registry_url is None:
            return None
        try:
            info = registry_alias.alias_version(self.registry_url)
        except registry_alias.RegistryUnavailableError as exc:
            if not self._registry_down:
                log.warning("model registry not answering (%s): following %s", exc, "/".join(CHAMPION_POINTER))
                self._registry_down = True
            return None
        if self._registry_down:
            log.info("model registry answering again at %s", self.registry_url)
            self._registry_down = False
        pointer = registry_alias.pointer_of(info) if info is not None else None
        if pointer is None or not self.storage.exists(*pointer["path"], MANIFEST):
            return None
        return json.dumps(pointer, sort_keys=True).encode()

    def _check_champion(self, force: bool) -> _Loaded:
        raw = self._registry_pointer()
        if raw is None:
            if not self.storage.exists(*CHAMPION_POINTER):
                return _Loaded()
            raw = self.storage.read_bytes(*CHAMPION_POINTER)
        if raw == self._champion_marker and not force:
            return _Loaded()
        try:
            pointer = json.loads(raw)
            parts = _parts(pointer.get("path") if isinstance(pointer, dict) else None)
        except (ValueError, ArtifactError) as exc:
            bad = RejectedArtifact(path="/".join(CHAMPION_POINTER), error=str(exc), at=_now())
            fallback, source = self._last_good(exclude="") if self.champion is None else (None, "")
            if fallback is not None:
                log.error(
                    "rejected %s: %s; serving the last good champion %s (%s) from %s",
                    "/".join(CHAMPION_POINTER),
                    exc,
                    fallback.version,
                    fallback.path,
                    source,
                )
                return _Loaded(model=fallback, rejected=bad, marker=raw)
            serving = self.champion.version if self.champion is not None else f"nothing ({source})"
            log.error("rejected %s: %s; still serving %s", "/".join(CHAMPION_POINTER), exc, serving)
            return _Loaded(rejected=bad, marker=raw)
        current = self.champion
        if current is not None and current.path == "/".join(parts) and not force:
            return _Loaded(marker=raw)
        return self._load(parts, "champion", raw)

    def _challenger_parts(self) -> tuple[str, ...] | None:
        if self.challenger_share <= 0:
            # no A/B split: the challenger the pipeline names is not loaded (nor its memory spent)
            return None
        if self.challenger_path:
            return _parts(self.challenger_path)
        if not self.storage.exists(*CHALLENGER_POINTER):
            return None
        try:
            return _parts(json.loads(self.storage.read_bytes(*CHALLENGER_POINTER)).get("path"))
        except (ValueError, AttributeError, ArtifactError) as exc:
            log.error("ignoring %s: %s", "/".join(CHALLENGER_POINTER), exc)
            return None

    def _check_challenger(self, force: bool) -> _Loaded:
        parts = self._challenger_parts()
        if parts is None:
            return _Loaded()
        if not self.storage.exists(*parts, MANIFEST):
            return _Loaded()
        # the manifest holds the arrays' checksum: a changed manifest is a changed artifact
        marker = "/".join(parts).encode() + b"\n" + self.storage.read_bytes(*parts, MANIFEST)
        if marker == self._challenger_marker and not force:
            return _Loaded()
        return self._load(parts, "challenger", marker)
