"""Exploration in served lists and the propensity logged with every impression.

With exploration off (the default) a list is the model's top-k, and every impression is logged with
propensity 1: the policy shows that item at that position with certainty. With `share > 0` the
exploring arms replace the list's last slot, on a `share` of their lists, with an item drawn
uniformly from the ranks `k .. depth` of the same ranking (the greedy rank-k item included); the first
k-1 positions stay the model's own. For the item shown at position p the logged propensity is the
probability that the policy puts that item at p:

* p < k: 1;
* p = k: `(1 - share) + share / M` for the rank-k item, `share / M` for any other, where M is the
  number of ranks drawn from (`min(depth, ranked) - k + 1`).

Every item appears at one position only, so the propensity of an item at its position is also its
probability of being in the list at all, and the list's own probability is the product over positions.
Off-policy estimates (`lib/off_policy.py`) weight clicks by these; an item the policy could not have
shown (beyond `depth`) has no weight to give, which is why `depth` bounds what a candidate can be
judged on.

`policy_id` names the policy that served a list (arm, model version and exploration), so a reader of
the log can tell lists served by different policies apart.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Arm = Literal["champion", "challenger"]
GREEDY = "greedy"


class EstimateConfig(BaseModel):
    """How the retrain's `online_estimates` judges candidates on the champion's logged lists."""

    model_config = ConfigDict(frozen=True)

    max_lists: int = Field(default=20_000, ge=100, description="The latest champion lists used (bounds its time).")
    min_lists: int = Field(default=200, ge=1, description="Fewer champion lists than this: no estimate.")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - confidence level of the intervals.")
    bootstrap: int = Field(default=2_000, ge=100, description="Bootstrap resamples per interval.")
    exclude_seen: bool = Field(
        default=True, description="Whether the candidate's lists leave out the user's items (as the API was asked)."
    )
    once_per_user: bool = Field(
        default=True, description="An item earns a click in the candidate's first list showing it to a user only."
    )
    seed: int = 0


class ExplorationConfig(BaseModel):
    """Exploration of the served lists (`RECSYS_EXPLORATION__SHARE=0.5`, or JSON in `RECSYS_EXPLORATION`)."""

    model_config = ConfigDict(frozen=True)

    share: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of an exploring arm's lists that explore.")
    depth: int = Field(default=50, ge=2, le=1000, description="The explored slot draws from ranks k .. depth.")
    arms: tuple[Arm, ...] = Field(default=("champion",), description="The A/B arms that explore.")
    seed: int | None = Field(default=None, description="Seed of each API process's draws (None: fresh entropy).")
    estimates: EstimateConfig = Field(default_factory=EstimateConfig)

    @model_validator(mode="after")
    def _arms_known(self) -> ExplorationConfig:
        if self.share > 0 and not self.arms:
            raise ValueError("exploration: share > 0 needs at least one arm in `arms` (champion, challenger)")
        return self

    def explores(self, arm: str, k: int) -> bool:
        """Whether a list of `k` items served by `arm` explores (k >= depth leaves nothing to draw from)."""
        return self.share > 0 and arm in self.arms and 1 <= k < self.depth

    def tag(self, arm: str, k: int) -> str:
        return f"slot{self.share:g}x{self.depth}" if self.explores(arm, k) else GREEDY


def policy_id(arm: str, model_version: str, tag: str) -> str:
    """The policy that served a list: `<arm>:<model version>:<exploration>`."""
    return f"{arm}:{model_version}:{tag}"


def slot_propensities(k: int, ranked: int, share: float, depth: int) -> np.ndarray:
    """P[p, r]: the probability that position p (0-based, < k) shows the item of rank r (0-based, < ranked).

    Each row sums to 1 (a position always shows one item) and each column to at most 1 (an item is shown
    at most once). `ranked` is how many items the model ranked for this request."""
    n_pos = min(k, ranked)
    probs = np.zeros((n_pos, ranked))
    probs[np.arange(n_pos), np.arange(n_pos)] = 1.0
    pool = min(depth, ranked) - k + 1
    if share > 0 and n_pos == k and pool > 1:
        last = k - 1
        probs[last, last : last + pool] = share / pool
        probs[last, last] += 1.0 - share
    return probs


def sample_slot(
    k: int, ranked: int, share: float, depth: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The ranks shown (0-based, in position order) and each one's propensity, for one list."""
    probs = slot_propensities(k, ranked, share, depth)
    ranks = np.arange(probs.shape[0])
    if len(ranks) == k and probs[-1, -1] < 1.0:
        row = probs[-1]
        ranks[-1] = int(rng.choice(len(row), p=row))
    return ranks, probs[np.arange(len(ranks)), ranks]
