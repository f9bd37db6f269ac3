"""Domain errors of the API and the one table that turns them into HTTP errors.

Handlers and services raise these; `app.create_app` registers `domain_error_handler` for
`ServingError`, so each domain failure maps to exactly one status code here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.utils.scope.state import ScopeState

from serving.schemas import EventsIn


class ServingError(Exception):
    """Base of every domain error; `detail` is what the client reads."""

    def __init__(self, detail: str, extra: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ModelNotReadyError(ServingError):
    """No model is loaded yet (no champion published, or every artifact so far was rejected)."""


class UnknownItemError(ServingError):
    """The item is not in the serving model's catalog."""


class InvalidEventError(ServingError):
    """An event is well-formed JSON of the right types but breaks a rule of the event-log contract."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__("Validation failed for POST /v1/events", [{"key": key, "message": message, "source": "body"}])


class EventLogUnavailableError(ServingError):
    """The event log could not be appended to; nothing was acknowledged."""


class ArtifactRejectedError(ServingError):
    """An admin reload found an artifact that cannot be served; the previous model keeps serving."""


# The exception-translation table: domain error -> HTTP status.
STATUS_BY_ERROR: dict[type[ServingError], int] = {
    ModelNotReadyError: HTTP_503_SERVICE_UNAVAILABLE,
    UnknownItemError: HTTP_404_NOT_FOUND,
    InvalidEventError: HTTP_400_BAD_REQUEST,
    EventLogUnavailableError: HTTP_503_SERVICE_UNAVAILABLE,
    ArtifactRejectedError: HTTP_409_CONFLICT,
}


def status_for(exc: ServingError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return HTTP_503_SERVICE_UNAVAILABLE


def domain_error_handler(_: Request, exc: ServingError) -> Response:
    status = status_for(exc)
    body: dict[str, Any] = {"status_code": status, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    headers = {"Retry-After": "5"} if status == HTTP_503_SERVICE_UNAVAILABLE else None
    return Response(body, status_code=status, headers=headers)


# Request bodies whose validation errors are re-decoded to name the offending field with its full path.
# Litestar reports only the top-level parameter ("data") for an error inside a JSON array; msgspec's
# own message has the path (`$[3].value`), so it is recovered from the cached body.
PRECISE_BODY_TYPES: dict[tuple[str, str], Any] = {("POST", "/v1/events"): EventsIn}
_NAMED_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def validation_error_handler(request: Request, exc: ValidationException) -> Response:
    extra = exc.extra if isinstance(exc.extra, list) else []
    target = PRECISE_BODY_TYPES.get((request.method, request.scope.get("path_template", "")))
    body = ScopeState.from_scope(request.scope).body
    if target is not None and isinstance(body, bytes):
        try:
            msgspec.json.decode(body, type=target)
        except msgspec.ValidationError as err:
            message, _, at = str(err).partition(" - at `$")
            path = at.rstrip("`").lstrip(".")
            # a missing or unknown field is named in the message, not in the path
            if named := _NAMED_FIELD.search(message):
                path = f"{path}.{named.group(1)}" if path else named.group(1)
            extra = [{"key": path or "body", "message": message, "source": "body"}]
        except msgspec.DecodeError:
            pass
    return Response(
        {"status_code": HTTP_400_BAD_REQUEST, "detail": exc.detail, "extra": extra}, status_code=HTTP_400_BAD_REQUEST
    )
