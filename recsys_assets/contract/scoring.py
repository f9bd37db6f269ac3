"""Scoring with plain NumPy/SciPy: the part of a model the API needs, with no training code.

A `Scorer` is a weighted blend of components (`components.Component`: popularity, item-item, embedding,
content, autoencoder, repeat), each of which scores every item for a user from that user's history (a sparse
row of event weights) and, for embedding models, a stored user vector.

Each component's scores are standardised per user (zero mean, unit variance over items) before the
blend, so weights compare across components; a component with nothing to say for a user (no
history, no vector) contributes zeros. Offline evaluation and the API call the same code, which is
why a served top-10 equals the offline one exactly: the API scores one user (`Scorer.score_one`), the
evaluation a batch (`Scorer.score_many`), whose every row equals the user's scores alone bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp

# the components are named from here too, where the blend is
from recsys_assets.contract.components import DENSE_LIMIT as DENSE_LIMIT
from recsys_assets.contract.components import KINDS as KINDS
from recsys_assets.contract.components import Component as Component
from recsys_assets.contract.topk import PAD, ROWS_AT_ONCE_BELOW, top_k, top_k_rows, top_k_wide

Truth: TypeAlias = sp.spmatrix | sp.sparray | Sequence[Iterable[int]]
# `Scorer.score_many` holds every component's scores of this many bytes of users at a time
CHUNK_BYTES = 64 << 20
# `topk_from_scores` ranks rows wider than `ROWS_AT_ONCE_BELOW` items this many bytes (float64) at a time
WIDE_BLOCK_BYTES = 8 << 20


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each row to zero mean and unit variance (a constant row to zeros), as the blend weighs components."""
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    ok = std[:, 0] > 1e-12
    if ok.all():  # the same values, without the masked form's copies of the whole block
        out = np.subtract(scores, mean)
        out /= std
        return out
    out = np.zeros_like(scores)
    out[ok] = (scores[ok] - mean[ok]) / std[ok]
    return out


# History-length buckets (distinct items in the user's history): the hybrid may weigh its
# components differently in each, e.g. popularity for a newcomer and collaborative for a regular.
BUCKET_EDGES = (0, 1, 6, 21)
BUCKETS = ("0", "1-5", "6-20", "20+")


def history_buckets(history: sp.csr_matrix) -> np.ndarray:
    """The bucket label of each history row."""
    n = np.diff(history.indptr)
    return np.asarray(BUCKETS)[np.searchsorted(np.asarray(BUCKET_EDGES), n, side="right") - 1]


def history_bucket(n: int) -> str:
    """The bucket label of a history of `n` items (`history_buckets` of one row, without NumPy's overhead)."""
    return BUCKETS[3 if n >= BUCKET_EDGES[3] else 2 if n >= BUCKET_EDGES[2] else 1 if n else 0]


@dataclass
class Scorer:
    """A weighted blend of components over one item index space.

    `weights` apply to every user unless `bucket_weights` has an entry for the user's history
    bucket (see `BUCKETS`), which then replaces them.
    """

    components: dict[str, Component]
    weights: dict[str, float]
    bucket_weights: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for w in (self.weights, *self.bucket_weights.values()):
            missing = set(w) - set(self.components)
            if missing:
                raise ValueError(f"weights name unknown components {sorted(missing)}")
        unknown = set(self.bucket_weights) - set(BUCKETS)
        if unknown:
            raise ValueError(f"unknown history buckets {sorted(unknown)}; known: {BUCKETS}")
        sizes = {c.n_items for c in self.components.values()}
        if len(sizes) != 1:
            raise ValueError(f"components disagree on the number of items: {sorted(sizes)}")

    @property
    def n_items(self) -> int:
        return next(iter(self.components.values())).n_items

    def weights_for(self, bucket: str) -> dict[str, float]:
        return self.bucket_weights.get(bucket, self.weights)

    def active(self, bucket: str) -> dict[str, float]:
        """The non-zero weights of `bucket`: the components that score a user whose history falls in it."""
        return {k: w for k, w in self.weights_for(bucket).items() if w != 0}

    def score_one(self, idx: np.ndarray, weights: np.ndarray, user: int = -1) -> np.ndarray:
        """Blended scores (n_items,) for one user: history item indices and weights, known user index or -1.

        The API scores through here; offline evaluation through `score_many`, whose rows equal this exactly.
        A lone component is returned unstandardised.
        """
        return self.score_parts(idx, weights, user)[0]

    def score_parts(
        self, idx: np.ndarray, weights: np.ndarray, user: int = -1
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`score_one` and each active component's weighted share of it (a lone component: all of it), which is
        what the API's reasons weigh."""
        active = self.active(history_bucket(len(idx)))
        return self._blend(active, {name: self.components[name].score_one(idx, weights, user) for name in active})

    def score_many(self, history: sp.csr_matrix, user_idx: np.ndarray | None = None) -> np.ndarray:
        """`score_one` of every row of `history` (float32, rows x items), bit for bit, a chunk of users at a time:
        each component scores the chunk's rows it is active for at once (`Component.score_many`)."""
        history = sp.csr_matrix(history)
        n_rows, n = history.shape[0], self.n_items
        users = np.full(n_rows, -1) if user_idx is None else np.asarray(user_idx)
        out = np.empty((n_rows, n), dtype=np.float32)
        buckets = history_buckets(history)
        active = {b: self.active(b) for b in BUCKETS}
        step = max(1, CHUNK_BYTES // (4 * max(n, 1) * len(self.components)))
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            chunk = buckets[start:stop]
            scores, slot = {}, {}  # each component's scores of the rows it is active for, and each row's place
            for name, component in self.components.items():
                rows = np.flatnonzero(np.isin(chunk, [b for b in BUCKETS if name in active[b]]))
                if len(rows):
                    scores[name] = component.score_many(history[start + rows], users[start + rows])
                    slot[name] = np.full(stop - start, -1)
                    slot[name][rows] = np.arange(len(rows))
            for r in range(stop - start):
                row = {name: scores[name][slot[name][r]] for name in active[chunk[r]]}
                out[start + r] = self._blend(active[chunk[r]], row)[0]
        return out

    def _blend(
        self, active: dict[str, float], scores: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One user's blend of the `active` components' `scores` and each one's share of it: a lone one as it is,
        else the weighted sum of the standardised ones, in the weights' order."""
        if len(active) == 1:
            (name,) = active
            return scores[name], {name: scores[name]}
        total = np.zeros(self.n_items, dtype=np.float32)
        parts = {}
        for name, w in active.items():
            parts[name] = np.float32(w) * standardise_one(scores[name])
            total += parts[name]
        return total, parts

    def topk_one(
        self,
        idx: np.ndarray,
        weights: np.ndarray,
        k: int,
        user: int = -1,
        exclude: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """Top-k item indices for one user, best first, -1 padded; ties go to the lower item index.

        `exclude` lists item indices never to return (e.g. seen items); `allowed` (bool per item)
        restricts the candidates (e.g. a category).
        """
        scores = self.score_one(idx, weights, user)
        if exclude is not None and len(exclude):
            scores[exclude] = -np.inf
        if allowed is not None:
            scores[~allowed] = -np.inf
        return top_k(scores, k)

    def score(self, history: sp.csr_matrix, user_idx: np.ndarray | None = None) -> np.ndarray:
        """Blended scores (n_users x n_items), one row at a time through `score_one` (`score_many` is faster)."""
        out = np.empty((history.shape[0], self.n_items), dtype=np.float32)
        for r in range(history.shape[0]):
            lo, hi = history.indptr[r], history.indptr[r + 1]
            user = -1 if user_idx is None else int(user_idx[r])
            out[r] = self.score_one(history.indices[lo:hi], history.data[lo:hi], user)
        return out

    def topk(
        self,
        history: sp.csr_matrix,
        k: int,
        user_idx: np.ndarray | None = None,
        exclude: sp.csr_matrix | None = None,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """Top-k item indices per user (rows of `history`), through `topk_one`; `exclude` rows hide items."""
        out = np.full((history.shape[0], k), -1, dtype=np.int64)
        ex = None if exclude is None else sp.csr_matrix(exclude)
        for r in range(history.shape[0]):
            lo, hi = history.indptr[r], history.indptr[r + 1]
            user = -1 if user_idx is None else int(user_idx[r])
            hide = None if ex is None else ex.indices[ex.indptr[r] : ex.indptr[r + 1]]
            out[r] = self.topk_one(history.indices[lo:hi], history.data[lo:hi], k, user, hide, allowed)
        return out


def standardise_one(scores: np.ndarray) -> np.ndarray:
    """One user's scores standardised as `Scorer.score_one` blends them (float32; a constant row to zeros)."""
    std = float(scores.std())
    if std <= 1e-12:
        return np.zeros_like(scores, dtype=np.float32)
    return ((scores - scores.mean()) / np.float32(std)).astype(np.float32, copy=False)


def truth_to_csr(truth: Truth, n_items: int | None = None) -> sp.csr_matrix:
    """The ground truth as a binary CSR matrix (n_users x n_items) with sorted, unique indices.

    Any stored non-zero counts as a positive (repeated events on one item are one positive, as in
    RecBole, whose positives are a set). A list of index arrays needs `n_items` unless the largest
    index + 1 is the catalog size.
    """
    if sp.issparse(truth):
        m = sp.csr_matrix(truth, dtype=np.float64, copy=True)
        m.sum_duplicates()
        m.eliminate_zeros()
        if n_items is not None and n_items != m.shape[1]:
            if n_items < m.shape[1]:
                raise ValueError(f"truth has {m.shape[1]} item columns, more than n_items={n_items}")
            m.resize((m.shape[0], n_items))
    else:
        rows = [np.asarray(list(r) if not isinstance(r, np.ndarray) else r, dtype=np.int64).ravel() for r in truth]
        lengths = np.fromiter((r.size for r in rows), dtype=np.int64, count=len(rows))
        cols = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        if cols.size and cols.min() < 0:
            raise ValueError("truth item indices must be >= 0")
        width = int(cols.max()) + 1 if cols.size else 0
        if n_items is None:
            n_items = width
        elif width > n_items:
            raise ValueError(f"truth has item index {width - 1} >= n_items={n_items}")
        user_of = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        m = sp.csr_matrix((np.ones(cols.size), (user_of, cols)), shape=(len(rows), n_items))
        m.sum_duplicates()
    m.data = np.ones(m.nnz, dtype=np.int8)
    m.sort_indices()
    return m


def topk_from_scores(
    scores: np.ndarray | sp.spmatrix | sp.sparray,
    k: int,
    exclude: sp.spmatrix | sp.sparray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Top-k item indices per user from an n_users x n_items score matrix, best first.

    Items stored in `exclude` (e.g. training items, see `exclusion_matrix`) and items scored -inf or
    NaN are never recommended; when fewer than k items remain the row ends with ``-1`` padding. A
    sparse score matrix is densified one batch of users at a time (absent entries score 0). Equal
    scores are ordered by item index, at the k-th place too (see `top_k`), so the result is deterministic.
    """
    n_users, n_items = scores.shape
    if k < 1:
        raise ValueError("k must be >= 1")
    if exclude is not None:
        exclude = truth_to_csr(exclude)
        if exclude.shape != (n_users, n_items):
            raise ValueError(f"exclude has shape {exclude.shape}, scores have {(n_users, n_items)}")
    out = np.full((n_users, k), PAD, dtype=np.int64)
    if n_items > ROWS_AT_ONCE_BELOW:  # wide rows: a few MB at a time (copied, masked and ranked while in cache)
        batch_size = max(1, min(batch_size, WIDE_BLOCK_BYTES // (8 * n_items)))
    for start in range(0, n_users, batch_size):
        stop = min(start + batch_size, n_users)
        part_scores: Any = scores[start:stop]
        block = part_scores.toarray() if sp.issparse(part_scores) else np.asarray(part_scores)
        block = np.array(block, dtype=np.result_type(block.dtype, np.float32))
        block[np.isnan(block)] = -np.inf
        if exclude is not None:
            part = exclude[start:stop]
            block[np.repeat(np.arange(stop - start), np.diff(part.indptr)), part.indices] = -np.inf
        out[start:stop] = top_k_rows(block, k) if n_items <= ROWS_AT_ONCE_BELOW else top_k_wide(block, k)
    return out
