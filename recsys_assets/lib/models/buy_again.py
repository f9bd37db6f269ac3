"""BuyAgain: the user's own past items first, then the most popular ones (the "buy it again" list).

An item the user had scores by its time-decayed frequency (each event's weight halved every
`half_life_days` before the end of training) times the item's repurchase rate (the share of its
users who came back to it, smoothed towards 1/2 with one pseudo-repeat and one pseudo-non-repeat);
every other item follows by training popularity. It is measured on the repeat evaluation setting
(seen items allowed); on the discovery setting, where seen items are hidden, it is a popularity list.

Bhagat, Muralidharan, Lobzhanidze, Vishwanath, "Buy It Again: Modeling Repeat Purchase
Recommendations" (KDD 2018): per-item repeat propensity times the user's own purchase history;
Anderson, Kumar, Tomkins, Vassilvitskii, "The Dynamics of Repeat Consumption" (WWW 2014): recency
dominates what people consume again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.scoring import Component, Scorer
from recsys_assets.lib.evaluation.batched import DEFAULT_EVALUATION, ranked_lists, sample_users
from recsys_assets.lib.evaluation.metrics import evaluate_topk
from recsys_assets.lib.models.base import ProtocolData, TrainData

NAME = "BuyAgain"


def buy_again_component(data: TrainData, half_life_days: float | None) -> Component:
    """The `repeat` scoring component of `data`'s training events (see `contract.scoring`)."""
    ev = data.events
    users, items = ev["user_idx"].to_numpy(), ev["item_idx"].to_numpy()
    weight = ev["weight"].to_numpy(np.float64)
    if half_life_days and len(ev):
        age = (ev["timestamp"].max() - ev["timestamp"]).dt.total_seconds().to_numpy() / 86400
        weight = weight * 0.5 ** (age / half_life_days)
    shape = (data.n_users, data.n_items)
    recency = sp.csr_matrix((weight.astype(np.float32), (users, items)), shape=shape)
    recency.sum_duplicates()
    counts = sp.csr_matrix((np.ones(len(ev), dtype=np.float32), (users, items)), shape=shape)
    counts.sum_duplicates()
    counts = counts.tocsc()
    pairs = np.diff(counts.indptr).astype(np.float64)
    # users who had the item more than once, per item
    cols = np.repeat(np.arange(data.n_items), np.diff(counts.indptr))
    again = np.bincount(cols[counts.data > 1], minlength=data.n_items).astype(np.float64)
    rate = (again + 1.0) / (pairs + 2.0)
    return Component(
        "repeat",
        {
            "recency": recency,
            "repurchase_rate": rate.astype(np.float32),
            "popularity": pairs.astype(np.float32),
        },
        {"half_life_days": float(half_life_days or 0.0)},
    )


@dataclass
class BuyAgainModel:
    """The user's own items by decayed frequency x repurchase rate, then popularity.

    Fitted on a protocol's split, the half-life is the one of `half_lives` (None: no decay) that ranks
    the validation part best on the repeat setting (NDCG@10, seen items allowed); on a training part
    alone, `half_life_days` is used as given.
    """

    half_life_days: float | None = 30.0
    half_lives: tuple[float | None, ...] = (None, 7.0, 30.0, 90.0)
    name: str = NAME
    family = "native"
    lists: ClassVar[None] = None  # ranks through `score` (`Recommender.lists`)
    search_seconds: ClassVar[float] = 0.0  # its half-life search is not reported apart from training

    def fit(self, data: TrainData | ProtocolData) -> BuyAgainModel:
        valid = data.valid_truth if isinstance(data, ProtocolData) else None
        train = data.data if isinstance(data, ProtocolData) else data
        if valid is not None and valid.nnz:
            self.half_life_days = self._best_half_life(train, valid)
        self.component = buy_again_component(train, self.half_life_days)
        self.scorer = Scorer({"buy_again": self.component}, {"buy_again": 1.0})
        self.history = train.matrix
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        return self.scorer.score_many(self.history[user_idx], np.asarray(user_idx))  # equal to the one-user path

    def params(self) -> dict[str, object]:
        return {"half_life_days": self.half_life_days}

    def _best_half_life(self, train: TrainData, valid: sp.csr_matrix) -> float | None:
        # the evaluation's user sample, scored a batch at a time: all users' dense scores at once would
        # be users x items (40k x 100k float64 = 32 GB on a 1M-event shop log)
        conf = DEFAULT_EVALUATION
        users = sample_users(np.flatnonzero(np.diff(valid.indptr) > 0), conf.users, conf.seed)
        best: tuple[float, float | None] = (-1.0, self.half_life_days)
        for half_life in self.half_lives:
            component = buy_again_component(train, half_life)
            lists = ranked_lists(
                lambda batch, c=component: c.score_many(train.matrix[batch], batch),
                users,
                10,
                train.n_items,
                memory_mb=conf.batch_memory_mb,
            )
            res = evaluate_topk(lists, valid[users], ks=(10,))
            value = float(res.loc[res["metric"] == "ndcg", "value"].iloc[0])
            if value > best[0]:
                best = (value, half_life)
        return best[1]
