"""The model tests' one data set: a tiny checkerboard with a known answer (as in implicit's shared recommender test).

Two groups of users, each interacting only with its own half of the items (a category of its own). A personalised
model must recommend, to every user, unseen items of that user's own half; one that does not personalise must rank
by training popularity. Two users have no event at all (empty histories) and each half has a catalog item nobody
touched (a new item with metadata). Ids hold spaces: RecBole's file format must never see them.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from recsys_assets.lib.models.base import ProtocolData
from recsys_assets.lib.models.fitting import prepare

USERS_PER_GROUP, ITEMS_PER_HALF, EVENTS_PER_USER = 16, 12, 8
COLD_USERS = ("user 0-cold", "user 1-cold")
NEW_ITEMS = ("item 0-new", "item 1-new")

# Small and fast, yet enough to learn the checkerboard (well under a second per model on one core). Early stopping is
# off (stopping_step = epochs): 32 validation users are too few to judge an epoch by. Pop, ItemKNN and EASE count or
# solve in one pass.
TINY_SETTINGS: dict[str, dict[str, object]] = {
    "Pop": {"epochs": 1},
    "ItemKNN": {"epochs": 1},
    "EASE": {"epochs": 1},
    "BPR": {"epochs": 40, "stopping_step": 40, "learning_rate": 0.05, "embedding_size": 16},
    "NeuMF": {
        "epochs": 80,
        "stopping_step": 80,
        "learning_rate": 0.01,
        "embedding_size": 16,
        "params": {"mlp_hidden_size": [16]},
    },
    "LightGCN": {"epochs": 40, "stopping_step": 40, "learning_rate": 0.05, "embedding_size": 16},
    "NGCF": {"epochs": 60, "stopping_step": 60, "learning_rate": 0.01, "embedding_size": 16},
    "MultiVAE": {
        "epochs": 40,
        "stopping_step": 40,
        "learning_rate": 0.01,
        "embedding_size": 16,
        "params": {"mlp_hidden_size": [32]},
    },
    # SASRec: about 250 s per epoch on ml-100k at length 50 on this CPU, hence a short length and a tiny model here.
    "SASRec": {
        "epochs": 40,
        "stopping_step": 40,
        "learning_rate": 0.01,
        "embedding_size": 16,
        "max_seq_length": 10,
        "params": {"n_layers": 1, "n_heads": 1, "inner_size": 32},
    },
}


def group_of(identifier: str) -> str:
    """'user 1-3', 'item 1-7' and 'item 1-new' belong to group '1'."""
    return identifier.split(" ")[1].split("-")[0]


def tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Canonical interactions (each user: 8 distinct items of its half, one an hour), items and users."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for group in range(2):
        for user in range(USERS_PER_GROUP):
            items = rng.permutation(ITEMS_PER_HALF)[:EVENTS_PER_USER]
            for step, item in enumerate(items):
                rows.append((f"user {group}-{user}", f"item {group}-{item}", "click", start + pd.Timedelta(hours=step)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])
    inter["timestamp"] = inter["timestamp"].astype("datetime64[us, UTC]")
    inter["value"], inter["weight"] = 1.0, 1.0
    item_ids = [f"item {g}-{i}" for g in range(2) for i in range(ITEMS_PER_HALF)] + list(NEW_ITEMS)
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [f"Title {i}" for i in item_ids],
            "categories": [f"Genre{group_of(i)}" for i in item_ids],
            "text": "",
            "year": pd.array([pd.NA] * len(item_ids), dtype="Int32"),
        }
    )
    user_ids = [f"user {g}-{u}" for g in range(2) for u in range(USERS_PER_GROUP)] + list(COLD_USERS)
    return inter, items, pd.DataFrame({"user_id": user_ids})


@functools.cache
def checkerboard() -> ProtocolData:
    """The checkerboard split as the pipeline splits it: RecBole's random 8:1:1 per user (6/1/1 events here)."""
    return prepare(*tables(), "random")


def own_half(build: ProtocolData, user_idx: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Whether each recommended item (`top`: a row of item indices per user, -1 for none) is of its user's half."""
    user_half = build.data.users["user_id"].map(group_of).to_numpy()[np.asarray(user_idx)]
    item_half = build.data.items["item_id"].map(group_of).to_numpy()
    return (top >= 0) & (item_half[top] == user_half[:, None])
