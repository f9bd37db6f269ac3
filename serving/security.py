"""API keys: `RECSYS_API_KEYS` parsed once, and the guards that require a scope.

`RECSYS_API_KEYS="k1:events,k2:admin,k3"`: `k1` may post events, `k2` may call admin endpoints,
`k3` (no scope) may do both. A request without a known key gets 401, a known key without the
scope 403. Guards run before the body is read, so a refused request stores nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler

SCOPES: tuple[str, ...] = ("events", "admin")
HEADER = "X-API-Key"
SECURITY_SCHEME = "apiKey"


@dataclass(frozen=True)
class ApiKeys:
    scopes_by_key: dict[str, frozenset[str]]

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        keys: dict[str, set[str]] = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, sep, scope = part.rpartition(":")
            if not sep:
                key, scopes = scope, set(SCOPES)
            elif scope in SCOPES and key:
                scopes = {scope}
            else:
                raise ValueError(f"RECSYS_API_KEYS: {part!r} is not `key` or `key:scope` with scope in {SCOPES}")
            keys.setdefault(key, set()).update(scopes)
        return cls({k: frozenset(v) for k, v in keys.items()})

    def scopes(self, presented: str | None) -> frozenset[str] | None:
        """The scopes of a presented key, None if it is not a key (compared in constant time)."""
        if not presented:
            return None
        found = None
        for key, scopes in self.scopes_by_key.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = scopes
        return found


def requires(scope: str) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    """A guard letting through requests whose `X-API-Key` has `scope`."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        keys: ApiKeys = connection.app.state.api_keys
        scopes = keys.scopes(connection.headers.get(HEADER))
        if scopes is None:
            raise NotAuthorizedException(f"a valid {HEADER} header is required")
        if scope not in scopes:
            raise PermissionDeniedException(f"this API key lacks the {scope!r} scope")

    return guard
