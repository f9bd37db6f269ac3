"""Exploration applied to a served list: which items the exploring slot shows, and each item's propensity.

The sampling and the probabilities are `recsys_assets.contract.exploration`'s, so the pipeline's
off-policy estimates read the same definition the API served with.
"""

from __future__ import annotations

import numpy as np
from msgspec import structs

from recsys_assets.contract.exploration import ExplorationConfig, policy_id, sample_slot
from serving.schemas import RecommendedItem

_RNGS: dict[int | None, np.random.Generator] = {}


def _rng(seed: int | None) -> np.random.Generator:
    """One generator per process and seed (a seeded replay draws the same sequence in each run)."""
    if seed not in _RNGS:
        _RNGS[seed] = np.random.default_rng(seed)
    return _RNGS[seed]


def depth(config: ExplorationConfig, arm: str, k: int) -> int:
    """How many ranked items a list of `k` needs from the model: `config.depth` when it explores, else `k`."""
    return config.depth if config.explores(arm, k) else k


def explore(
    ranked: list[RecommendedItem],
    k: int,
    arm: str,
    model_version: str,
    config: ExplorationConfig,
    rng: np.random.Generator | None = None,
) -> tuple[list[RecommendedItem], str]:
    """The list shown (at most `k` of `ranked`, ranks renumbered by position, propensities set) and its policy id."""
    tag = config.tag(arm, k)
    policy = policy_id(arm, model_version, tag)
    if not config.explores(arm, k):
        return ranked[:k], policy
    ranks, propensities = sample_slot(k, len(ranked), config.share, config.depth, rng or _rng(config.seed))
    shown = [
        structs.replace(ranked[r], rank=pos, propensity=float(p))
        for pos, (r, p) in enumerate(zip(ranks.tolist(), propensities.tolist(), strict=True), start=1)
    ]
    return shown, policy
