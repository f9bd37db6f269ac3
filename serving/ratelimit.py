"""Rate limiting: `rate_limit_per_minute` requests per client and minute, shared by every worker.

A client is its API key when it sends a valid one (a service posting from several addresses has one
budget; clients behind one address with their own keys have theirs), else its address, which is the
connection's peer unless the peer is a proxy named in `forwarded_allow_ips` (uvicorn then takes the
address from `X-Forwarded-For`; `python -m serving` sets that up). An unknown key counts as no key,
so inventing keys buys nothing.

The count is one Lua call in Redis (`INCR`, and `EXPIRE` when it starts a window), atomic, so
concurrent requests on any number of workers never read the same count (Litestar's middleware read
and wrote it back in two steps, and leaked under concurrency). A window starts with a client's first
request and lasts 60 s; past the limit the answer is 429 with `Retry-After` (seconds until the
window ends). While Redis is unreachable each worker counts in its own memory.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict

import msgspec
from litestar.enums import ScopeType
from litestar.status_codes import HTTP_429_TOO_MANY_REQUESTS
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from serving.live import PREFIX, UNAVAILABLE, RedisLink
from serving.security import HEADER, ApiKeys

WINDOW_SECONDS = 60
MAX_LOCAL_CLIENTS = 100_000

_COUNT_LUA = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


class RateLimiter:
    """Counts requests per client in fixed 60 s windows, in Redis (or in memory while it is down)."""

    def __init__(self, link: RedisLink, limit: int, keys: ApiKeys) -> None:
        self.link = link
        self.limit = limit
        self.keys = keys
        self._script = link.client.register_script(_COUNT_LUA) if link.client is not None else None
        self._local: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def client_of(self, scope: Scope) -> str:
        for name, value in scope.get("headers", ()):
            if name == HEADER.lower().encode():
                presented = value.decode("latin-1")
                if self.keys.scopes(presented) is not None:
                    # a digest: keys must not appear in Redis
                    return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:32]
                break
        client = scope.get("client")
        return f"ip:{client[0] if client else 'unknown'}"

    async def hit(self, client: str) -> tuple[int, int]:
        """(requests of this client in its current window, this one included; seconds until it ends)."""
        key = f"{PREFIX}ratelimit:{client}"
        script = self._script
        if script is not None:
            result = await self.link.run(lambda r: script(keys=[key], args=[WINDOW_SECONDS], client=r))
            if result is not UNAVAILABLE:
                count, ttl = result  # type: ignore[misc]
                return int(count), max(1, int(ttl))
        return self._hit_locally(client)

    def _hit_locally(self, client: str) -> tuple[int, int]:
        now = time.monotonic()
        count, ends = self._local.get(client, (0, 0.0))
        if ends <= now:
            count, ends = 0, now + WINDOW_SECONDS
        self._local[client] = (count + 1, ends)
        self._local.move_to_end(client)
        while len(self._local) > MAX_LOCAL_CLIENTS:
            self._local.popitem(last=False)
        return count + 1, max(1, math.ceil(ends - now))


class RateLimitMiddleware:
    """ASGI middleware answering 429 past the limit; paths matching `exclude` are never counted."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, exclude: list[str]) -> None:
        self.app = app
        self.limiter = limiter
        self.exclude = re.compile("|".join(exclude)) if exclude else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or (self.exclude is not None and self.exclude.search(scope["path"])):
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        count, reset = await limiter.hit(limiter.client_of(scope))
        remaining = max(0, limiter.limit - count)
        headers = [
            (b"ratelimit-limit", str(limiter.limit).encode()),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        ]
        if count > limiter.limit:
            await _too_many(send, limiter.limit, reset, headers)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _too_many(send: Send, limit: int, reset: int, headers: list[tuple[bytes, bytes]]) -> None:
    body = msgspec.json.encode(
        {
            "status_code": HTTP_429_TOO_MANY_REQUESTS,
            "detail": f"Too many requests: the limit is {limit} per minute per client; retry in {reset} s",
        }
    )
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": HTTP_429_TOO_MANY_REQUESTS,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(reset).encode()),
            *headers,
        ],
    }
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(start)
    await send(end)
