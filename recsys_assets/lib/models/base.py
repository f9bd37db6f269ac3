"""The contract every recommender follows, and the training data they all share.

All models work in one index space: rows of the `users` table and rows of the `items` table (the
id maps of `interaction_matrix`). Items of the catalog with no interaction and users with no
training event are part of that space, so cold-start cases are scored like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp


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


@runtime_checkable
class Recommender(Protocol):
    """Fit on `TrainData`, then score every item for given users (higher is better).

    `score` returns a dense float array (len(user_idx) x n_items); it does not exclude items the
    user has seen (the caller does, with the training matrix).
    """

    name: str

    def fit(self, data: TrainData) -> Recommender: ...

    def score(self, user_idx: np.ndarray) -> np.ndarray: ...
