"""The error answers each operation can give, for its OpenAPI description (bodies: `ErrorBody`)."""

from __future__ import annotations

from litestar.openapi import ResponseSpec

from serving.schemas import ErrorBody

DESCRIPTIONS: dict[int, str] = {
    400: "Invalid parameters or body; `extra` names each field at fault (`[3].value`) and why",
    401: "No valid `X-API-Key` header",
    403: "The API key lacks the scope this operation needs",
    404: "The item is not in the served model's catalog",
    409: "The artifact the pointer names cannot be served; the previous model keeps serving",
    413: "The body is larger than `max_body_bytes` (1 MiB by default)",
    415: "The body is not declared as JSON (`Content-Type: application/json`, UTF-8)",
    429: "Past `rate_limit_per_minute` requests of this client in its current minute; `Retry-After` says when to retry",
    503: "No model loaded yet, or the event log cannot be written; `Retry-After` says when to retry",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    return {
        code: ResponseSpec(data_container=ErrorBody, description=DESCRIPTIONS[code], generate_examples=False)
        for code in codes
    }
