"""A Python client of the recommendation API: one typed method per endpoint, retries on 429 and 503.

    from serving.client import RecsysClient

    with RecsysClient("http://127.0.0.1:8000", api_key="...") as api:
        recs = api.recommendations("42", k=10)
        api.post_events([{"user_id": "42", "item_id": recs.items[0].item_id, "event_type": "click",
                          "recommendation_id": recs.recommendation_id}])

Results are the API's own response types (`serving.schemas`, msgspec structs): a missing or mistyped field
fails to decode, a field added by a newer API is ignored. Errors raise `ApiError` with the status,
the API's `detail` and the request id to quote in a report.

Retries: a 429 (rate limit) or 503 (no model yet, or the event log cannot be written) is retried after the
response's `Retry-After` (seconds or an HTTP date), else after an exponential backoff with jitter, at most
`retries` times and never longer than `max_wait` seconds in one wait; a connection error is retried the
same way. Both are safe for events: 429 and 503 mean nothing was stored, and the client gives every event
without an `event_id` a new one, so an event that did arrive before a connection dropped is answered as a
duplicate rather than stored twice. Each call sends one `X-Request-ID` (yours or a new one), the same on
every retry, so the API's log lines of all its attempts share it.

It needs httpx and msgspec (both in the `api` extra) and nothing of the API's server side.
"""

from __future__ import annotations

import email.utils
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from serving.schemas import (
    EventIn,
    EventsAccepted,
    Health,
    ModelInfo,
    Readiness,
    Recommendations,
    SimilarItems,
)

T = TypeVar("T")
# an event as the API's struct or as a plain dict of its fields
EventBody = EventIn | Mapping[str, Any]

RETRY_STATUSES = frozenset({429, 503})
REQUEST_ID_HEADER = "X-Request-ID"
API_KEY_HEADER = "X-API-Key"
# the OpenAPI operation each method calls (tests check that every served operation has one)
OPERATIONS = {
    "getRecommendations": "recommendations",
    "getSimilarItems": "similar_items",
    "postEvents": "post_events",
    "getModel": "model",
    "reloadModel": "reload_model",
    "getHealth": "health",
    "getReady": "ready",
    "getMetrics": "metrics",
}


class ApiError(Exception):
    """An answer other than success, after any retries: `status_code`, the API's `detail`, the `request_id`."""

    def __init__(self, status_code: int, detail: str, request_id: str | None, body: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {detail} (request id {request_id})")
        self.status_code = status_code
        self.detail = detail
        self.request_id = request_id
        self.body = body


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RecsysClient:
    """The API at `base_url`; `api_key` is needed by `post_events` (scope `events`) and `reload_model` (`admin`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0 or backoff < 0 or max_wait < 0:
            raise ValueError("retries, backoff and max_wait must be >= 0")
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self._sleep = sleep

    # --- endpoints --------------------------------------------------------------------------------------

    def recommendations(
        self,
        user_id: str,
        k: int = 10,
        *,
        category: str | None = None,
        exclude_seen: bool = True,
        request_id: str | None = None,
    ) -> Recommendations:
        """`GET /v1/users/{user_id}/recommendations`: ranked items with reasons (cold start for new users).
        Send `recommendation_id` back with the user's clicks and purchases so they count for this list."""
        params: dict[str, Any] = {"k": k, "exclude_seen": str(exclude_seen).lower()}
        if category is not None:
            params["category"] = category
        path = f"/v1/users/{_segment(user_id)}/recommendations"
        return self._call("GET", path, Recommendations, params=params, request_id=request_id)

    def similar_items(self, item_id: str, k: int = 10, *, request_id: str | None = None) -> SimilarItems:
        """`GET /v1/items/{item_id}/similar`: the items most similar to one item."""
        path = f"/v1/items/{_segment(item_id)}/similar"
        return self._call("GET", path, SimilarItems, params={"k": k}, request_id=request_id)

    def post_events(
        self,
        events: EventIn | Mapping[str, Any] | Iterable[EventIn | Mapping[str, Any]],
        *,
        request_id: str | None = None,
    ) -> EventsAccepted:
        """`POST /v1/events`: one event or a batch (1 to 1,000); returns once they are durably logged. Events
        without an `event_id` get one here, which makes the call safe to retry."""
        single = isinstance(events, EventIn | Mapping)
        items: list[EventBody] = [events] if isinstance(events, EventIn | Mapping) else list(events)
        body = [_with_event_id(e) for e in items]
        content = msgspec.json.encode(body[0] if single else body)
        return self._call(
            "POST",
            "/v1/events",
            EventsAccepted,
            content=content,
            headers={"Content-Type": "application/json"},
            request_id=request_id,
        )

    def model(self, *, request_id: str | None = None) -> ModelInfo:
        """`GET /v1/model`: the champion and challenger this worker serves, and the last artifact it refused."""
        return self._call("GET", "/v1/model", ModelInfo, request_id=request_id)

    def reload_model(self, *, request_id: str | None = None) -> ModelInfo:
        """`POST /v1/admin/reload` (admin key): re-read the champion pointer now, on the worker that answers."""
        return self._call("POST", "/v1/admin/reload", ModelInfo, request_id=request_id)

    def health(self) -> Health:
        """`GET /health`: the process is alive (never retried: a probe reports what it sees)."""
        return self._call("GET", "/health", Health, retry=False)

    def ready(self) -> Readiness:
        """`GET /ready`: whether a model is loaded; a 503 is an answer here (status `not ready`), not an error."""
        return self._call("GET", "/ready", Readiness, retry=False, ok=(200, 503))

    def metrics(self) -> str:
        """`GET /metrics`: the Prometheus exposition text (all workers')."""
        return self._call("GET", "/metrics", str, retry=False)

    # --- plumbing ---------------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        result: type[T],
        *,
        retry: bool = True,
        ok: tuple[int, ...] = (200, 202),
        request_id: str | None = None,
        **kwargs: Any,
    ) -> T:
        headers = {**kwargs.pop("headers", {}), REQUEST_ID_HEADER: request_id or uuid.uuid4().hex}
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError:
                if not retry or attempt >= self.retries:
                    raise
                self._sleep(self._wait(attempt, None))
                attempt += 1
                continue
            if response.status_code in ok:
                if result is str:
                    return response.text  # type: ignore[return-value]
                return msgspec.json.decode(response.content, type=result)
            if retry and response.status_code in RETRY_STATUSES and attempt < self.retries:
                self._sleep(self._wait(attempt, response.headers.get("Retry-After")))
                attempt += 1
                continue
            raise _error(response, headers[REQUEST_ID_HEADER])

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        told = retry_after_seconds(retry_after)
        if told is not None:
            return min(told, self.max_wait)
        # exponential backoff with full jitter: clients that failed together do not come back together
        return min(self.max_wait, self.backoff * 2**attempt * (0.5 + random.random() / 2))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RecsysClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _segment(value: str) -> str:
    # ids hold only characters a path segment carries unencoded (serving.schemas.ID_RULE); anything else
    # is encoded so the API answers 400 for it, not another route
    return quote(str(value), safe="")


def _with_event_id(event: EventIn | Mapping[str, Any]) -> dict[str, Any] | EventIn:
    if isinstance(event, EventIn):
        return event if event.event_id is not None else msgspec.structs.replace(event, event_id=uuid.uuid4().hex)
    body = dict(event)
    if body.get("event_id") is None:
        body["event_id"] = uuid.uuid4().hex
    return body


def _error(response: httpx.Response, request_id: str) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    detail = body.get("detail") if isinstance(body, dict) else None
    return ApiError(
        response.status_code,
        str(detail or response.reason_phrase or body),
        response.headers.get(REQUEST_ID_HEADER, request_id),
        body,
    )
