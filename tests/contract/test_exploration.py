"""Exploration's propensities: each position's distribution sums to one, sampling follows it, and the
API's list keeps the model's order with the propensity of what it shows."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from recsys_assets.contract.exploration import ExplorationConfig, sample_slot, slot_propensities
from serving.exploration import explore
from serving.schemas import RecommendedItem


@pytest.mark.parametrize(("k", "ranked", "share", "depth"), [(10, 60, 0.5, 50), (5, 7, 1.0, 50), (3, 3, 0.3, 50)])
def test_each_position_shows_one_item_and_each_item_at_most_once(k: int, ranked: int, share: float, depth: int) -> None:
    probs = slot_propensities(k, ranked, share, depth)
    assert probs.shape == (min(k, ranked), ranked)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs.sum(axis=0).max() <= 1.0 + 1e-12
    # positions before the explored slot are the model's own
    np.testing.assert_array_equal(probs[: k - 1, : k - 1], np.eye(k - 1))


def test_sampled_lists_follow_the_logged_propensities() -> None:
    k, ranked, share, depth = 4, 12, 0.6, 8
    probs = slot_propensities(k, ranked, share, depth)
    rng = np.random.default_rng(7)
    n = 40_000
    counts = np.zeros_like(probs)
    for _ in range(n):
        ranks, logged = sample_slot(k, ranked, share, depth, rng)
        counts[np.arange(k), ranks] += 1
        # the logged propensity is the probability of that rank at that position
        np.testing.assert_allclose(logged, probs[np.arange(k), ranks])
    freq = counts / n
    # within 5 standard errors of every cell's probability
    se = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) <= 5 * se + 1e-12)
    # ranks beyond depth are never shown
    assert counts[:, depth:].sum() == 0


def _items(n: int) -> list[RecommendedItem]:
    return [RecommendedItem(str(i), i, float(-i), f"t{i}", [], "popular now", "popular") for i in range(1, n + 1)]


def test_the_served_list_renumbers_positions_and_carries_propensities() -> None:
    config = ExplorationConfig(share=1.0, depth=20)
    shown, policy = explore(_items(20), 5, "champion", "v1", config, np.random.default_rng(0))
    assert policy == "champion:v1:slot1x20"
    assert [it.rank for it in shown] == [1, 2, 3, 4, 5]
    assert [it.item_id for it in shown[:4]] == ["1", "2", "3", "4"]
    assert [it.propensity for it in shown[:4]] == [1.0] * 4
    assert shown[4].propensity == pytest.approx(1 / 16)
    # the challenger does not explore unless configured: the top-k with propensity 1
    greedy, policy = explore(_items(20), 5, "challenger", "v2", config)
    assert policy == "challenger:v2:greedy"
    assert [(it.item_id, it.propensity) for it in greedy] == [(str(i), 1.0) for i in range(1, 6)]


def test_a_bad_configuration_is_refused() -> None:
    with pytest.raises(ValidationError, match="share"):
        ExplorationConfig(share=1.5)
    with pytest.raises(ValidationError, match="arm"):
        ExplorationConfig(share=0.2, arms=())
