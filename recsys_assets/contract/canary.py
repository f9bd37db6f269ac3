"""The canary and the holdout: what the pipeline and the API share about the challenger's share of users.

A challenger that passes the offline check is not made champion at once: `artifacts/CHALLENGER.json`
names it with `role: "canary"` and a `share` of users, and the API serves it to that share. The pipeline's
canary gate (`lib/canary.py`, run by `canary_sensor`) watches both arms' lists in the API's event log with
an always-valid sequential test (`lib/sequential.py`) and promotes the canary, withdraws it, or lets it run.
After a promotion the previous champion keeps a `holdout` share for a while, under the same test with the
roles turned round, and a significant drop of the new champion rolls it back.

The pointer's fields read by the API (every other field is for people and the pipeline):

* `path`: the artifact folder under the storage root;
* `role`: `canary`, `holdout`, or `ab` (a runner-up an operator may serve with `RECSYS_AB_CHALLENGER_SHARE`);
  `withdrawn` and `ended` close the split;
* `share`: the share of users the challenger serves. With it the pointer decides the split (0 closes it);
  without it (a pointer written before the canary, or role `ab`) `RECSYS_AB_CHALLENGER_SHARE` does;
* `salt`: each canary and holdout assigns users anew, so one user is not the canary's subject every time.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["canary", "holdout", "ab", "withdrawn", "ended"]
# roles whose pointer serves users
OPEN_ROLES: tuple[str, ...] = ("canary", "holdout")
# the controller's state and the last look's evidence, next to the pointers
CANARY_STATE: tuple[str, ...] = ("artifacts", "CANARY.json")


def in_challenger_arm(user_id: str, share: float, salt: str = "") -> bool:
    """Stable assignment: the same user lands in the same arm for a given share and salt (the canary's id)."""
    if share <= 0:
        return False
    key = f"ab:{salt}:{user_id}" if salt else f"ab:{user_id}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


class CanaryConfig(BaseModel):
    """The canary gate (`RECSYS_CANARY__SHARE=0.1`, or JSON in `RECSYS_CANARY`)."""

    model_config = ConfigDict(frozen=True)

    share: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of users a challenger serves as a canary before it may become champion; 0: the "
        "offline check promotes at once (no online gate).",
    )
    holdout_share: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Share of users the previous champion keeps after a promotion, to catch a drop; 0: none.",
    )
    refresh: Literal["direct", "canary"] = Field(
        default="direct",
        description="A retrain whose winner is the champion's own model (new data, the same model): `direct` "
        "promotes it at once, under the holdout; `canary` sends it through the canary like any challenger.",
    )
    alpha: float = Field(
        default=0.05, gt=0, lt=1, description="Error allowed over every look, split among the metrics tested."
    )
    margin: float = Field(
        default=0.05, ge=0, lt=1, description="How much worse (relative to the champion) still counts as not worse."
    )
    min_lists: int = Field(default=500, ge=1, description="Lists per arm before any verdict.")
    max_lists: int = Field(
        default=50_000, ge=1, description="Lists of the smaller arm after which an undecided canary stops."
    )
    holdout_max_lists: int = Field(
        default=20_000, ge=1, description="Holdout lists after which the holdout ends with the new champion kept."
    )
    attribution_minutes: int = Field(
        default=120,
        ge=1,
        description="How long after a list is served a click or conversion naming it still counts for the gate "
        "(the gate remembers the lists served in this time, so its state grows with it).",
    )
    conversion: bool = Field(
        default=True,
        description="Test conversion per list as well as CTR (once either arm has a conversion): the canary must "
        "not be worse on either.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> CanaryConfig:
        if self.max_lists < self.min_lists or self.holdout_max_lists < self.min_lists:
            raise ValueError(
                f"canary: max_lists ({self.max_lists}) and holdout_max_lists ({self.holdout_max_lists}) "
                f"must be at least min_lists ({self.min_lists})"
            )
        return self
