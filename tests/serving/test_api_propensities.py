"""The API process logs the policy, position and propensity of every impression, with exploration on and off."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from recsys_assets.contract.exploration import slot_propensities
from tests.api_support import RedisServer, api_env, read_segments

pytestmark = pytest.mark.integration


def _lists(url: str, users: list[str], k: int) -> list[dict]:
    out = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for user in users:
            r = client.get(f"/v1/users/{user}/recommendations", params={"k": k})
            assert r.status_code == 200, r.text
            out.append(r.json())
    return out


def test_impressions_carry_policy_position_and_propensity(
    storage: Path, redis_server: RedisServer, start_api, tmp_path: Path
) -> None:
    redis_server.client().flushdb()
    k, depth, share = 5, 15, 0.5
    explored_dir, greedy_dir = tmp_path / "explored", tmp_path / "greedy"
    env = api_env(storage, redis_server.url, RECSYS_CACHE_TTL_SECONDS="300")
    explored = start_api(
        {**env, "RECSYS_EVENTS_DIR": str(explored_dir), "RECSYS_EXPLORATION": f'{{"share": {share}, "depth": {depth}}}'}
    )
    users = [str(u) for u in range(1, 121)]
    served = _lists(explored.url, users, k)
    explored.stop()
    rows = [r for r in read_segments(explored_dir) if r["event_type"] == "impression"]
    assert len(rows) == k * len(users)
    by_list: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_list[r["recommendation_id"]].append(r)
    last = slot_propensities(k, depth, share, depth)[k - 1]
    allowed_last = {round(float(p), 9) for p in last[last > 0]}
    moved = 0
    for body in served:
        logged = sorted(by_list[body["recommendation_id"]], key=lambda r: int(r["value"]))
        assert body["policy"] == f"champion:{body['model_version']}:slot{share:g}x{depth}"
        assert [r["policy"] for r in logged] == [body["policy"]] * k
        assert [int(r["value"]) for r in logged] == [it["rank"] for it in body["items"]] == list(range(1, k + 1))
        assert [r["item_id"] for r in logged] == [it["item_id"] for it in body["items"]]
        assert [float(r["propensity"]) for r in logged] == pytest.approx([it["propensity"] for it in body["items"]])
        assert [float(r["propensity"]) for r in logged[:-1]] == [1.0] * (k - 1)
        assert round(float(logged[-1]["propensity"]), 9) in allowed_last
        moved += float(logged[-1]["propensity"]) < last[k - 1] - 1e-9
    # with share 0.5 over 10 draws, about 45% of lists show a deeper item in the last slot
    assert 0.25 * len(users) < moved < 0.65 * len(users)

    # exploration off (the default): the top-k, each impression logged with propensity 1
    greedy = start_api({**env, "RECSYS_EVENTS_DIR": str(greedy_dir)})
    plain = _lists(greedy.url, users[:20], k)
    greedy.stop()
    rows = [r for r in read_segments(greedy_dir) if r["event_type"] == "impression"]
    assert {float(r["propensity"]) for r in rows} == {1.0}
    assert {r["policy"] for r in rows} == {f"champion:{plain[0]['model_version']}:greedy"}
    # the explored lists kept the model's first k-1 items in order
    for body, base in zip(served[:20], plain, strict=True):
        assert [it["item_id"] for it in body["items"][:-1]] == [it["item_id"] for it in base["items"][:-1]]
