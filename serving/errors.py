"""Domain errors of the API and the one table that turns them into HTTP errors.

Handlers and services raise these; `app.create_app` registers `domain_error_handler` for
`ServingError`, so each domain failure maps to exactly one status code here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from serving.schemas import ID_RULE, valid_id


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


class InvalidRequestError(ServingError):
    """A parameter or body breaks a rule of the API that its type alone does not say; `key` names it."""

    def __init__(self, key: str, message: str, source: str = "body", detail: str | None = None) -> None:
        super().__init__(detail or "Validation failed", [{"key": key, "message": message, "source": source}])


class InvalidEventError(InvalidRequestError):
    """An event is well-formed JSON of the right types but breaks a rule of the event-log contract."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message, "body", "Validation failed for POST /v1/events")


class UnsupportedMediaTypeError(ServingError):
    """The body is not declared as JSON."""


class EventLogUnavailableError(ServingError):
    """The event log could not be appended to; nothing was acknowledged."""


class ArtifactRejectedError(ServingError):
    """An admin reload found an artifact that cannot be served; the previous model keeps serving."""


# The exception-translation table: domain error -> HTTP status.
STATUS_BY_ERROR: dict[type[ServingError], int] = {
    ModelNotReadyError: HTTP_503_SERVICE_UNAVAILABLE,
    UnknownItemError: HTTP_404_NOT_FOUND,
    InvalidRequestError: HTTP_400_BAD_REQUEST,
    UnsupportedMediaTypeError: HTTP_415_UNSUPPORTED_MEDIA_TYPE,
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


def validation_error_handler(_: Request, exc: ValidationException) -> Response:
    extra = exc.extra if isinstance(exc.extra, list) else []
    return Response(
        {"status_code": HTTP_400_BAD_REQUEST, "detail": exc.detail, "extra": extra}, status_code=HTTP_400_BAD_REQUEST
    )


def check_path_id(name: str, value: str) -> str:
    """A path id must follow the id rule exactly, as a body's does (the pattern alone lets `\\n` end one)."""
    if not valid_id(value):
        raise InvalidRequestError(name, f"must be {ID_RULE}", source="path")
    return value
