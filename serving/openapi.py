"""The API's OpenAPI document, as the API serves it at `/docs/openapi.json`, written for review and pinning:

    python -m serving.openapi > docs/openapi.json      # or: make openapi

Nothing is started: the app is built (no lifespan runs) and its schema rendered with sorted keys, so the
committed file changes exactly when the API's contract does (tests/serving/test_api_client.py compares them).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from recsys_assets.contract.settings import get_settings

REGENERATE = "python -m serving.openapi > docs/openapi.json"


def openapi_document() -> dict[str, Any]:
    """The schema of the app (it depends on no setting that differs between deployments)."""
    from serving.app import create_app

    return create_app(get_settings()).openapi_schema.to_schema()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    sys.stdout.write(render(openapi_document()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
