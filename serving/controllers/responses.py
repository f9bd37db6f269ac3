"""The error answers each operation can give, for its OpenAPI description (bodies: `ErrorBody`), and the
header naming the worker process that answered."""

from __future__ import annotations

import os

from litestar import Response
from litestar.datastructures import ResponseHeader
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


# which worker process answered (its pid): shows how clients' connections spread over the workers
WORKER_HEADER = "X-Worker-Pid"
WORKER_HEADERS = [
    ResponseHeader(
        name=WORKER_HEADER, documentation_only=True, description="The pid of the API worker process that answered"
    )
]


async def worker_header(response: Response) -> Response:
    response.headers[WORKER_HEADER] = str(os.getpid())
    return response
