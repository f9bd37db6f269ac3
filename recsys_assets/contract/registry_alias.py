"""The champion as the MLflow model registry names it, asked over HTTP: what the API polls when a
registry URL is set (`registry_url` below), so an alias moved in the MLflow UI reaches
every worker within `model_poll_seconds`, without the sensor's interval in between.

Only the standard library: the API imports this module and never `mlflow`. One
`GET <registry>/api/2.0/mlflow/registered-models/alias?name=...&alias=champion` (MLflow's REST API)
returns the version the alias names with its tags; the promotion tagged each version it registered
with its artifact's folder (`recsys.model_version`) and its pointer (`recsys.pointer`), from which
the same pointer `lib/champion.sync_champion` writes to `artifacts/CHAMPION.json` is built here
(without the time of the sync). That file stays the API's fallback when the registry cannot answer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# The registered model the promotion registers every champion and challenger under (`lib/tracking.py`).
REGISTERED_MODEL = "recsys-recommender"
CHAMPION_ALIAS = "champion"
# Model-version tags written when the promotion registers a version (`lib/tracking.register_artifact`,
# `lib/champion.py`): the artifact's folder name under `artifacts/`, and the pointer it promoted.
TAG_MODEL_VERSION = "recsys.model_version"
TAG_POINTER = "recsys.pointer"
ALIAS_PATH = "/api/2.0/mlflow/registered-models/alias"


def registry_url(setting: str | None, tracking_uri: str | None) -> str | None:
    """The MLflow server the API asks (`Settings.registry_url`, else an http(s) `mlflow_tracking_uri`), or
    None (`none`, or a tracking store that is not a server): the API follows the pointer file only."""
    url = setting if setting is not None else tracking_uri
    if not url or url.strip().lower() == "none" or not url.startswith(("http://", "https://")):
        return None
    return url


class RegistryUnavailableError(OSError):
    """The registry did not answer (refused, timed out, 5xx, or not MLflow's JSON)."""


def alias_url(registry_url: str, model: str = REGISTERED_MODEL, alias: str = CHAMPION_ALIAS) -> str:
    query = urllib.parse.urlencode({"name": model, "alias": alias})
    return f"{registry_url.rstrip('/')}{ALIAS_PATH}?{query}"


def alias_version(
    registry_url: str, model: str = REGISTERED_MODEL, alias: str = CHAMPION_ALIAS, timeout: float = 2.0
) -> dict[str, Any] | None:
    """The registry version `alias` names: {"version", "tags": {key: value}}, or None when the model or
    the alias does not exist. `RegistryUnavailableError` when the registry cannot say."""
    request = urllib.request.Request(alias_url(registry_url, model, alias), headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        # MLflow answers 404 RESOURCE_DOES_NOT_EXIST for an unknown model or alias (400 in older servers)
        if exc.code in (400, 404):
            return None
        raise RegistryUnavailableError(f"{registry_url} answered {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise RegistryUnavailableError(f"{registry_url}: {type(exc).__name__}: {exc}") from exc
    mv = body.get("model_version") if isinstance(body, dict) else None
    if not isinstance(mv, dict) or "version" not in mv:
        raise RegistryUnavailableError(f"{registry_url}: no model_version in the answer")
    tags = {t.get("key"): t.get("value") for t in mv.get("tags") or [] if isinstance(t, dict)}
    return {"version": str(mv["version"]), "tags": tags}


def pointer_of(info: dict[str, Any]) -> dict[str, Any] | None:
    """The champion pointer of one registry version (`alias_version`), as `CHAMPION.json` holds it (the
    promotion's pointer tag, if any, with the artifact's folder, path and registry version; not the sync's
    time); None for a version with no `recsys.model_version` tag (nothing names its artifact)."""
    folder = info["tags"].get(TAG_MODEL_VERSION)
    if not folder:
        return None
    try:
        stored = json.loads(info["tags"].get(TAG_POINTER) or "{}")
    except ValueError:
        stored = {}
    pointer = {k: v for k, v in (stored if isinstance(stored, dict) else {}).items() if k != "promoted_at"}
    pointer.update(model_version=folder, path=["artifacts", folder], registry_version=info["version"])
    return pointer
