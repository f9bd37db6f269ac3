"""The API's `exclude_seen` default follows `evaluation_target` (discovery: hide what the user had; repeat and
blended: the buy-again list may show it), and a request's own `exclude_seen` still wins. The served model is
BuyAgain on a small basket log, so a user's own items are at the top whenever they are allowed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import TestClient

from recsys_assets.contract.artifact import ServingArtifact
from recsys_assets.contract.settings import Settings
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models.buy_again import BuyAgainModel
from recsys_assets.lib.models.candidates import fit_candidate
from recsys_assets.lib.models.fitting import prepare, serving_artifact
from serving.app import create_app
from tests.api_support import API_KEYS, publish
from tests.lib.models.test_repeat_evaluation import basket_log


@pytest.fixture(scope="module")
def artifact() -> ServingArtifact:
    pdata = prepare(*basket_log(), S.TEMPORAL)
    art = serving_artifact(fit_candidate(BuyAgainModel(), pdata), pdata.data, "baskets")
    assert art is not None
    return art


def client_for(settings: Settings, tmp_path: Path, art: ServingArtifact, target: str) -> TestClient:
    root = tmp_path / f"storage-{target}"
    publish(root, art)
    api = settings.model_copy(
        update={
            "storage_uri": str(root),
            "events_dir": str(tmp_path / f"events-{target}"),
            "redis_url": "",
            "api_keys": API_KEYS,
            "rate_limit_per_minute": 0,
            "evaluation_target": target,
        }
    )
    return TestClient(create_app(api))


@pytest.fixture
def clients(settings: Settings, tmp_path: Path, artifact: ServingArtifact) -> Iterator[dict[str, TestClient]]:
    made = {t: client_for(settings, tmp_path, artifact, t) for t in ("discovery", "repeat", "blended")}
    for c in made.values():
        c.__enter__()
    yield made
    for c in made.values():
        c.__exit__(None, None, None)


def served(client: TestClient, user: str, **params: object) -> list[str]:
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 10, **params})
    assert r.status_code == 200, r.text
    return [it["item_id"] for it in r.json()["items"]]


def test_exclude_seen_follows_the_evaluation_target(clients: dict[str, TestClient], artifact: ServingArtifact) -> None:
    user = 3
    seen = set(artifact.item_ids[artifact.history[user].indices].tolist())
    uid = str(artifact.user_ids[user])
    own_first = artifact.topk_for_users(np.array([user]), 10, exclude_seen=False)[0]
    # discovery: nothing the user had, unless the request asks for it
    assert not set(served(clients["discovery"], uid)) & seen
    assert served(clients["discovery"], uid, exclude_seen="false") == artifact.item_ids[own_first].tolist()
    # repeat and blended: the buy-again list (the user's own items first), unless the request hides them
    for target in ("repeat", "blended"):
        assert served(clients[target], uid) == artifact.item_ids[own_first].tolist()
        assert set(served(clients[target], uid)[: len(seen)]) <= seen
        assert not set(served(clients[target], uid, exclude_seen="true")) & seen
    r = clients["repeat"].get(f"/v1/users/{uid}/recommendations", params={"k": 1}).json()["items"][0]
    assert (r["reason_kind"], r["evidence_item_id"]) == ("history", r["item_id"])
    assert r["reason"].startswith("you chose ") and r["reason"].endswith(" before")
