"""Fixtures of the API tests that run it as a process: one redis-server per module, a storage folder
with the ml-100k champion, and API processes stopped at the end of each test."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import ApiProcess, RedisServer, movielens_artifact, publish


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    publish(root, movielens_artifact())
    return root


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator:
    procs: list[ApiProcess] = []

    def start(env: dict[str, str], workers: int = 1, via_module: bool = False) -> ApiProcess:
        proc = ApiProcess(env, tmp_path / f"api-{len(procs)}.log", workers=workers, via_module=via_module)
        procs.append(proc)
        return proc.start()

    yield start
    for proc in procs:
        proc.stop()
