"""Top-k item indices from scores: best first, equal scores ordered by item index, -1 padded.

The one ranking rule of the project (offline evaluation and the API both use it): the k best finite
scores, ties ordered by item index, at the k-th place too, so a list never depends on how a partition
happened to split equal scores. `top_k` ranks one row, `top_k_rows` a narrow block at once, `top_k_wide`
a wide block row by row from a threshold (what evaluation over a large catalog spends its time on).
"""

from __future__ import annotations

import numpy as np

PAD = -1  # pads a top-k row that has fewer than k items

# Up to this many items a block is ranked at once (`top_k_rows`: 2x faster at 800 columns); above, row by
# row through `top_k_wide` (at 100k items the whole-block comparisons cost more than the per-row calls they save).
ROWS_AT_ONCE_BELOW = 4096
# `top_k_wide` looks at every `stride`-th score first, with at least this many per wanted item
SAMPLE_PER_ITEM = 64


def top_k_rows(block: np.ndarray, k: int) -> np.ndarray:
    """`top_k` of every row of a 2-D block (NaN-free), vectorised: one partition of the whole block;
    the rows whose k-th place ties with scores left outside it go through `top_k` one by one."""
    n_rows, n = block.shape
    kk = min(k, n)
    if kk < n:
        cand = np.argpartition(block, n - kk, axis=1)[:, n - kk :]
        vals = np.take_along_axis(block, cand, axis=1)
        kth = vals.min(axis=1, keepdims=True)
        tied = np.flatnonzero((block == kth).sum(axis=1) > (vals == kth).sum(axis=1))
    else:
        cand = np.broadcast_to(np.arange(n), (n_rows, n))
        vals, tied = block, np.empty(0, dtype=np.int64)
    order = np.lexsort((cand, -vals), axis=1)
    chosen = np.take_along_axis(cand, order, axis=1).astype(np.int64)
    chosen[~np.isfinite(np.take_along_axis(vals, order, axis=1))] = PAD
    out = np.full((n_rows, k), PAD, dtype=np.int64)
    out[:, :kk] = chosen
    for r in tied:
        out[r] = top_k(block[r], k)
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best finite scores, best first; equal scores ordered by index; -1 padded.

    Ties at the k-th place go to the lowest indices too, so the result never depends on how
    `argpartition` happened to split them.
    """
    n = scores.shape[0]
    kk = min(k, n)
    if kk < n:
        cand = np.argpartition(scores, n - kk)[n - kk :]
        vals = scores[cand]
        kth = vals.min()
        if np.count_nonzero(scores == kth) > np.count_nonzero(vals == kth):  # ties left outside: lowest indices
            above = cand[vals > kth]
            cand = np.concatenate([above, np.flatnonzero(scores == kth)[: kk - len(above)]])
            vals = scores[cand]
    else:
        cand = np.arange(n)
        vals = scores
    chosen = cand[np.lexsort((cand, -vals))]
    if not np.isfinite(vals).all():
        chosen = chosen[np.isfinite(scores[chosen])]
    if len(chosen) < k:
        chosen = np.concatenate([chosen, np.full(k - len(chosen), PAD, dtype=np.int64)])
    return chosen.astype(np.int64, copy=False)


def top_k_wide(block: np.ndarray, k: int) -> np.ndarray:
    """`top_k` of every row of a 2-D block (NaN-free), equal to it row by row, without partitioning whole rows.

    A row's k-th best score among every `stride`-th one, t, is at most its k-th best overall, so its top k are
    among the scores >= t: those above t ranked by `top_k` when there are k of them, else all of them followed
    by the lowest-index scores equal to t. A few hundred candidates instead of the whole row: ranking 100k
    scores that are mostly equal (item-item's zeros) took 3.6 ms by `top_k`, 0.14 ms this way.
    """
    n_rows, n = block.shape
    out = np.full((n_rows, k), PAD, dtype=np.int64)
    stride = max(1, n // (SAMPLE_PER_ITEM * k))
    sample = block[:, ::stride]
    if sample.shape[1] <= k or block.max(initial=-np.inf) == np.inf:  # (np.isposinf takes 3x longer)
        for r in range(n_rows):
            out[r] = top_k(block[r], k)
        return out
    cut = np.partition(sample, sample.shape[1] - k, axis=1)[:, sample.shape[1] - k]
    for r in range(n_rows):
        row, t = block[r], cut[r]
        if not np.isfinite(t):  # fewer than k finite scores in the sample: the whole row
            out[r] = top_k(row, k)
            continue
        above = np.flatnonzero(row > t)
        if len(above) >= k:
            out[r] = above[top_k(row[above], k)]
        else:
            ranked = above[np.lexsort((above, -row[above]))]
            out[r] = np.concatenate([ranked, np.flatnonzero(row == t)[: k - len(above)]])
    return out
