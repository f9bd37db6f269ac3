"""A batch of users' scores at once, equal bit for bit to the scorer's one-user path (`Component.score_one`,
`Scorer.score_one`), for the components whose batched form sums the same terms in the same order.

Evaluation over a large catalog scores thousands of users; the one-user path pays a sparse row slice and
product per user (and at 1M items a pass over every item's row per user). Above `DENSE_LIMIT` items:

* `item_item`: the batch's histories (0/1 when the component is binary) times the sparse neighbour matrix:
  each score sums the similarity rows of the user's items in index order, in float32, as `score_one` does;
* `content`: the batch's profiles in one sparse product (each as `score_one` builds it), every item's
  cosine in one product with the dense profiles (items x users: each item's sum runs over its features in
  the stored order, as `score_one`'s product does), each profile's norm taken as `score_one` takes it;
* `popularity`: the same row for everyone; `repeat` (BuyAgain): its tail row, the user's own items set on it.

Any other component (embeddings: BLAS sums in its own order; small catalogs, whose one-user path keeps dense
matrices) has no batched form here: `component_scores` returns None and the caller scores user by user.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.scoring import BUCKETS, DENSE_LIMIT, Component, Scorer, history_buckets, standardise_one

CHUNK_BYTES = 64 << 20  # every component's scores of one chunk of users, together


def batched(component: Component) -> bool:
    """Whether `component_scores` has a batched form of `component`."""
    kind = component.kind
    return kind in ("popularity", "repeat") or (kind in ("item_item", "content") and component.n_items > DENSE_LIMIT)


def component_scores(
    component: Component, history: sp.csr_matrix, user_idx: np.ndarray | None = None
) -> np.ndarray | None:
    """`component.score_one` of every row of `history` (float32, rows x items; `user_idx`: the rows' known user
    indices, None for none), or None without a batched form."""
    if not batched(component):
        return None
    cache = component._cache()
    if component.kind == "popularity":
        return np.broadcast_to(cache["pop"], (history.shape[0], component.n_items)).copy()
    if component.kind == "repeat":
        return _repeat_scores(cache, sp.csr_matrix(history), user_idx)
    hist = sp.csr_matrix(history, dtype=np.float32, copy=True)
    if component.kind == "item_item":
        if component.params.get("binary"):
            hist.data[:] = 1.0
        return (hist @ cache["sim"]).toarray()
    feats = cache["feats"]
    hist.eliminate_zeros()  # as the one-user path's row of weights, built from a dense vector
    profiles = sp.csr_matrix(hist @ feats)
    raw = np.ascontiguousarray((feats @ profiles.T.toarray()).T)
    for r in range(raw.shape[0]):
        row = profiles[r]
        norm2 = float(row.multiply(row).sum())
        raw[r] = raw[r] / np.float32(np.sqrt(norm2)) if norm2 > 0 else 0.0
    return raw


def _repeat_scores(cache: dict, history: sp.csr_matrix, user_idx: np.ndarray | None) -> np.ndarray:
    """BuyAgain's scores as `Component._repeat_one` gives them: the tail (popularity) everywhere, and on the
    user's own items (the history's weights, then the stored recency of a known user over them) 1 + weight x
    repurchase rate where that is positive, each product in float32 as there."""
    tail, rec, rate = cache["tail"], cache["recency"], cache["rate"]
    out = np.broadcast_to(tail, (history.shape[0], len(tail))).copy()
    for r in range(history.shape[0]):
        lo, hi = history.indptr[r], history.indptr[r + 1]
        pos, val = history.indices[lo:hi], history.data[lo:hi].astype(np.float32)
        user = -1 if user_idx is None else int(user_idx[r])
        if 0 <= user < rec.shape[0]:  # the stored recency overrides the history's weights
            a, b = rec.indptr[user], rec.indptr[user + 1]
            pos, val = np.concatenate([pos, rec.indices[a:b]]), np.concatenate([val, rec.data[a:b]])
            pos, last = np.unique(pos[::-1], return_index=True)
            val = val[::-1][last]
        own = val * rate[pos]
        mine = own > 0
        out[r, pos[mine]] = np.float32(1.0) + own[mine]
    return out


def scorer_scores(scorer: Scorer, history: sp.csr_matrix, user_idx: np.ndarray | None = None) -> np.ndarray | None:
    """`scorer.score(history, user_idx)`, a chunk of users at a time, or None when a component has no batched
    form. Each row blends as `Scorer.score_one` does: the
    weights of the row's history bucket, a lone component unstandardised, else the weighted sum of the
    standardised components in the weights' order."""
    if not all(batched(c) for c in scorer.components.values()):
        return None
    n_rows, n = history.shape[0], scorer.n_items
    out = np.empty((n_rows, n), dtype=np.float32)
    buckets = history_buckets(history)
    weights = {b: {k: w for k, w in scorer.weights_for(b).items() if w != 0} for b in BUCKETS}
    step = max(1, CHUNK_BYTES // (4 * max(n, 1) * len(scorer.components)))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        users = None if user_idx is None else user_idx[start:stop]
        parts = {name: component_scores(c, history[start:stop], users) for name, c in scorer.components.items()}
        for r in range(start, stop):
            active = weights[buckets[r]]
            if len(active) == 1:
                out[r] = parts[next(iter(active))][r - start]
                continue
            total = np.zeros(n, dtype=np.float32)
            for name, w in active.items():
                total += np.float32(w) * standardise_one(parts[name][r - start])
            out[r] = total
    return out
