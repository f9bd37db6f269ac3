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
default) no challenger is loaded. A pointer with a `share` of its own (the pipeline's canary or holdout,
`contract/canary.py`) sets the split itself, with its `salt`: the split opens, moves and closes (share 0)
with the pointer, read every poll, and no restart or setting is needed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import anyio

from recsys_assets.contract import registry_alias
from recsys_assets.contract.artifact import CHALLENGER_POINTER, CHAMPION_POINTER, MANIFEST, ArtifactError
from recsys_assets.contract.canary import in_challenger_arm
from recsys_assets.contract.storage import Storage
from serving.errors import ArtifactRejectedError, ModelNotReadyError
from serving.loaded import LoadedModel, now
from serving.schemas import RejectedArtifact
from serving.telemetry import get_metrics
from serving.verify import load_verified

log = logging.getLogger(__name__)

# The last champion a worker loaded (same format as the pointer), written by the API: a worker that
# cannot load the champion the pointer names, and serves nothing yet, serves this one instead.
LAST_GOOD = ("artifacts", "LAST_GOOD.json")
# without LAST_GOOD.json, how many of the newest artifact folders to try
MAX_FALLBACK_TRIES = 3


def _parts(path: Any) -> tuple[str, ...]:
    if isinstance(path, list | tuple) and path and all(isinstance(p, str) for p in path):
        return tuple(path)
    if isinstance(path, str) and path.strip("/"):
        return tuple(p for p in path.strip("/").split("/") if p)
    raise ArtifactError(f"pointer `path` must be a folder under the storage root, got {path!r}")


@dataclass(frozen=True)
class Split:
    """Who the challenger serves: a `share` of users by a stable hash salted with `salt`, in a `role`."""

    share: float
    salt: str = ""
    role: str = "ab"


@dataclass
class _Loaded:
    model: LoadedModel | None = None
    rejected: RejectedArtifact | None = None
    marker: bytes | None = None
    split: Split | None = None
    close: bool = False


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
        self.configured_split = Split(challenger_share)
        self.challenger_path = challenger_path
        self.champion: LoadedModel | None = None
        # the challenger and its split, swapped together so a request never pairs one with the other's split
        self._challenger: tuple[LoadedModel, Split] | None = None
        self.last_rejected: RejectedArtifact | None = None
        self._champion_marker: bytes | None = None
        self._challenger_marker: bytes | None = None
        self._last_good_warned = False
        self._lock = anyio.Lock()

    @property
    def challenger(self) -> LoadedModel | None:
        slot = self._challenger
        return slot[0] if slot is not None else None

    @property
    def challenger_share(self) -> float:
        """The share of users the challenger serves now (0 without one)."""
        slot = self._challenger
        return slot[1].share if slot is not None else 0.0

    @property
    def challenger_role(self) -> str | None:
        slot = self._challenger
        return slot[1].role if slot is not None else None

    def pick(self, user_id: str) -> tuple[LoadedModel, str]:
        """The model and arm serving this user."""
        champion, slot = self.champion, self._challenger
        if champion is None:
            raise ModelNotReadyError("no model loaded yet: no champion published, or its artifact was rejected")
        if slot is not None and in_challenger_arm(user_id, slot[1].share, slot[1].salt):
            return slot[0], "challenger"
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
                    self._swap(arm, loaded.model, loaded.split)
                    changed = True
                elif loaded.close and self._challenger is not None:
                    self._close_challenger()
                    changed = True
                elif loaded.split is not None and self._challenger is not None:
                    self._challenger = (self._challenger[0], loaded.split)  # the same artifact, a new split
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

    def _close_challenger(self) -> None:
        old = self.challenger
        self._challenger = None
        self._challenger_marker = None  # the same artifact in a later split is loaded again
        if old is not None:
            get_metrics().model_info.labels("challenger", old.artifact.model_name, old.version).set(0)
            log.info("the challenger split is closed: %s (%s) no longer serves", old.version, old.artifact.model_name)

    def _swap(self, arm: str, model: LoadedModel, split: Split | None = None) -> None:
        old = self.champion if arm == "champion" else self.challenger
        # one attribute assignment: requests hold the reference they took at their start
        if arm == "champion":
            self.champion = model
        else:
            self._challenger = (model, split or self.configured_split)
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
            rejected = RejectedArtifact(path=path, error=str(exc), at=now())
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
            bad = RejectedArtifact(path="/".join(CHAMPION_POINTER), error=str(exc), at=now())
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

    def _challenger_parts(self) -> tuple[tuple[str, ...], Split] | Split | None:
        """The challenger's folder and split; a `Split` alone when the pointer closed the split (share 0);
        None when there is no challenger to serve."""
        configured = self.configured_split
        if self.challenger_path:
            return (_parts(self.challenger_path), configured) if configured.share > 0 else None
        if not self.storage.exists(*CHALLENGER_POINTER):
            return None
        try:
            doc = json.loads(self.storage.read_bytes(*CHALLENGER_POINTER))
            if "share" in doc and doc.get("role") != "ab":
                split = Split(float(doc["share"]), str(doc.get("salt") or ""), str(doc.get("role") or "ab"))
            elif configured.share > 0:
                split = configured
            else:
                return None  # no A/B split: the challenger the pipeline names is not loaded (nor its memory spent)
            return (_parts(doc.get("path")), split) if split.share > 0 else split
        except (ValueError, TypeError, AttributeError, ArtifactError) as exc:
            log.error("ignoring %s: %s", "/".join(CHALLENGER_POINTER), exc)
            return None

    def _check_challenger(self, force: bool) -> _Loaded:
        found = self._challenger_parts()
        if found is None:
            return _Loaded()
        if isinstance(found, Split):
            return _Loaded(close=True)
        parts, split = found
        if not self.storage.exists(*parts, MANIFEST):
            return _Loaded()
        # the manifest holds the arrays' checksum: a changed manifest is a changed artifact
        marker = "/".join(parts).encode() + b"\n" + self.storage.read_bytes(*parts, MANIFEST)
        if marker == self._challenger_marker and not force:
            slot = self._challenger
            return _Loaded(split=split) if slot is not None and slot[1] != split else _Loaded()
        loaded = self._load(parts, "challenger", marker)
        return _Loaded(model=loaded.model, rejected=loaded.rejected, marker=loaded.marker, split=split)
