"""`docs/integration.md` against the code it describes: every operation of the committed OpenAPI document,
every error status, the default event weights, limits and rate limit, and the Python client's methods."""

from __future__ import annotations

import json
import re

from recsys_assets.contract.settings import DEFAULT_EVENT_WEIGHTS, Settings
from serving.client import OPERATIONS
from serving.controllers.responses import DESCRIPTIONS
from serving.schemas import MAX_BATCH
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "integration.md").read_text(encoding="utf-8")


def test_every_operation_and_client_method_is_documented() -> None:
    spec = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    operations = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert operations == set(OPERATIONS)
    for operation_id, method in OPERATIONS.items():
        assert f"`{operation_id}`" in DOC, operation_id
        assert f"api.{method}(" in DOC or operation_id in ("reloadModel", "getHealth", "getMetrics"), method
    for path in spec["paths"]:
        assert path.split("{")[0] in DOC, path


def test_errors_weights_and_limits_match_the_code() -> None:
    table = re.findall(r"^\| (\d{3}) \|", DOC, flags=re.M)
    assert sorted(int(code) for code in table) == sorted(DESCRIPTIONS)
    for event_type, weight in DEFAULT_EVENT_WEIGHTS.items():
        assert f"| `{event_type}` | {weight:g} |" in DOC, event_type
    defaults = Settings.model_fields
    assert f"(default {defaults['rate_limit_per_minute'].default:,})" in DOC
    assert f"`max_json_depth` ({defaults['max_json_depth'].default})" in DOC
    assert defaults["max_body_bytes"].default == 1024 * 1024 and "(1 MiB)" in DOC
    assert f"1 to {MAX_BATCH:,}" in DOC
    assert f"`idempotency_ttl_seconds` ({defaults['idempotency_ttl_seconds'].default // 86400} days)" in DOC
