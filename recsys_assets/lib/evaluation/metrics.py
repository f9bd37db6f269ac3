"""Top-K ranking metrics computed once, the same way, for every model (RecBole's and ours).

A model hands over a top-K array (n_users x K item indices, best first, ``-1`` for "nothing more to
recommend"); the ground truth is one row of held-out positive items per user (a scipy sparse matrix
or a list of index arrays). From ONE top-max(K) list we compute, for every K:

* accuracy, per user then averaged: Precision, Recall, NDCG, MAP, Hit, MRR;
* beyond accuracy: item coverage, average popularity, and the share of the most popular items.

Every definition reproduces RecBole 1.2.1 (`recbole/evaluator/metrics.py`), and `tests/test_metrics.py`
checks it against RecBole's own metric classes:

* Precision@K = hits@K / K (padding slots count as misses, the list length is always K);
* Recall@K = hits@K / #positives (not min(#positives, K));
* NDCG@K = DCG@K / ideal DCG over min(#positives, K) slots, binary gains, log2(rank + 1) discount;
* MAP@K = sum of Precision@j over the hit ranks j <= K, divided by min(#positives, K);
* Hit@K = 1 if any hit within K; MRR@K = 1 / rank of the first hit if that rank <= K, else 0;
* ItemCoverage@K = distinct items in the top-K lists / catalog size;
* AveragePopularity@K = mean over users of the mean training popularity of their top-K items.

Users without held-out positives are left out of every mean, including coverage and popularity
(RecBole never puts them in its evaluation batches); ``n_users`` in the result says how many counted.
Two deliberate differences from RecBole, both outside its reach: RecBole's ItemCoverage divides by
``num_items`` which includes its padding item ``[PAD]`` (so its value is ours x n/(n+1)), and RecBole
never pads lists, whereas here a ``-1`` slot is a miss and does not count in the popularity average.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

# the truth matrix and the padding are the scoring path's (shared with the API)
from recsys_assets.contract.scoring import PAD, Truth, truth_to_csr
from recsys_assets.lib.evaluation.batched import mean_ci

# Columns of the long result table (the caller adds model / protocol / slice columns).
METRIC_COL = "metric"
K_COL = "k"
VALUE_COL = "value"
N_USERS_COL = "n_users"
RESULT_COLUMNS: tuple[str, ...] = (METRIC_COL, K_COL, VALUE_COL, N_USERS_COL)
# Confidence interval of a per-user mean (`evaluate_topk(..., ci_level=...)`); NaN for catalog metrics.
CI_LOW_COL, CI_HIGH_COL = "ci_low", "ci_high"

# Metric names are RecBole's result keys (`ndcg@10`, `itemcoverage@10`, ...) so results line up.
ACCURACY_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "hit", "mrr")
COVERAGE = "itemcoverage"
AVERAGE_POPULARITY = "averagepopularity"
HEAD_PERCENTAGE = "headpercentage"  # share of recommended items among the most popular ones
DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
DEFAULT_HEAD_FRACTION = 0.2


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _check_topk(topk: np.ndarray, n_items: int) -> np.ndarray:
    topk = np.asarray(topk)
    if topk.ndim != 2:
        raise ValueError(f"topk must be 2-D (n_users x K), got shape {topk.shape}")
    if topk.size == 0:
        return topk.astype(np.int64)
    if not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk must hold integer item indices, got {topk.dtype}")
    if topk.min() < PAD or topk.max() >= n_items:
        raise ValueError(f"topk indices must lie in [-1, {n_items})")
    s = np.sort(topk, axis=1)
    if ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any():
        raise ValueError("an item appears twice in one user's top-K list")
    return topk.astype(np.int64, copy=False)


def _select_rows(n_users: int, users: np.ndarray | Sequence[int] | None) -> np.ndarray:
    if users is None:
        return np.arange(n_users)
    users = np.asarray(users)
    if users.dtype == bool:
        if users.shape != (n_users,):
            raise ValueError(f"user mask has shape {users.shape}, expected ({n_users},)")
        return np.flatnonzero(users)
    return users.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Per-user metric curves (RecBole's `metric_info`, vectorised)
# ---------------------------------------------------------------------------------------------


def hit_matrix(topk: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """Boolean n_users x K: is the item at each rank a held-out positive (RecBole's `pos_index`)."""
    truth = truth_to_csr(truth)
    n_users, n_items = truth.shape
    topk = _check_topk(topk, n_items)
    if topk.shape[0] != n_users:
        raise ValueError(f"topk has {topk.shape[0]} rows but truth has {n_users}")
    keys = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(truth.indptr)) * n_items + truth.indices
    if keys.size == 0:
        return np.zeros(topk.shape, dtype=bool)
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + topk
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return (topk >= 0) & (keys[pos] == query)


def topk_curves(hits: np.ndarray, n_pos: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user accuracy values at every cutoff 1..K (n_users x K float arrays), keyed by metric.

    `hits` is the `hit_matrix`, `n_pos` the number of held-out positives per user (all >= 1).
    Column ``k - 1`` is the metric @k, exactly as RecBole's `TopkMetric.metric_info` builds it.
    """
    hits = np.asarray(hits, dtype=bool)
    n_pos = np.asarray(n_pos, dtype=np.int64).reshape(-1, 1)
    if (n_pos < 1).any():
        raise ValueError("every user passed to topk_curves needs at least one positive")
    k = hits.shape[1]
    ranks = np.arange(1, k + 1, dtype=np.float64)
    h = hits.astype(np.float64)
    n_hits = np.cumsum(h, axis=1)
    precision = n_hits / ranks
    # MAP: precision at each hit rank, summed, over min(#positives, cutoff).
    ap = np.cumsum(precision * h, axis=1) / np.minimum(ranks, n_pos)
    # NDCG: binary gains; the ideal list has min(#positives, cutoff) hits at the top.
    discount = 1.0 / np.log2(ranks + 1.0)
    ideal = np.cumsum(discount)[np.minimum(np.arange(k), n_pos - 1)]
    ndcg = np.cumsum(h * discount, axis=1) / ideal
    first = hits.argmax(axis=1)
    found = hits.any(axis=1)
    mrr = np.where(found[:, None] & (ranks[None, :] > first[:, None]), 1.0 / (first[:, None] + 1.0), 0.0)
    return {
        "precision": precision,
        "recall": n_hits / n_pos,
        "ndcg": ndcg,
        "map": ap,
        "hit": (n_hits > 0).astype(np.float64),
        "mrr": mrr,
    }


def per_user_topk_metrics(
    topk: np.ndarray,
    truth: Truth,
    ks: Sequence[int] = DEFAULT_KS,
    n_items: int | None = None,
) -> pd.DataFrame:
    """One row per evaluated user (row index into `topk`, in column `user`): `n_pos` and `<metric>@<k>`.

    Users without held-out positives are left out, as in every mean of this module.
    """
    truth = truth_to_csr(truth, n_items)
    ks = _check_ks(ks, np.asarray(topk).shape[1])
    topk = _check_topk(topk, truth.shape[1])[:, : max(ks)]
    n_pos = np.diff(truth.indptr)
    rows = np.flatnonzero(n_pos > 0)
    curves = topk_curves(hit_matrix(topk[rows], truth[rows]), n_pos[rows])
    out = {"user": rows, "n_pos": n_pos[rows]}
    for name in ACCURACY_METRICS:
        for k in ks:
            out[f"{name}@{k}"] = curves[name][:, k - 1]
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# Beyond accuracy
# ---------------------------------------------------------------------------------------------


def item_coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the catalog recommended to at least one user (RecBole's ItemCoverage, without [PAD])."""
    topk = np.asarray(topk)
    if n_items <= 0:
        return float("nan")
    return float(np.unique(topk[topk >= 0]).size / n_items)


def head_items(item_popularity: np.ndarray, fraction: float = DEFAULT_HEAD_FRACTION) -> np.ndarray:
    """Boolean mask of the most popular `fraction` of the items that have any training interaction.

    The head holds max(1, round(fraction x #items with popularity > 0)) items, the same rule as the
    EDA report's "top 20% items"; ties are broken by the lower item index.
    """
    pop = np.asarray(item_popularity, dtype=np.float64)
    mask = np.zeros(pop.shape[0], dtype=bool)
    n_pop = int((pop > 0).sum())
    if n_pop == 0:
        return mask
    n_head = max(1, round(fraction * n_pop))
    order = np.lexsort((np.arange(pop.shape[0]), -pop))
    mask[order[:n_head]] = True
    return mask


def _mean_over_lists(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-user running mean over the valid (non-padding) slots, n_users x K; NaN before the first."""
    total = np.cumsum(np.where(valid, values, 0.0), axis=1)
    count = np.cumsum(valid, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def popularity_curves(
    topk: np.ndarray, item_popularity: np.ndarray, head_fraction: float = DEFAULT_HEAD_FRACTION
) -> dict[str, np.ndarray]:
    """Per-user average popularity and head share of the recommended items at every cutoff 1..K.

    `item_popularity[i]` is item i's number of training interactions (RecBole's `item_counter`).
    """
    topk = np.asarray(topk, dtype=np.int64)
    pop = np.asarray(item_popularity, dtype=np.float64)
    valid = topk >= 0
    safe = np.where(valid, topk, 0)
    head = head_items(pop, head_fraction)
    return {
        AVERAGE_POPULARITY: _mean_over_lists(pop[safe], valid),
        HEAD_PERCENTAGE: _mean_over_lists(head[safe].astype(np.float64), valid),
    }


# ---------------------------------------------------------------------------------------------
# The report table
# ---------------------------------------------------------------------------------------------


def _check_ks(ks: Sequence[int], width: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if ks[-1] > width:
        raise ValueError(f"topk has {width} columns, fewer than the largest K={ks[-1]}")
    return ks


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def evaluate_topk(
    topk: np.ndarray,
    truth: Truth,
    ks: Sequence[int] = DEFAULT_KS,
    item_popularity: np.ndarray | None = None,
    *,
    n_items: int | None = None,
    users: np.ndarray | Sequence[int] | None = None,
    head_fraction: float = DEFAULT_HEAD_FRACTION,
    ci_level: float | None = None,
) -> pd.DataFrame:
    """All metrics for all K as a long table with columns `metric`, `k`, `value`, `n_users`.

    Args:
        topk: n_users x K' item indices, best first, ``-1`` padding; K' >= max(ks).
        truth: held-out positives per user (sparse n_users x n_items, or a list of index arrays).
        ks: cutoffs; every one is read off the same top-max(ks) list.
        item_popularity: training interaction count per item; adds `averagepopularity` and
            `headpercentage` (share of recommended items among the `head_fraction` most popular).
        n_items: catalog size (defaults to the truth's column count, or `len(item_popularity)`).
        users: row indices or a boolean mask restricting the evaluation to a slice of users.
        head_fraction: size of the popular head for `headpercentage`.
        ci_level: adds columns `ci_low`, `ci_high`: the normal-approximation confidence interval of
            each accuracy metric's mean over users at this level (`batched.mean_ci`); NaN otherwise.

    `n_users` is the number of users evaluated: those selected that have at least one positive.
    """
    if n_items is None and item_popularity is not None and not sp.issparse(truth):
        n_items = len(item_popularity)
    truth = truth_to_csr(truth, n_items)
    n_items = truth.shape[1]
    topk = np.asarray(topk)
    ks = _check_ks(ks, topk.shape[1])
    topk = _check_topk(topk, n_items)[:, : ks[-1]]
    if topk.shape[0] != truth.shape[0]:
        raise ValueError(f"topk has {topk.shape[0]} rows but truth has {truth.shape[0]}")
    rows = _select_rows(truth.shape[0], users)
    n_pos = np.diff(truth.indptr)[rows]
    rows = rows[n_pos > 0]
    n_pos = n_pos[n_pos > 0]
    lists = topk[rows]
    records: list[tuple[str, int, float]] = []
    intervals: list[tuple[float, float]] = []
    curves = topk_curves(hit_matrix(lists, truth[rows]), n_pos)
    for name in ACCURACY_METRICS:
        for k in ks:
            records.append((name, k, float(curves[name][:, k - 1].mean()) if rows.size else float("nan")))
            if ci_level is not None:
                intervals.append(mean_ci(curves[name][:, k - 1], ci_level))
    for k in ks:
        records.append((COVERAGE, k, item_coverage(lists[:, :k], n_items) if rows.size else float("nan")))
    if item_popularity is not None:
        pop = np.asarray(item_popularity, dtype=np.float64)
        if pop.shape != (n_items,):
            raise ValueError(f"item_popularity has shape {pop.shape}, expected ({n_items},)")
        pcurves = popularity_curves(lists, pop, head_fraction)
        for name in (AVERAGE_POPULARITY, HEAD_PERCENTAGE):
            for k in ks:
                records.append((name, k, _nanmean(pcurves[name][:, k - 1])))
    out = pd.DataFrame(records, columns=[METRIC_COL, K_COL, VALUE_COL])
    out[K_COL] = out[K_COL].astype("int64")
    out[N_USERS_COL] = int(rows.size)
    if ci_level is not None:
        nan = [(float("nan"), float("nan"))] * (len(out) - len(intervals))
        out[[CI_LOW_COL, CI_HIGH_COL]] = np.array(intervals + nan, dtype=np.float64).reshape(-1, 2)
    return out


# ---------------------------------------------------------------------------------------------
# From scores to top-K lists
# ---------------------------------------------------------------------------------------------


def exclusion_matrix(seen: sp.spmatrix | sp.sparray, truth: Truth | None = None) -> sp.csr_matrix:
    """Items not to rank for each user: every seen item, minus the held-out positives if `truth` is given.

    Passing `truth` reproduces RecBole's full-sort evaluation, which masks a user's history except the
    items that are positives of the part being evaluated (a re-consumed item stays rankable).
    """
    mask = truth_to_csr(seen)
    if truth is not None:
        t = truth_to_csr(truth, mask.shape[1])
        if t.shape != mask.shape:
            raise ValueError(f"truth has shape {t.shape}, seen has {mask.shape}")
        mask = sp.csr_matrix(mask - mask.multiply(t))
        mask.eliminate_zeros()
    return mask
