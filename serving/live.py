"""Live state shared by the API's worker processes: users' recent events, cached lists and the ids of
stored events, in Redis, with an in-process fallback while Redis is unreachable.

Keys (prefix `recsys:`):

* `ev:<user>`: the user's live events (msgpack `LiveEvent`s, newest last, capped, expiring
  `live_state_ttl_seconds` after the last one). Scores are recomputed from the artifact's history row
  plus these, so the request after an event reflects it, whichever worker serves it;
* `ver:<user>`: a counter incremented with every event of the user; it is part of every cached
  list's key, so an event invalidates all of that user's lists at once, with no race between a
  reader filling the cache and a writer invalidating it;
* `rec:<model version, k, category, exclude_seen, user>:<ver>`: a computed list, expiring after
  `cache_ttl_seconds`. One Lua call reads the version, then the list or the events: one round trip;
* `eid:<event_id>`: the ids of events durably in the event log, for `idempotency_ttl_seconds`. An id
  is looked up before its event is written and set (`SET NX`) only once the write is fsync'd, so
  a crash at any point never leaves an id marked stored whose event is not in the log: a retry is
  stored, never answered "duplicate" for an event that was lost. Two requests racing with one id
  may both write it; the one whose `SET NX` loses answers "duplicate" (true: it is in the log) and
  the pipeline keeps the first row of an id when it ingests the log;
* `ratelimit:<client>`: request counters (`serving/ratelimit.py`).

A request's events cost two round trips, whatever their number: one Lua call (`_STORED_LUA`)
reading their ids before the append, and after it one (`_COMMIT_LUA`) that marks the ids, drops the
events whose id another request marked first, and records the rest in their users' live state.
Ordering guarantees:

* events are pushed before their user's `ver:` is incremented. That is the one order the cache needs:
  a reader between the two (were they not atomic) would see the new events under the old version and
  cache a list that is, if anything, fresher than its key; the reverse order could cache a list
  without the new events under the new version, stale until the next event. A Lua script runs
  atomically, so no reader sees either half: `MULTI`/`EXEC` (five queued commands per user, each
  `QUEUED` reply parsed) is not needed on top of it;
* an id is marked only after its event is fsync'd (the script runs after the append), and an event
  enters live state in the same atomic step that marks its id, so no other request can see the id
  marked and the event absent from live state, or the reverse;
* a user's events enter their list in the order of the request, which is the order of the rows in
  the event log (one `os.write`); two requests of one user on two workers are ordered by which
  script runs first, as their rows are by which append runs first (each worker has its own segment).

Fallback: every worker also keeps the live events it accepted in memory (bounded LRU). A Redis
error opens a circuit breaker (one warning in the log): the worker then serves from its own memory,
without cache, dedupes event ids in memory and counts rate limits in memory, and retries Redis
every `RETRY_SECONDS`. On reconnection it first drops every pooled connection (those to a restarted
Redis are dead, and each would otherwise fail once more and trip the breaker again), then replays
what Redis missed: the events and ids accepted during the outage, or, when Redis restarted empty
(its `run_id` changed), every live event it holds.
Each event is held by the one worker that accepted it, so the replays of all workers add up to the
whole live state without duplicates. The durable event log, not Redis, is the record of truth: the
pipeline also drops duplicate event ids when it ingests the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from serving.schemas import LIVE_DECODER, LIVE_ENCODER, LiveEvent
from serving.telemetry import get_metrics

log = logging.getLogger(__name__)

PREFIX = "recsys:"
RETRY_SECONDS = 1.0
MAX_EVENTS_PER_USER = 500
MAX_LOCAL_USERS = 100_000
MAX_LOCAL_IDS = 1_000_000
SOCKET_TIMEOUT = 0.5

T = TypeVar("T")


class _Unavailable:
    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = _Unavailable()
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

# Version, then the cached list if asked for and present, else the live events.
_FETCH_LUA = """
local v = redis.call('GET', KEYS[1]) or '0'
if ARGV[1] ~= '' then
  local c = redis.call('GET', ARGV[1] .. v)
  if c then return {v, c} end
end
return {v, false, redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# Before the append: 1 per id marked stored, else 0. ARGV: the key prefix, the ids joined by spaces (one
# argument, as in `_COMMIT_LUA`). "1" marks a stored id; anything else (an older version's "0" claim)
# was never confirmed stored.
_STORED_LUA = """
local out = {}
for id in string.gmatch(ARGV[2], '%S+') do
  out[#out + 1] = redis.call('GET', ARGV[1] .. 'eid:' .. id) == '1' and 1 or 0
end
return out
"""

# After the append: mark the ids stored (SET NX) and record the events whose id was not marked first by
# another request. A request's whole batch travels in eight arguments, whatever its size (redis-py
# packs every argument in Python: three per event cost more than the rest of the request). ARGV: the
# key prefix, idempotency ttl, state ttl, events kept per user, the event ids and the user ids (each
# joined by spaces: the id rule has none), a msgpack array of (user's place, id's place or 0, length)
# per event, and the msgpack events one after the other. The keys are built here, like the cached
# list's in `_FETCH_LUA` (a standalone Redis, not a cluster). Returns 1/0 per id: 1 if this call
# marked it. Pushes go in slices: `unpack` has a stack limit.
_COMMIT_LUA = """
local prefix = ARGV[1]
local won, n = {}, 0
for id in string.gmatch(ARGV[5], '%S+') do
  n = n + 1
  won[n] = redis.call('SET', prefix .. 'eid:' .. id, '1', 'NX', 'EX', ARGV[2]) and 1 or 0
end
local names = {}
for u in string.gmatch(ARGV[6], '%S+') do names[#names + 1] = u end
local meta, blob, pos = cmsgpack.unpack(ARGV[7]), ARGV[8], 1
local users, order = {}, {}
for j = 1, #meta, 3 do
  local u, id, len = meta[j], meta[j + 1], meta[j + 2]
  if id == 0 or won[id] == 1 then
    local list = users[u]
    if not list then
      list = {}
      users[u] = list
      order[#order + 1] = u
    end
    list[#list + 1] = string.sub(blob, pos, pos + len - 1)
  end
  pos = pos + len
end
for _, u in ipairs(order) do
  local list, ev, ver = users[u], prefix .. 'ev:' .. names[u], prefix .. 'ver:' .. names[u]
  for i = 1, #list, 1000 do
    redis.call('RPUSH', ev, unpack(list, i, math.min(i + 999, #list)))
  end
  redis.call('LTRIM', ev, -tonumber(ARGV[4]), -1)
  redis.call('EXPIRE', ev, ARGV[3])
  redis.call('INCR', ver)
  redis.call('EXPIRE', ver, ARGV[3])
end
return won
"""
REPLAY_CHUNK = 1000


class RedisLink:
    """One async Redis client behind a circuit breaker; `run` returns `UNAVAILABLE` instead of failing."""

    def __init__(self, url: str | None) -> None:
        self.url = url or ""
        # no retries inside redis-py: the first error after a Redis restart must reach us, so the
        # restart is noticed and the live state replayed
        self.client: Redis | None = (
            Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            if url
            else None
        )
        if url and not HIREDIS_AVAILABLE:
            log.warning("hiredis is not installed: Redis replies are parsed in Python (install recsys[api])")
        self.up = False
        self.run_id: str | None = None
        self.on_reconnect: Callable[[bool], Awaitable[None]] | None = None
        self._retry_at = 0.0
        self._recovering = False
        self._warned = False

    @property
    def state(self) -> str:
        if self.client is None:
            return "disabled"
        return "up" if self.up else "down"

    async def connect(self) -> None:
        """First contact at start-up; a Redis that is not there yet only means starting in fallback."""
        if self.client is not None:
            await self._recover()

    async def run(self, op: Callable[[Redis], Awaitable[T]]) -> T | _Unavailable:
        if self.client is None:
            return UNAVAILABLE
        if not self.up and (self._recovering or time.monotonic() < self._retry_at or not await self._recover()):
            return UNAVAILABLE
        try:
            return await op(self.client)
        except OUTAGE_ERRORS as exc:
            self._mark_down(exc)
            return UNAVAILABLE
        except RedisError as exc:
            # Redis answered but refused (e.g. out of memory): this call falls back, the link stays up
            log.warning("Redis refused a command (%s: %s); answering from in-process state", type(exc).__name__, exc)
            return UNAVAILABLE

    async def check(self) -> None:
        """Periodic probe: notices an outage, a return, or a restart that emptied Redis."""
        if self.client is None:
            return
        if not self.up:
            if not self._recovering and time.monotonic() >= self._retry_at:
                await self._recover()
            return
        try:
            run_id = await self._run_id()
        except OUTAGE_ERRORS as exc:
            self._mark_down(exc)
            return
        if self.run_id is not None and run_id is not None and run_id != self.run_id:
            log.warning("Redis at %s restarted (run_id changed): replaying live state", self._where)
            self.up = False
            await self._recover()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    @property
    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]

    async def _run_id(self) -> str | None:
        """The server's run id, which changes when it restarts (None if INFO is not allowed)."""
        assert self.client is not None
        try:
            return (await self.client.info("server")).get("run_id")
        except ResponseError:
            return None

    async def _recover(self) -> bool:
        assert self.client is not None
        self._recovering = True
        try:
            # connections pooled before the outage may be dead (a restarted Redis closed them): one
            # would fail the next command and trip the breaker again; open fresh ones instead
            await self.client.connection_pool.disconnect(inuse_connections=False)
            run_id = await self._run_id()
            restarted = self.run_id is not None and run_id is not None and run_id != self.run_id
            if self.on_reconnect is not None:
                await self.on_reconnect(restarted)
            self.run_id = run_id
            self.up = True
            get_metrics().redis_up.set(1)
            if self._warned:
                log.warning("Redis at %s is back%s", self._where, " (restarted, empty)" if restarted else "")
                self._warned = False
            return True
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            return False
        finally:
            self._recovering = False

    def _mark_down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_SECONDS
        get_metrics().redis_up.set(0)
        if self.up or not self._warned:
            log.warning(
                "Redis at %s unreachable (%s: %s): serving from in-process state, retrying every %.0fs",
                self._where,
                type(exc).__name__,
                exc,
                RETRY_SECONDS,
            )
            self._warned = True
        self.up = False


@dataclass
class UserView:
    """What a request needs about one user: live events, or the cached list when there is one."""

    events: list[LiveEvent]
    cached: bytes | None
    cache_key: str | None


def _cache_prefix(model_version: str, k: int, category: str | None, exclude_seen: bool, user_id: str) -> str:
    # JSON of the parts: unambiguous whatever characters the ids hold
    parts = msgspec.json.encode([model_version, k, category or "", exclude_seen, user_id]).decode()
    return f"{PREFIX}rec:{parts}:"


class LiveState:
    """Users' live events, the list cache and the ids of stored events over a `RedisLink`."""

    def __init__(self, link: RedisLink, cache_ttl: int, idempotency_ttl: int, state_ttl: int) -> None:
        self.link = link
        self.cache_ttl = cache_ttl
        self.idempotency_ttl = idempotency_ttl
        self.state_ttl = state_ttl
        self._local: OrderedDict[str, list[LiveEvent]] = OrderedDict()
        self._pending: list[tuple[str, str | None, LiveEvent]] = []
        self._local_ids: OrderedDict[str, float] = OrderedDict()
        self._pending_ids: list[str] = []
        self._fetch = link.client.register_script(_FETCH_LUA) if link.client is not None else None
        self._commit = link.client.register_script(_COMMIT_LUA) if link.client is not None else None
        self._stored = link.client.register_script(_STORED_LUA) if link.client is not None else None
        link.on_reconnect = self._replay

    # --- events -----------------------------------------------------------------------------

    async def fetch(
        self, user_id: str, model_version: str, k: int, category: str | None, exclude_seen: bool
    ) -> UserView:
        """The user's live events, or a cached list computed from the same state."""
        prefix = _cache_prefix(model_version, k, category, exclude_seen, user_id) if self.cache_ttl else ""
        keys = [f"{PREFIX}ver:{user_id}", f"{PREFIX}ev:{user_id}"]
        assert self._fetch is not None or self.link.client is None
        result = await self.link.run(lambda r: self._fetch(keys=keys, args=[prefix], client=r))  # type: ignore[misc]
        if isinstance(result, _Unavailable):
            return UserView(events=list(self._local.get(user_id, ())), cached=None, cache_key=None)
        version = result[0].decode()
        key = f"{prefix}{version}" if prefix else None
        if len(result) == 2:
            return UserView(events=[], cached=result[1], cache_key=key)
        return UserView(events=[LIVE_DECODER.decode(raw) for raw in result[2]], cached=None, cache_key=key)

    async def store(self, key: str | None, value: bytes) -> None:
        if key is not None and self.cache_ttl:
            await self.link.run(lambda r: r.set(key, value, ex=self.cache_ttl))

    def _remember(self, user_id: str, ev: LiveEvent) -> None:
        events = self._local.get(user_id)
        if events is None:
            events = self._local[user_id] = []
            if len(self._local) > MAX_LOCAL_USERS:
                self._local.popitem(last=False)
        else:
            self._local.move_to_end(user_id)
        events.append(ev)
        if len(events) > MAX_EVENTS_PER_USER:
            del events[: len(events) - MAX_EVENTS_PER_USER]

    async def _replay(self, restarted: bool) -> None:
        """Give Redis back what it missed (called by the link before it reports Redis up again)."""
        assert self.link.client is not None
        if restarted:
            events = [(u, None, ev) for u, evs in self._local.items() for ev in evs]
            ids = list(self._local_ids)
        else:
            events, ids = [(u, None, ev) for u, _, ev in self._pending], list(self._pending_ids)
        # each part is cleared once Redis has it, so a replay cut short resumes without repeating it;
        # ids and events go separately: an id marked by another worker meanwhile must not drop its event
        for i in range(0, len(events), REPLAY_CHUNK):
            await self._commit_in_redis(self.link.client, [], events[i : i + REPLAY_CHUNK])
        self._pending.clear()
        for i in range(0, len(ids), REPLAY_CHUNK):
            await self._commit_in_redis(self.link.client, ids[i : i + REPLAY_CHUNK], [])
        self._pending_ids.clear()
        if events or ids:
            log.warning("replayed %d live events and %d event ids into Redis", len(events), len(ids))

    # --- idempotency ------------------------------------------------------------------------

    async def stored(self, event_ids: list[str]) -> list[bool]:
        """For each id, True if an event with it is already durably stored (a resent event)."""
        if not event_ids:
            return []
        now = time.monotonic()
        # without a Redis client `run` answers UNAVAILABLE without calling the script
        found = await self.link.run(lambda r: self._stored(args=[PREFIX, " ".join(event_ids)], client=r))  # type: ignore[misc]
        if isinstance(found, _Unavailable):
            return [self._known_locally(e, now) for e in event_ids]
        return [v == 1 or self._known_locally(e, now) for e, v in zip(event_ids, found, strict=True)]

    async def commit(self, events: Sequence[tuple[str, str | None, LiveEvent]]) -> set[str]:
        """After the append: mark the events' ids stored and add the events to their users' live state.

        `events` are (user id, event id or None, event), ids distinct. Returns the ids another request
        marked first: their events are in the log twice (ingestion keeps one) and are left out of live
        state here. One Lua call; without Redis, this worker's memory decides and Redis gets it later.
        """
        ids = [e for _, e, _ in events if e is not None]
        now = time.monotonic()
        result = await self.link.run(lambda r: self._commit_in_redis(r, ids, events))
        offline = isinstance(result, _Unavailable)
        won = [not self._known_locally(e, now) for e in ids] if isinstance(result, _Unavailable) else result
        lost = {e for e, first in zip(ids, won, strict=True) if not first}
        for event_id in ids:
            self._local_ids[event_id] = now + self.idempotency_ttl
            self._local_ids.move_to_end(event_id)
        while len(self._local_ids) > MAX_LOCAL_IDS:
            self._local_ids.popitem(last=False)
        kept = [(u, e, ev) for u, e, ev in events if e is None or e not in lost] if lost else events
        for user_id, _, ev in kept:
            self._remember(user_id, ev)
        if offline:
            self._pending_ids.extend(e for e in ids if e not in lost)
            self._pending.extend(kept)
        return lost

    async def _commit_in_redis(
        self, r: Redis, ids: list[str], events: Sequence[tuple[str, str | None, LiveEvent]]
    ) -> list[bool]:
        slot_of_id = {e: i for i, e in enumerate(ids, 1)}
        slot_of_user: dict[str, int] = {}
        meta: list[int] = []
        raws: list[bytes] = []
        for u, e, ev in events:
            raw = LIVE_ENCODER.encode(ev)
            meta += (slot_of_user.setdefault(u, len(slot_of_user) + 1), slot_of_id[e] if e else 0, len(raw))
            raws.append(raw)
        args: list[str | int | bytes] = [
            PREFIX,
            self.idempotency_ttl,
            self.state_ttl,
            MAX_EVENTS_PER_USER,
            " ".join(ids),
            " ".join(slot_of_user),
            LIVE_ENCODER.encode(meta),
            b"".join(raws),
        ]
        assert self._commit is not None
        won = await self._commit(keys=[], args=args, client=r)
        return [bool(x) for x in won]

    def _known_locally(self, event_id: str, now: float) -> bool:
        expiry = self._local_ids.get(event_id)
        return expiry is not None and expiry > now
