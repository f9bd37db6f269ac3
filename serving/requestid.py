"""Request ids: the caller's `X-Request-ID` (or a new one) is the id of every log line of its request and
comes back in the response's `X-Request-ID`, so a client's report and the API's logs meet on one id."""

from __future__ import annotations

import re
import uuid

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from recsys_assets.contract.logs import REQUEST_ID

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
# what is kept from a caller's id: printable, no spaces or quotes (it lands in logs and headers), bounded
_VALID = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The caller's id when it is safe to log and echo, else a new random one (32 hex digits)."""
    for name, value in scope.get("headers", ()):
        if name == _HEADER_KEY and _VALID.match(value):
            return value.decode()
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Sets the request id for the request's context (the log filter reads it) and adds it to the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = REQUEST_ID.set(request_id)
        header = (_HEADER_KEY, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", []) if h[0].lower() != _HEADER_KEY]
                message = {**message, "headers": [*kept, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
