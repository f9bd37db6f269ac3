"""The two evaluation protocols, cut once from the canonical interactions and shared by every model.

* ``random``: RecBole's general protocol (``eval_args: {split: {RS: [0.8, 0.1, 0.1]}, order: RO,
  group_by: user}``): each user's interactions are shuffled and cut 8:1:1 with RecBole's per-user
  rounding (`Dataset._calcu_split_ids`), so per-user part sizes equal RecBole's.
* ``temporal``: one GLOBAL time cut: the earliest 80% of events train, the next 10% validate, the last
  10% test, so nothing from the future is ever trained on. This is not RecBole's ``TS`` mode (a global
  boundary applied per user); it is the deployment view, where users and items first seen after the
  cut are kept in valid/test on purpose: they are the cold-start cases the slices below measure.
  A log ordered per user instead of in time (`sequence_column`, e.g. a basket log's order numbers)
  gets a per-user SEQUENCE split under the same protocol name: the last 10% of each user's sequence
  tests (`sequence_split`); a log with no time (`time: "none"`) has no temporal protocol at all.

Every row of the input lands in exactly one part, with its original index label. `cold_start_slices`
labels test rows by the user's number of training events ("0", "1-5", "6-20", "20+") and flags items
never seen in training ("new_item"); `interactions_to_csr` turns a part into a ground-truth matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_assets.contract.events import REQUIRED_EVENT_COLUMNS, SEQUENCE, TIME_MODE

USER_COL, ITEM_COL, EVENT_TYPE_COL, TIMESTAMP_COL = REQUIRED_EVENT_COLUMNS

RANDOM = "random"
TEMPORAL = "temporal"
PROTOCOLS: tuple[str, ...] = (RANDOM, TEMPORAL)
DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)

# How the interactions are ordered (`contract.sources.TIME_MODES`): the cleaning step writes the mode
# in this column when it is not "timestamp", and each event's per-user position in `SEQUENCE_COL`.
TIME_MODE_COL = TIME_MODE
SEQUENCE_COL = SEQUENCE
# What each split does, as the evaluation report states it.
METHODS: dict[str, str] = {
    RANDOM: "random: each user's events shuffled and cut 8:1:1",
    TEMPORAL: "temporal: one global time cut (the latest 10% of events test)",
    "sequence": "temporal as per-user sequence: the last 10% of each user's sequence tests (no global time)",
}
NO_TIME_NOTE = (
    'the log has no time (`time: "none"`): the temporal protocol is skipped; only the random protocol is evaluated'
)


class NoTimeError(ValueError):
    """The temporal protocol asked of a log that has no time."""


# Cold-start slices: a test user's number of TRAINING events -> label ("20+" means 21 or more).
N_TRAIN_EVENTS_COL = "n_train_events"
USER_SLICE_COL = "user_slice"
NEW_ITEM_COL = "new_item"
USER_SLICES: tuple[str, ...] = ("0", "1-5", "6-20", "20+")
NEW_ITEM_SLICE = "new_item"
_SLICE_EDGES = (0, 1, 6, 21)  # lower bound of each USER_SLICES bin


@dataclass(frozen=True)
class Split:
    """Train / valid / test parts of one protocol; rows keep the input's index labels."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    protocol: str
    # how the parts were cut (`METHODS`)
    method: str = ""

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def summary(self) -> dict[str, int | str]:
        """Row, user and item counts per part, plus the cold-start counts of the test part."""
        out: dict[str, int | str] = {"protocol": self.protocol, "method": self.method}
        for name, part in self.parts().items():
            out[f"{name}_events"] = len(part)
            out[f"{name}_users"] = int(part[USER_COL].nunique())
            out[f"{name}_items"] = int(part[ITEM_COL].nunique())
        seen_users = pd.Index(self.train[USER_COL].unique())
        seen_items = pd.Index(self.train[ITEM_COL].unique())
        out["test_users_unseen_in_train"] = int((~pd.Index(self.test[USER_COL].unique()).isin(seen_users)).sum())
        out["test_items_unseen_in_train"] = int((~pd.Index(self.test[ITEM_COL].unique()).isin(seen_items)).sum())
        return out


def recbole_split_ids(total: int, ratios: Sequence[float]) -> list[int]:
    """Cut positions of `total` rows for `ratios`, exactly as RecBole 1.2.1's `Dataset._calcu_split_ids`.

    Ratios are normalised; every part but the first is rounded down, then a part whose exact share is
    in (0, 1) gets one row taken from the first part, from the last part backwards, while the first
    part keeps more than one row. E.g. 10 -> 8/1/1, 3 -> 1/1/1, 2 -> 1/0/1, 1 -> 1/0/0, 25 -> 21/2/2.
    """
    tot_ratio = sum(ratios)
    ratios = [r / tot_ratio for r in ratios]
    cnt = [int(r * total) for r in ratios]
    cnt[0] = total - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return [int(c) for c in np.cumsum(cnt)[:-1]]


def _check(inter: pd.DataFrame, ratios: Sequence[float]) -> None:
    missing = [c for c in (USER_COL, ITEM_COL, TIMESTAMP_COL) if c not in inter.columns]
    if missing:
        raise ValueError(f"interactions lack columns {missing}")
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
        raise ValueError(f"ratios must be (train, valid, test) with train > 0 and none negative, got {ratios}")


def _canonical_order(inter: pd.DataFrame) -> np.ndarray:
    """Row positions sorted by (user, timestamp, item, event type): the split does not depend on row order."""
    keys = [c for c in (USER_COL, TIMESTAMP_COL, ITEM_COL, EVENT_TYPE_COL) if c in inter.columns]
    frame = inter[keys].reset_index(drop=True)
    return frame.sort_values(keys, kind="mergesort").index.to_numpy()


def _from_labels(inter: pd.DataFrame, part: np.ndarray, protocol: str, method: str | None = None) -> Split:
    return Split(
        train=inter[part == 0],
        valid=inter[part == 1],
        test=inter[part == 2],
        protocol=protocol,
        method=METHODS[protocol] if method is None else method,
    )


def time_mode(inter: pd.DataFrame) -> str:
    """How the interactions are ordered: "timestamp", "sequence" (per user) or "none"."""
    if TIME_MODE_COL in inter.columns and len(inter):
        return str(inter[TIME_MODE_COL].iloc[0])
    return "timestamp"


def protocols_for(inter: pd.DataFrame, protocols: Sequence[str]) -> list[str]:
    """The protocols that apply to the interactions: no temporal one for a log without time."""
    return [p for p in protocols if not (p == TEMPORAL and time_mode(inter) == "none")]


def deciding_protocol(inter: pd.DataFrame) -> str:
    """The protocol the champion is chosen on: temporal, or random for a log without time."""
    return RANDOM if time_mode(inter) == "none" else TEMPORAL


def champion_protocol(present: Sequence[str] | pd.Series) -> str:
    """The protocol a comparison's champion is chosen on: temporal when it was evaluated, else random
    (a log without time)."""
    return TEMPORAL if TEMPORAL in set(present) else RANDOM


def method_of(protocol: str, mode: str) -> str:
    """How `protocol` cuts a log of time mode `mode` (`METHODS`), or that it is skipped."""
    if protocol == TEMPORAL and mode == "none":
        return NO_TIME_NOTE
    return METHODS["sequence" if protocol == TEMPORAL and mode == "sequence" else protocol]


def random_split(inter: pd.DataFrame, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 2020) -> Split:
    """RecBole's random per-user split (RS + RO, grouped by user) with RecBole's per-user rounding.

    Each user's events are shuffled (numpy `default_rng(seed)`, over rows in a canonical order so the
    result depends on the data and the seed only) and the first part of the shuffled list trains.
    The part sizes match RecBole's for every user; the exact rows differ (RecBole shuffles with torch).
    """
    _check(inter, ratios)
    n = len(inter)
    canon = _canonical_order(inter)
    shuffled = canon[np.random.default_rng(seed).permutation(n)]
    users = inter[USER_COL].to_numpy()[shuffled]
    grouped = pd.Series(users).groupby(users, sort=False)
    rank = grouped.cumcount().to_numpy()
    size = grouped.transform("size").to_numpy()
    sizes, which = np.unique(size, return_inverse=True)
    cuts = np.array([recbole_split_ids(int(s), ratios) for s in sizes], dtype=np.int64).reshape(-1, 2)[which]
    label_shuffled = np.where(rank < cuts[:, 0], 0, np.where(rank < cuts[:, 1], 1, 2))
    part = np.empty(n, dtype=np.int8)
    part[shuffled] = label_shuffled
    return _from_labels(inter, part, RANDOM)


def temporal_split(inter: pd.DataFrame, ratios: Sequence[float] = DEFAULT_RATIOS) -> Split:
    """A global time-ordered split: the earliest events train, the next validate, the latest test.

    Events are sorted by timestamp and cut at RecBole's rounding of the ratios over all events; every
    event sharing the timestamp at a cut goes to the LATER part, so max(train) < min(valid) <= ... and
    max(train) < min(test) strictly (the earlier parts can come out slightly smaller than the ratio;
    valid is empty when one timestamp spans both cuts). Users and items that appear only after the
    first cut are kept: they are the cold-start cases, not noise. A test ratio of 0 leaves the test
    part empty: the split of a refit, which trains on everything but the newest validation slice.
    """
    _check(inter, ratios)
    n = len(inter)
    part = np.zeros(n, dtype=np.int8)
    if n == 0:
        return _from_labels(inter, part, TEMPORAL)
    ts = inter[TIMESTAMP_COL]
    if ts.isna().any():
        raise ValueError("temporal_split needs a timestamp on every event")
    ordered = ts.sort_values(kind="mergesort")
    c1, c2 = recbole_split_ids(n, ratios)
    bounds = [ordered.iloc[c] if c < n else None for c in (c1, c2)]
    for label, bound in ((1, bounds[0]), (2, bounds[1])):
        if bound is not None:
            part[(ts >= bound).to_numpy()] = label
    return _from_labels(inter, part, TEMPORAL)


def sequence_split(inter: pd.DataFrame, ratios: Sequence[float] = DEFAULT_RATIOS) -> Split:
    """The temporal protocol of a log ordered per user: the last part of each user's sequence tests.

    Each user's events are ordered by `sequence` (then timestamp; events without a position, such
    as live ones, come last, one step each). Events sharing a position (one basket) stay together:
    the user's distinct positions are cut with RecBole's rounding of the ratios (2 -> 1/0/1, 10 ->
    8/1/1), so every user with two or more positions has their last one in test, and nothing a user
    did later is trained on. Users are never compared with each other, unlike a global time cut.
    """
    _check(inter, ratios)
    n = len(inter)
    part = np.zeros(n, dtype=np.int8)
    if n == 0:
        return _from_labels(inter, part, TEMPORAL, METHODS["sequence"])
    seq = inter[SEQUENCE_COL] if SEQUENCE_COL in inter.columns else pd.Series(np.nan, index=inter.index)
    frame = pd.DataFrame(
        {
            "u": inter[USER_COL].astype(str).to_numpy(),
            "s": pd.to_numeric(seq, errors="coerce").to_numpy(dtype="float64"),
            "t": inter[TIMESTAMP_COL].to_numpy(),
            "i": inter[ITEM_COL].astype(str).to_numpy(),
        }
    )
    order = frame.sort_values(["u", "s", "t", "i"], kind="mergesort", na_position="last").index.to_numpy()
    u, s = frame["u"].to_numpy()[order], frame["s"].to_numpy()[order]
    new_user = np.r_[True, u[1:] != u[:-1]]
    # NaN != NaN: an event without a position is a step of its own
    new_step = new_user | np.r_[True, s[1:] != s[:-1]]
    step = np.cumsum(new_step) - 1
    user_no = np.cumsum(new_user) - 1
    first_step = step[new_user][user_no]
    rank = step - first_step
    n_steps = np.bincount(user_no, weights=new_step).astype(np.int64)[user_no]
    sizes, which = np.unique(n_steps, return_inverse=True)
    cuts = np.array([recbole_split_ids(int(k), ratios) for k in sizes], dtype=np.int64).reshape(-1, 2)[which]
    part[order] = np.where(rank < cuts[:, 0], 0, np.where(rank < cuts[:, 1], 1, 2))
    return _from_labels(inter, part, TEMPORAL, METHODS["sequence"])


def split(inter: pd.DataFrame, protocol: str, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 2020) -> Split:
    """The split of `protocol` ("random" or "temporal"; temporal per user for a log ordered per user,
    `NoTimeError` for a log without time)."""
    if protocol == RANDOM:
        return random_split(inter, ratios, seed)
    if protocol == TEMPORAL:
        mode = time_mode(inter)
        if mode == "none":
            raise NoTimeError(NO_TIME_NOTE)
        return sequence_split(inter, ratios) if mode == "sequence" else temporal_split(inter, ratios)
    raise ValueError(f"unknown protocol {protocol!r}, expected one of {PROTOCOLS}")


# ---------------------------------------------------------------------------------------------
# Cold-start slices
# ---------------------------------------------------------------------------------------------


def user_slice_labels(n_train_events: pd.Series | np.ndarray) -> pd.Categorical:
    """Map training-event counts to "0", "1-5", "6-20", "20+" (more than 20)."""
    counts = np.asarray(n_train_events, dtype=np.int64)
    codes = np.searchsorted(np.array(_SLICE_EDGES), counts, side="right") - 1
    return pd.Categorical.from_codes(codes, categories=list(USER_SLICES))


def cold_start_slices(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The test rows with `n_train_events`, `user_slice` and `new_item` (item absent from train) added."""
    counts = train.groupby(USER_COL, sort=False).size()
    out = test.copy()
    n = counts.reindex(out[USER_COL].to_numpy()).fillna(0).astype("int64").to_numpy()
    out[N_TRAIN_EVENTS_COL] = n
    out[USER_SLICE_COL] = user_slice_labels(n)
    out[NEW_ITEM_COL] = ~out[ITEM_COL].isin(pd.Index(train[ITEM_COL].unique())).to_numpy()
    return out


def user_slices(train: pd.DataFrame, test: pd.DataFrame) -> pd.Series:
    """One cold-start slice label per test user (index `user_id`)."""
    users = pd.Index(test[USER_COL].unique(), name=USER_COL)
    n = train.groupby(USER_COL, sort=False).size().reindex(users).fillna(0).astype("int64")
    return pd.Series(user_slice_labels(n.to_numpy()), index=users, name=USER_SLICE_COL)


# ---------------------------------------------------------------------------------------------
# To matrices
# ---------------------------------------------------------------------------------------------


def interactions_to_csr(
    inter: pd.DataFrame, user_ids: pd.Index | Sequence[str], item_ids: pd.Index | Sequence[str]
) -> sp.csr_matrix:
    """Binary user x item CSR of `inter`, rows and columns in the order of `user_ids` and `item_ids`.

    Use it for the ground truth of a part (and for the training items to exclude). An id missing from
    the index raises: dropping it silently would inflate recall.
    """
    users = pd.Index(user_ids)
    items = pd.Index(item_ids)
    u = users.get_indexer(inter[USER_COL])
    i = items.get_indexer(inter[ITEM_COL])
    if (u < 0).any() or (i < 0).any():
        raise ValueError(
            f"{int((u < 0).sum())} rows with a user and {int((i < 0).sum())} with an item not in the given ids"
        )
    m = sp.csr_matrix((np.ones(len(inter), dtype=np.int32), (u, i)), shape=(len(users), len(items)))
    m.sum_duplicates()
    m.data = np.ones(m.nnz, dtype=np.int8)
    return m
