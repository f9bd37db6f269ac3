"""The doubly robust estimate of a candidate's clicks per list, and its interval (`lib/off_policy.py`).

Public: `doubly_robust` (-> `DoublyRobust`, whose `estimate` gives the value and interval), `SHRINK`.

The reward model is a click's probability as an item's rate times its user's factor, each shrunk to the
overall rate; it is cross-fitted (the model of one half of the lists is fitted on the other half). Per list:
the model's value of the candidate's items that can earn a click, plus the inverse-propensity-weighted
residual of the logged impressions the candidate's list holds.

The interval resamples whole users (lists, in a log without users) with Poisson(1) weights, the bootstrap of
Chamandy et al., "Estimating uncertainty for massive data streams" (Google, 2012), and fits the reward model
again in every replicate. A bootstrap of the per-list values alone leaves out both the model's own
uncertainty (a user's clicks move the item rates every other list is valued with) and the correlation of one
user's lists, which can err either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

SHRINK = 10.0  # pseudo-impressions at the overall click rate in the reward model


def _shrunk_rates(codes: np.ndarray, reward: np.ndarray, weight: np.ndarray, size: int, overall: float) -> np.ndarray:
    """Each code's weighted click rate, shrunk to `overall` by `SHRINK` pseudo-impressions (a code with no
    impression gets `overall`)."""
    clicks = np.bincount(codes, weights=weight * reward, minlength=size)
    shown = np.bincount(codes, weights=weight, minlength=size)
    return (clicks + SHRINK * overall) / (shown + SHRINK)


def _reward_model(
    item: np.ndarray, user: np.ndarray | None, reward: np.ndarray, weight: np.ndarray, sizes: tuple[int, int]
) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """A click's probability as an item's rate times its user's factor (the user's rate over the overall one),
    each shrunk to the overall rate, fitted on impressions with `weight` (0 leaves one out); without users,
    the item's rate. Items and users are integer codes below `sizes`."""
    total = float(weight.sum())
    overall = float(weight @ reward) / total if total > 0 else 0.0
    item_rate = _shrunk_rates(item, reward, weight, sizes[0], overall)
    factor = None
    if user is not None and overall > 0:
        factor = _shrunk_rates(user, reward, weight, sizes[1], overall) / overall

    def predict(items: np.ndarray, users: np.ndarray | None) -> np.ndarray:
        rates = item_rate[items] if factor is None or users is None else item_rate[items] * factor[users]
        return np.minimum(rates, 1.0)

    return predict


@dataclass
class DoublyRobust:
    """What the doubly robust estimate needs, as integer codes: the impressions (item, user, list, reward,
    whether the candidate's list holds the item, propensity, whether the reward model may learn from it) and
    the (list, item) pairs of the candidate's items that can earn a click."""

    item: np.ndarray
    user: np.ndarray | None
    slate: np.ndarray
    reward: np.ndarray
    in_list: np.ndarray
    pscore: np.ndarray
    learn: np.ndarray
    pair_slate: np.ndarray
    pair_item: np.ndarray
    slate_user: np.ndarray | None
    sizes: tuple[int, int]
    n: int

    def per_list(self, row_weight: np.ndarray) -> np.ndarray:
        """Each list's estimate, cross-fitted: the reward model of one half of the lists is fitted on the
        other half's impressions, each weighted by `row_weight`."""
        list_fold = np.arange(self.n) % 2
        row_fold = list_fold[self.slate]
        out = np.zeros(self.n)
        for f in (0, 1):
            model = _reward_model(
                self.item, self.user, self.reward, row_weight * ((row_fold != f) & self.learn), self.sizes
            )
            pairs = list_fold[self.pair_slate] == f
            at = self.pair_slate[pairs]
            value = model(self.pair_item[pairs], None if self.slate_user is None else self.slate_user[at])
            out += np.bincount(at, weights=value, minlength=self.n)
            rows = row_fold == f
            q = model(self.item[rows], None if self.user is None else self.user[rows])
            residual = self.in_list[rows] * (self.reward[rows] - q) / self.pscore[rows]
            out += np.bincount(self.slate[rows], weights=residual, minlength=self.n)
        return out

    def estimate(self, alpha: float, n_boot: int, seed: int) -> dict[str, float]:
        """The value, and a percentile interval from resampling whole users (lists without users), each with
        a Poisson(1) weight, the reward model fitted again in every replicate: so it carries the model's
        uncertainty and one user's correlated lists."""
        value = float(self.per_list(np.ones(len(self.slate))).mean())
        cluster = np.arange(self.n) if self.slate_user is None else self.slate_user
        n_clusters = int(cluster.max()) + 1 if len(cluster) else 0
        if self.n < 2 or n_clusters < 2:
            return {"value": value, "ci_low": value, "ci_high": value}
        rng = np.random.default_rng(seed)
        replicates = np.empty(n_boot)
        for b in range(n_boot):
            list_weight = rng.poisson(1.0, n_clusters).astype(np.float64)[cluster]
            total = list_weight.sum()
            if total == 0:
                replicates[b] = value
                continue
            replicates[b] = float(list_weight @ self.per_list(list_weight[self.slate])) / total
        low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
        return {"value": value, "ci_low": float(low), "ci_high": float(high)}


def doubly_robust(
    logged: pd.DataFrame,
    slate: np.ndarray,
    slate_codes: np.ndarray,
    item: np.ndarray,
    reward: np.ndarray,
    in_list: np.ndarray,
    pscore: np.ndarray,
    learn: np.ndarray,
    eligible: Mapping[str, set[str]],
) -> DoublyRobust:
    """The doubly robust estimate of a candidate on `logged` impressions (sorted by list and position; `slate`
    their list codes, `slate_codes` the lists' ids), with the items of each list that can earn a click
    (`eligible`) and the impressions the reward model may learn from (`learn`)."""
    pairs = [(s, it) for s, rec in enumerate(slate_codes.tolist()) for it in eligible[rec]]
    pair_slate = np.fromiter((p[0] for p in pairs), np.int64, len(pairs))
    items, codes = np.unique(
        np.concatenate([item, np.asarray([p[1] for p in pairs], dtype=object)]).astype(str), return_inverse=True
    )
    user = slate_user = None
    n_users = 0
    if "user_id" in logged:
        user_ids, user = np.unique(logged["user_id"].astype(str).to_numpy(), return_inverse=True)
        n_users = len(user_ids)
        slate_user = pd.Series(user).groupby(slate).first().to_numpy()
    return DoublyRobust(
        item=codes[: len(item)],
        user=user,
        slate=slate,
        reward=reward,
        in_list=in_list.astype(np.float64),
        pscore=pscore,
        learn=learn.astype(bool),
        pair_slate=pair_slate,
        pair_item=codes[len(item) :],
        slate_user=slate_user,
        sizes=(len(items), n_users),
        n=len(slate_codes),
    )
