"""Schemathesis against the live OpenAPI schema of a running API: valid and invalid requests generated
from the schema for every operation, and not one answered with a server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.api_support import API_KEY, API_KEYS, ApiProcess, RedisServer, movielens_artifact, publish

pytestmark = pytest.mark.integration
EXAMPLES = 160  # per operation and generation mode: about 1,100 cases in all
MIN_CASES = 1000


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    root = tmp_path_factory.mktemp("schema")
    publish(root / "data", movielens_artifact())
    redis = RedisServer().start()
    env = {
        "RECSYS_STORAGE_URI": str(root / "data"),
        "RECSYS_REDIS_URL": redis.url,
        "RECSYS_API_KEYS": API_KEYS,
        "RECSYS_RATE_LIMIT_PER_MINUTE": "0",
        "OMP_NUM_THREADS": "1",
    }
    api = ApiProcess(env, Path(root / "api.log"))
    try:
        yield api.start()
    finally:
        api.stop()
        redis.stop()


def test_no_server_error_on_generated_requests(live_api: ApiProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api.url}/docs/openapi.json")
    # an events key, so event bodies get past the guard and their validation is exercised
    key = {"X-API-Key": API_KEY}
    session = requests.Session()
    total = 0
    per_operation: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        has_inputs = bool(operation.path_parameters or operation.query or operation.body)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                nonlocal total
                response = case.call(session=session, headers=key, timeout=10)
                total += 1
                per_operation[case.operation.label] = per_operation.get(case.operation.label, 0) + 1
                if response.status_code >= 500:
                    failures.append(f"{response.status_code} {case.as_curl_command()}: {response.text[:300]}")

            run()
    assert not failures, "\n".join(failures[:10]) + f"\n(server log tail)\n{live_api.log()[-3000:]}"
    print(f"schemathesis: {total} cases", per_operation)
    assert total >= MIN_CASES, per_operation
    assert "unhandled error" not in live_api.log()
