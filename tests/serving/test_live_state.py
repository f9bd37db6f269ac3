"""The live state's Redis side: one Lua call per request marks ids and records events (its ordering
guarantees), the replay after an outage, and hiredis parsing the replies."""

import asyncio
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from serving.live import MAX_EVENTS_PER_USER, PREFIX, LiveState, RedisLink
from serving.schemas import LiveEvent
from tests.api_support import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def ev(item: int) -> LiveEvent:
    return LiveEvent(item_id=str(item), event_type="view", value=None, ts=1_700_000_000.0 + item)


def run(coro):
    return asyncio.run(coro)


async def _state(url: str) -> tuple[RedisLink, LiveState]:
    link = RedisLink(url)
    live = LiveState(link, cache_ttl=300, idempotency_ttl=3600, state_ttl=3600)
    await link.connect()
    return link, live


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.client().flushdb()
    return redis_server.url


def test_commit_marks_ids_records_in_order_and_drops_ids_marked_first(redis_url: str) -> None:
    async def go() -> tuple:
        link, live = await _state(redis_url)
        try:
            first = await live.commit(
                [("u1", "a", ev(1)), ("u2", None, ev(2)), ("u1", "b", ev(3)), ("u1", None, ev(4))]
            )
            # "a" was marked by the call above: its event here is a duplicate and stays out of live state
            second = await live.commit([("u1", "a", ev(5)), ("u1", "c", ev(6))])
            u1 = await live.fetch("u1", "m1", 10, None, True)
            u2 = await live.fetch("u2", "m1", 10, None, True)
            stored = await live.stored(["a", "b", "c", "d"])
            return first, second, u1, u2, stored
        finally:
            await link.close()

    first, second, u1, u2, stored = run(go())
    assert first == set() and second == {"a"}
    assert [e.item_id for e in u1.events] == ["1", "3", "4", "6"]
    assert [e.item_id for e in u2.events] == ["2"]
    # the version counts the calls that recorded events of the user: it keys the cached lists
    assert u1.cache_key is not None and u1.cache_key.endswith(":2")
    assert u2.cache_key is not None and u2.cache_key.endswith(":1")
    assert stored == [True, True, True, False]


def test_an_event_invalidates_the_cached_lists_of_its_user_only(redis_url: str) -> None:
    async def go() -> tuple:
        link, live = await _state(redis_url)
        try:
            await live.commit([("u1", None, ev(1)), ("u2", None, ev(1))])
            views = [await live.fetch(u, "m1", 10, None, True) for u in ("u1", "u2")]
            for view in views:
                await live.store(view.cache_key, b"cached")
            hits = [(await live.fetch(u, "m1", 10, None, True)).cached for u in ("u1", "u2")]
            await live.commit([("u1", "x", ev(2))])
            after = [(await live.fetch(u, "m1", 10, None, True)).cached for u in ("u1", "u2")]
            return hits, after
        finally:
            await link.close()

    hits, after = run(go())
    assert hits == [b"cached", b"cached"]
    assert after == [None, b"cached"]


def test_a_large_batch_is_capped_per_user_and_keeps_the_newest(redis_url: str) -> None:
    async def go():
        link, live = await _state(redis_url)
        try:
            n = MAX_EVENTS_PER_USER + 1500
            await live.commit([("big", f"id{i}", ev(i)) for i in range(n)])
            view = await live.fetch("big", "m1", 10, None, True)
            ttl = await link.client.ttl(f"{PREFIX}ev:big")
            return n, view, ttl
        finally:
            await link.close()

    n, view, ttl = run(go())
    assert [e.item_id for e in view.events] == [str(i) for i in range(n - MAX_EVENTS_PER_USER, n)]
    assert 0 < ttl <= 3600


def test_events_accepted_while_redis_is_down_are_replayed_once_it_returns(redis_server: RedisServer) -> None:
    async def go():
        link, live = await _state(redis_server.url)
        try:
            redis_server.stop()
            lost_offline = await live.commit([("u9", "off-1", ev(1)), ("u9", "off-1b", ev(2))])
            dup_offline = await live.commit([("u9", "off-1", ev(3))])
            redis_server.start()
            link._retry_at = 0.0  # the breaker's retry time, not waited for in a test
            await link.check()
            view = await live.fetch("u9", "m1", 10, None, True)
            stored = await live.stored(["off-1", "off-1b", "never"])
            return lost_offline, dup_offline, view, stored
        finally:
            await link.close()

    lost_offline, dup_offline, view, stored = run(go())
    assert lost_offline == set() and dup_offline == {"off-1"}
    assert [e.item_id for e in view.events] == ["1", "2"]
    assert stored == [True, True, False]


def test_hiredis_is_in_the_api_extra_its_lock_and_parses_replies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    api = {Requirement(r).name: Requirement(r) for r in project["optional-dependencies"]["api"]}
    assert "hiredis" in api, "hiredis is not in the api extra of pyproject.toml"
    lock = (ROOT / "infra" / "requirements" / "api.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lock if "==" in line and not line.startswith("#"))
    if "hiredis" in pins:  # the lock is regenerated from the environment (python infra/roles.py lock)
        assert api["hiredis"].specifier.contains(pins["hiredis"]), (
            f"hiredis=={pins['hiredis']} outside {api['hiredis']}"
        )
    else:
        pytest.skip("infra/requirements/api.txt not regenerated since hiredis joined the api extra")


def test_the_api_redis_client_parses_replies_with_hiredis() -> None:
    from redis._parsers import _AsyncHiredisParser

    link = RedisLink("redis://127.0.0.1:1/0")
    assert link.client is not None
    assert link.client.connection_pool.connection_kwargs.get("parser_class", _AsyncHiredisParser) is _AsyncHiredisParser
    connection = link.client.connection_pool.make_connection()
    assert isinstance(connection._parser, _AsyncHiredisParser)
