"""The serving champion follows the MLflow registry: promote, roll back, and keep the pointer in step.

The `champion` alias of the registered model is the source of truth. The API reads
`artifacts/CHAMPION.json` (the pointer) every `model_poll_seconds`, so the pointer is the API's cache
of the alias, and `sync_champion` rewrites it whenever the alias names another version. Every path
that moves the alias calls it: the promotion asset, `python -m recsys_assets champion promote
VERSION | rollback` (at once), and `champion_alias_sensor` (for a move made in the MLflow UI, within
the sensors' interval). With a registry URL the API also asks MLflow for the alias on each poll
(`contract/registry_alias.py`, over HTTP, without importing mlflow), so a move in the UI is served
within `model_poll_seconds` and the sensor only rewrites the cache and records the change; MLflow's
availability stays out of the request path (the poll falls back to the pointer).

Every change is appended to the `champion_changes` table (when, who or what, from and to which
registry version and artifact, why); the console's Models page shows it, and `rollback` reads it to
find the champion before the current one.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import tempfile
from typing import Any

import pandas as pd

from recsys_assets.contract import registry_alias
from recsys_assets.contract.artifact import (
    CHALLENGER_POINTER,
    CHAMPION_POINTER,
    MANIFEST,
    load_artifact,
    read_from_storage,
    read_pointer,
    write_to_storage,
)
from recsys_assets.contract.events import CHAMPION_CHANGES
from recsys_assets.contract.storage import Storage
from recsys_assets.lib.tracking import CHAMPION, MlflowTracking

# Model-version tag holding the pointer the promotion wrote (data_until, NDCG@10, ...), so a later
# promotion or rollback of that version writes the same pointer again.
TAG_POINTER = registry_alias.TAG_POINTER
CHANGE_COLUMNS = (
    "at",
    "actor",
    "action",
    "from_version",
    "to_version",
    "from_model",
    "to_model",
    "reason",
)
# `action`: who moved the alias, as this module knows it
PIPELINE, PROMOTE, ROLLBACK, REGISTRY = "pipeline", "promote", "rollback", "registry"


def default_actor() -> str:
    """Who runs a command: the `RECSYS_ACTOR` variable, else the login name and host."""
    return os.environ.get("RECSYS_ACTOR") or f"{getpass.getuser()}@{os.uname().nodename}"


# ---------------------------------------------------------------------------------------------
# The change log
# ---------------------------------------------------------------------------------------------


def read_changes(store: Storage) -> pd.DataFrame:
    """Every recorded champion change, oldest first (an empty table before the first)."""
    name = f"{CHAMPION_CHANGES}.parquet"
    if not store.exists(name):
        return pd.DataFrame({c: pd.Series(dtype="object") for c in CHANGE_COLUMNS})
    return store.read_table(name)


def record_change(store: Storage, change: dict[str, Any]) -> pd.DataFrame:
    """Append one change (`CHANGE_COLUMNS`; `at` defaults to now) to `champion_changes`."""
    row = {c: str(change.get(c) or "") for c in CHANGE_COLUMNS if c != "at"}
    row["at"] = pd.Timestamp(change.get("at") or dt.datetime.now(dt.UTC))
    earlier = read_changes(store)
    new = pd.DataFrame([row])
    table = pd.concat([earlier, new], ignore_index=True) if len(earlier) else new
    table["at"] = pd.to_datetime(table["at"], utc=True)
    table = table[list(CHANGE_COLUMNS)].astype({c: "string" for c in CHANGE_COLUMNS if c != "at"})
    store.write_table(table, f"{CHAMPION_CHANGES}.parquet")
    return table


def previous_champion(store: Storage, current: str) -> str | None:
    """The registry version that served before `current` became champion, skipping rollbacks, so
    rolling back twice goes two champions back rather than forth again."""
    changes = read_changes(store)
    for row in changes.iloc[::-1].itertuples(index=False):
        if row.to_version == current and row.action != ROLLBACK and row.from_version:
            return str(row.from_version)
    return None


# ---------------------------------------------------------------------------------------------
# Pointers
# ---------------------------------------------------------------------------------------------


def _artifact_parts(info: dict) -> tuple[str, ...]:
    model_version = info["tags"].get("recsys.model_version")
    if not model_version:
        raise LookupError(
            f"registry version {info['version']} has no `recsys.model_version` tag: it was not registered by "
            "the promotion (`MlflowTracking.register_artifact`), so nothing says which artifact it is"
        )
    return ("artifacts", model_version)


def pointer_for(tracking: MlflowTracking, store: Storage, info: dict, verify: bool = False) -> dict:
    """The champion pointer of one registry version, with its artifact under `artifacts/<model_version>/`
    (downloaded from MLflow when storage lacks it). `verify` reads the artifact and checks it."""
    parts = _artifact_parts(info)
    if not store.exists(*parts, MANIFEST):
        with tempfile.TemporaryDirectory() as tmp:
            art = load_artifact(tracking.download_version(info["version"], tmp))
        write_to_storage(art, store, *parts)
    elif verify:
        read_from_storage(store, *parts)
    stored = info["tags"].get(TAG_POINTER)
    pointer: dict[str, Any] = json.loads(stored) if stored else {}
    if not pointer:
        manifest = json.loads(store.read_bytes(*parts, MANIFEST))
        trained_until = manifest.get("trained_until", "")
        pointer = {
            "model": info["tags"].get("recsys.model", manifest.get("model_name", "")),
            "trained_until": trained_until,
            # what the promotion check compares on: without the promotion's record, what it trained on
            "data_until": trained_until,
        }
    pointer.update(
        model_version=parts[1],
        path=list(parts),
        registry_version=str(info["version"]),
        promoted_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    return pointer


def write_pointer(store: Storage, pointer: dict, which: tuple[str, ...] = CHAMPION_POINTER) -> None:
    store.write_text(json.dumps(pointer, indent=2), *which)


# ---------------------------------------------------------------------------------------------
# Moving the champion
# ---------------------------------------------------------------------------------------------


def sync_champion(
    tracking: MlflowTracking, store: Storage, actor: str = "", action: str = REGISTRY, reason: str = ""
) -> dict | None:
    """Rewrite the pointer when the `champion` alias names another version than it; the change made,
    or None when they agree (or there is no alias)."""
    info = tracking.alias_version(CHAMPION)
    if info is None:
        return None
    current = read_pointer(store) or {}
    if str(current.get("registry_version", "")) == info["version"]:
        return None
    pointer = pointer_for(tracking, store, info)
    write_pointer(store, pointer)
    change = {
        "actor": actor or "MLflow registry (the alias was moved outside recsys: the MLflow UI or API)",
        "action": action,
        "from_version": current.get("registry_version", ""),
        "to_version": info["version"],
        "from_model": current.get("model_version", ""),
        "to_model": pointer["model_version"],
        "reason": reason or f"the `{CHAMPION}` alias names version {info['version']}",
    }
    record_change(store, change)
    return change


def promote(
    tracking: MlflowTracking, store: Storage, version: str, actor: str, reason: str = "", action: str = PROMOTE
) -> dict | None:
    """Make registry `version` the champion: check its artifact, move the alias, rewrite the pointer
    and record it. None when it already is the champion."""
    info = tracking.version_info(str(version))
    if info is None:
        raise LookupError(
            f"registered model {tracking.registered_model!r} has no version {version!r}; "
            "`python -m recsys_assets champion status` lists the versions"
        )
    current = tracking.alias_version(CHAMPION)
    pointer = read_pointer(store) or {}
    if current is not None and current["version"] == info["version"] == str(pointer.get("registry_version", "")):
        return None
    # the artifact is checked (and copied from MLflow if need be) before anything moves
    pointer_for(tracking, store, info, verify=True)
    tracking.set_alias(CHAMPION, info["version"])
    return sync_champion(tracking, store, actor=actor, action=action, reason=reason or f"{action} by {actor}")


def rollback(tracking: MlflowTracking, store: Storage, actor: str, reason: str = "") -> dict:
    """Make the champion before the current one the champion again (`previous_champion`)."""
    current = tracking.alias_version(CHAMPION)
    if current is None:
        raise LookupError(
            f"registered model {tracking.registered_model!r} has no `{CHAMPION}` alias: nothing to roll back"
        )
    target = previous_champion(store, current["version"])
    if target is None:
        raise LookupError(
            f"no champion before version {current['version']} is recorded in `{CHAMPION_CHANGES}`; "
            "name one: `python -m recsys_assets champion promote VERSION`"
        )
    change = promote(tracking, store, target, actor, reason or f"rollback of version {current['version']}", ROLLBACK)
    assert change is not None  # the target differs from the current champion
    return change


def status(tracking: MlflowTracking, store: Storage) -> dict[str, Any]:
    """The alias, the pointer the API follows, whether they agree, the rollback target and the challenger."""
    alias = tracking.alias_version(CHAMPION)
    pointer = read_pointer(store)
    version = alias["version"] if alias else None
    return {
        "alias_version": version,
        "alias_model": alias["tags"].get("recsys.model_version") if alias else None,
        "pointer": pointer,
        "in_sync": bool(alias and pointer and str(pointer.get("registry_version")) == version),
        "rollback_to": previous_champion(store, version) if version else None,
        "challenger": read_pointer(store, CHALLENGER_POINTER),
        "changes": read_changes(store).tail(10),
    }
