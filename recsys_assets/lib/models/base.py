"""The one interface every recommender follows, and the data they are fitted on.

All models work in one index space: rows of the `users` table and rows of the `items` table (the
id maps of `interaction_matrix`). Items of the catalog with no interaction and users with no
training event are part of that space, so cold-start cases are scored like any other.

`TrainData` is a training part in that space; `ProtocolData` is one protocol's whole split (what
`fitting.prepare` builds and every model is fitted on); `Recommender` is the interface: fit on a
`ProtocolData`, score users, export the serving artifact's scorer. `recommend` ranks through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_assets.contract.scoring import Scorer
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.evaluation.batched import ranked_lists

# A model's own top-k lists of `users` with each one's row of items to hide (or None), equal to ranking its
# scores (`ranked_lists`): a model that ranks without a dense score row (popularity: one order) offers one.
ListsFn = Callable[[np.ndarray, int, sp.csr_matrix | None], np.ndarray]


@dataclass(frozen=True)
class TrainData:
    """Training events of one protocol, in the shared index space.

    `matrix` is users x items with summed event weights (training part only); `events` is the
    training part of `interactions` with `user_idx` and `item_idx` columns added, sorted by time;
    `items` and `users` are the full tables in index order.
    """

    matrix: sp.csr_matrix
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    @classmethod
    def build(cls, train: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> TrainData:
        """Index a training part by the row order of `items` and `users`."""
        uidx = pd.Series(np.arange(len(users)), index=users["user_id"].to_numpy())
        iidx = pd.Series(np.arange(len(items)), index=items["item_id"].to_numpy())
        events = train.copy()
        events["user_idx"] = uidx.reindex(events["user_id"]).to_numpy()
        events["item_idx"] = iidx.reindex(events["item_id"]).to_numpy()
        if events[["user_idx", "item_idx"]].isna().any().any():
            raise ValueError("training events reference users or items missing from the users/items tables")
        events = events.astype({"user_idx": "int64", "item_idx": "int64"}).sort_values("timestamp", kind="stable")
        matrix = sp.csr_matrix(
            (events["weight"].to_numpy("float32"), (events["user_idx"], events["item_idx"])),
            shape=(len(users), len(items)),
            dtype=np.float32,
        )
        matrix.sum_duplicates()
        return cls(matrix=matrix, events=events.reset_index(drop=True), items=items, users=users)


@dataclass
class ProtocolData:
    """One protocol's split in the shared index space, with what evaluation needs."""

    protocol: str
    split: S.Split
    data: TrainData
    valid_truth: sp.csr_matrix
    test_truth: sp.csr_matrix  # every test positive, re-consumed items included
    test_exclude: sp.csr_matrix  # items the user had in train or valid (hidden in the discovery setting)
    user_slice: np.ndarray  # slice label per user (by training events)
    new_item_truth: sp.csr_matrix  # test positives on items unseen in training
    item_popularity: np.ndarray
    # test positives the user already had in train or valid (the repeat setting's own positives); None: none
    repeat_truth: sp.csr_matrix | None = None


@runtime_checkable
class Recommender(Protocol):
    """What the pipeline needs of a model: fit on a protocol's split, score users, export for serving.

    `fit` trains on `data.split` (or its indexed training part `data.data`); it may early-stop or tune
    on the validation part, never on the test part. After it:

    * `score(user_idx)` is a dense float array (len(user_idx) x n_items) in the shared index space,
      higher is better. It does not exclude seen items (`recommend` does, with `history`); an item or a
      user the model cannot score is -inf.
    * `history` is the users x items matrix of training event weights the model was fitted on.
    * `scorer` is the model as the serving artifact stores it (`contract.scoring.Scorer`, the API's
      scoring path), or None for a model with no serving form.
    * `params()` are the hyper-parameters a training run records.

    `family` is "recbole" (trained through the RecBole adapter) or "native".

    Two optional capabilities, which every model states (None and 0.0 when it has neither):

    * `lists` is the model's own `ListsFn`, for a model that ranks every user from one global order
      (popularity), so evaluation ranks without scoring; None: evaluation ranks `score`'s rows.
    * `search_seconds` is the time the last `fit` spent searching its own choices on the validation part
      (the hybrid's half-life and blend weights), reported apart from training; 0.0 for a model with no search.
    """

    history: sp.csr_matrix

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    @property
    def scorer(self) -> Scorer | None: ...

    @property
    def lists(self) -> ListsFn | None: ...

    @property
    def search_seconds(self) -> float: ...

    def fit(self, data: ProtocolData) -> Self: ...

    def score(self, user_idx: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, object]: ...


def recommend(model: Recommender, user_idx: np.ndarray, k: int) -> np.ndarray:
    """Top-`k` item indices per user, best first, never an item of the user's training history nor one
    the model cannot score; a row with fewer than `k` such items ends with -1. Scored in batches of users."""
    user_idx = np.asarray(user_idx)
    return ranked_lists(model.score, user_idx, k, model.history.shape[1], exclude=model.history[user_idx])
