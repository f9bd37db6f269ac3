"""Scoring with plain NumPy/SciPy: the part of a model the API needs, with no training code.

A `Scorer` is a weighted blend of components, each of which scores every item for a user from that
user's history (a sparse row of event weights) and, for embedding models, a stored user vector:

* `popularity`: training popularity, the same for everyone (the cold-start fallback);
* `item_item`: history @ S for an item-item matrix S (ItemKNN, EASE);
* `embedding`: U[u] @ V.T for users known at training time, and a least-squares fold-in of the
  history onto V for users who are not (BPR, LightGCN);
* `content`: cosine between the user's event-weighted profile and each item's TF-IDF vector;
* `autoencoder`: Mult-VAE's encoder and decoder applied to the user's 0/1 history (MultiVAE);
* `repeat`: the user's own items first ("buy again": time-decayed frequency at training time, times each
  item's repurchase rate; items only in the given history count undecayed), then training popularity.

Each component's scores are standardised per user (zero mean, unit variance over items) before the
blend, so weights compare across components; a component with nothing to say for a user (no
history, no vector) contributes zeros. Offline evaluation and the API call the same code, which is
why a served top-10 equals the offline one exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.topk import PAD, ROWS_AT_ONCE_BELOW, top_k, top_k_rows, top_k_wide

Truth: TypeAlias = sp.spmatrix | sp.sparray | Sequence[Iterable[int]]
KINDS = ("popularity", "item_item", "embedding", "content", "autoencoder", "repeat")
# Catalogs up to this size keep item x item matrices dense for the one-user path (5,000 items: 100 MB).
DENSE_LIMIT = 5_000
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


@dataclass
class Component:
    """One scoring component; `arrays` holds everything it needs, by name."""

    kind: str
    arrays: dict[str, np.ndarray | sp.csr_matrix] = field(default_factory=dict)
    params: dict[str, float | int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown component kind {self.kind!r}; known: {KINDS}")

    @property
    def n_items(self) -> int:
        a = {
            "popularity": "popularity",
            "repeat": "popularity",
            "item_item": "similarity",
            "embedding": "item_factors",
            "content": "item_features",
            "autoencoder": f"dec_w{int(self.params.get('n_dec', 1)) - 1}",
        }[self.kind]
        return self.arrays[a].shape[0]

    def raw_scores(self, history: sp.csr_matrix, user_idx: np.ndarray | None) -> np.ndarray:
        """Unnormalised scores (n_users x n_items) from histories and (optional) known user indices."""
        n = history.shape[0]
        if self.kind == "popularity":
            return np.broadcast_to(self.arrays["popularity"].astype(np.float64), (n, self.n_items)).copy()
        if self.kind == "item_item":
            # models trained on implicit feedback (RecBole's) score from a 0/1 history
            h = history.sign() if self.params.get("binary") else history
            return np.asarray((h @ self.arrays["similarity"]).todense(), dtype=np.float64)
        if self.kind == "content":
            feats: sp.csr_matrix = self.arrays["item_features"]
            profile = history @ feats
            norms = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1))).ravel()
            norms[norms == 0] = 1.0
            profile = sp.diags(1.0 / norms) @ profile
            return np.asarray((profile @ feats.T).todense(), dtype=np.float64)
        if self.kind == "autoencoder":
            return self._autoencode(history)
        if self.kind == "repeat":
            users = np.full(n, -1) if user_idx is None else np.asarray(user_idx)
            out = np.zeros((n, self.n_items))
            for r in range(n):
                lo, hi = history.indptr[r], history.indptr[r + 1]
                out[r] = self.score_one(history.indices[lo:hi], history.data[lo:hi], int(users[r]))
            return out
        # embedding
        item_f = self.arrays["item_factors"].astype(np.float64)
        user_f = self.arrays["user_factors"].astype(np.float64)
        vecs = np.zeros((n, item_f.shape[1]))
        known = np.zeros(n, dtype=bool)
        if user_idx is not None:
            known = (user_idx >= 0) & (user_idx < user_f.shape[0])
            vecs[known] = user_f[user_idx[known]]
        if (~known).any():
            vecs[~known] = self.fold_in(history[np.flatnonzero(~known)])
        return vecs @ item_f.T

    def _autoencode(self, history: sp.csr_matrix) -> np.ndarray:
        """Mult-VAE at inference: L2-normalised 0/1 history -> encoder mean -> decoder logits."""
        x = np.asarray(history.sign().todense(), dtype=np.float64)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, 1e-12)
        n_enc, n_dec = int(self.params["n_enc"]), int(self.params["n_dec"])
        for i in range(n_enc):
            x = x @ self.arrays[f"enc_w{i}"].T.astype(np.float64) + self.arrays[f"enc_b{i}"]
            if i < n_enc - 1:
                x = np.tanh(x)
        x = x[:, : int(self.params["latent"])]  # the mean; the other half is the log-variance
        for i in range(n_dec):
            x = x @ self.arrays[f"dec_w{i}"].T.astype(np.float64) + self.arrays[f"dec_b{i}"]
            if i < n_dec - 1:
                x = np.tanh(x)
        return x

    # -- one user ---------------------------------------------------------------------------------

    def _cache(self) -> dict[str, Any]:
        """Arrays in the layout the one-user path reads fastest, built once per component."""
        cache = self.__dict__.get("_fast")
        if cache is not None:
            return cache
        cache = {}
        n = self.n_items
        if self.kind == "popularity":
            cache["pop"] = np.asarray(self.arrays["popularity"], dtype=np.float32)
        elif self.kind == "repeat":
            pop = np.asarray(self.arrays["popularity"], dtype=np.float64)
            # below 1, so every item of the user's own history (scored 1 + s, s > 0) ranks first
            cache["tail"] = (pop / (pop.max(initial=0.0) + 1.0)).astype(np.float32)
            cache["recency"] = sp.csr_matrix(self.arrays["recency"], dtype=np.float32)
            cache["rate"] = np.asarray(self.arrays["repurchase_rate"], dtype=np.float32)
        elif self.kind == "item_item":
            sim: sp.csr_matrix = self.arrays["similarity"]
            cache["sim"] = (
                sim.toarray().astype(np.float32) if n <= DENSE_LIMIT else sp.csr_matrix(sim, dtype=np.float32)
            )
        elif self.kind == "content":
            feats = sp.csr_matrix(self.arrays["item_features"], dtype=np.float32)
            cache["feats"] = feats
            if n <= DENSE_LIMIT:  # cosine via the item-item Gram matrix: X x_p = sum_j w_j (X X^T)[:, j]
                cache["gram"] = (feats @ feats.T).toarray().astype(np.float32)
        elif self.kind == "embedding":
            cache["users"] = np.asarray(self.arrays["user_factors"], dtype=np.float32)
            cache["items"] = np.asarray(self.arrays["item_factors"], dtype=np.float32)
        else:
            cache.update({k: np.asarray(v, dtype=np.float32) for k, v in self.arrays.items()})
            cache["enc_w0_t"] = np.ascontiguousarray(cache["enc_w0"].T)  # one row per item: a cheap gather
        self.__dict__["_fast"] = cache
        return cache

    def score_one(self, idx: np.ndarray, weights: np.ndarray, user: int = -1) -> np.ndarray:
        """Unnormalised scores (n_items,) for one user from their history (item indices and weights)."""
        c = self._cache()
        w = np.asarray(weights, dtype=np.float32)
        if self.kind == "popularity":
            return c["pop"].copy()
        if self.kind == "repeat":
            return self._repeat_one(c, idx, w, user)
        if self.kind == "item_item":
            if len(idx) == 0:
                return np.zeros(self.n_items, dtype=np.float32)
            rows = c["sim"][idx]
            if isinstance(rows, np.ndarray):
                return rows.sum(axis=0) if self.params.get("binary") else w @ rows
            w = np.ones_like(w) if self.params.get("binary") else w
            return np.asarray(rows.T @ w, dtype=np.float32).ravel()
        if self.kind == "content":
            if len(idx) == 0:
                return np.zeros(self.n_items, dtype=np.float32)
            if "gram" in c:
                cols = c["gram"][idx]  # (h, n) rows = columns by symmetry
                raw = w @ cols
                norm2 = float(w @ cols[:, idx] @ w)
            else:
                profile = sp.csr_matrix(w[None, :]) @ c["feats"][idx]
                raw = np.asarray((c["feats"] @ profile.T).todense(), dtype=np.float32).ravel()
                norm2 = float(profile.multiply(profile).sum())
            return raw / np.float32(np.sqrt(norm2)) if norm2 > 0 else np.zeros(self.n_items, dtype=np.float32)
        if self.kind == "embedding":
            vec = self.user_vector(idx, w, user)
            return np.zeros(self.n_items, dtype=np.float32) if vec is None else c["items"] @ vec
        last = int(self.params["n_dec"]) - 1
        return self.autoencoder_hidden(idx) @ c[f"dec_w{last}"].T + c[f"dec_b{last}"]

    def autoencoder_hidden(self, idx: np.ndarray) -> np.ndarray:
        """Mult-VAE's activations before its output layer, for one 0/1 history (item indices)."""
        c = self._cache()
        # the first layer on a normalised 0/1 history is a sum of columns
        x = (
            c["enc_w0_t"][idx].sum(axis=0) / np.float32(np.sqrt(len(idx)))
            if len(idx)
            else np.zeros(c["enc_w0"].shape[0], dtype=np.float32)
        )
        x = x + c["enc_b0"]
        n_enc, n_dec = int(self.params["n_enc"]), int(self.params["n_dec"])
        for i in range(1, n_enc):
            x = np.tanh(x) @ c[f"enc_w{i}"].T + c[f"enc_b{i}"]
        x = x[: int(self.params["latent"])]
        for i in range(n_dec - 1):
            x = np.tanh(x @ c[f"dec_w{i}"].T + c[f"dec_b{i}"])
        return x

    def _repeat_one(self, c: dict[str, Any], idx: np.ndarray, w: np.ndarray, user: int) -> np.ndarray:
        own = np.zeros(self.n_items, dtype=np.float32)
        # events not in the stored recency (live ones, or a user unknown at training time) are fresh: undecayed
        own[np.asarray(idx, dtype=np.int64)] = w
        rec: sp.csr_matrix = c["recency"]
        if 0 <= user < rec.shape[0]:
            lo, hi = rec.indptr[user], rec.indptr[user + 1]
            own[rec.indices[lo:hi]] = rec.data[lo:hi]
        own *= c["rate"]
        return np.where(own > 0, np.float32(1.0) + own, c["tail"])

    def user_vector(self, idx: np.ndarray, weights: np.ndarray, user: int = -1) -> np.ndarray | None:
        """An embedding component's vector for one user (stored, or folded in), None when it has none."""
        c = self._cache()
        if 0 <= user < c["users"].shape[0]:
            return c["users"][user]
        if len(idx):
            return self._fold_in_one(c["items"], idx, np.asarray(weights, dtype=np.float32))
        return None

    def _fold_in_one(self, items: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        reg = float(self.params.get("fold_in_reg", 0.1))
        v = items[idx].astype(np.float64)
        a = v.T @ v + reg * np.eye(v.shape[1])
        return np.linalg.solve(a, v.T @ (w / w.max())).astype(np.float32)

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """User vectors for histories not seen in training: ridge regression onto the item factors."""
        item_f = self.arrays["item_factors"].astype(np.float64)
        reg = float(self.params.get("fold_in_reg", 0.1))
        out = np.zeros((history.shape[0], item_f.shape[1]))
        for r in range(history.shape[0]):
            lo, hi = history.indptr[r], history.indptr[r + 1]
            if lo == hi:
                continue
            v = item_f[history.indices[lo:hi]]
            w = history.data[lo:hi].astype(np.float64)
            # rank-1 targets: the user likes these items in proportion to their weights
            a = v.T @ v + reg * np.eye(v.shape[1])
            out[r] = np.linalg.solve(a, v.T @ (w / w.max()))
        return out


# History-length buckets (distinct items in the user's history): the hybrid may weigh its
# components differently in each, e.g. popularity for a newcomer and collaborative for a regular.
BUCKET_EDGES = (0, 1, 6, 21)
BUCKETS = ("0", "1-5", "6-20", "20+")


def history_buckets(history: sp.csr_matrix) -> np.ndarray:
    """The bucket label of each history row."""
    n = np.diff(history.indptr)
    return np.asarray(BUCKETS)[np.searchsorted(np.asarray(BUCKET_EDGES), n, side="right") - 1]


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

    def score_one(self, idx: np.ndarray, weights: np.ndarray, user: int = -1) -> np.ndarray:
        """Blended scores (n_items,) for one user: history item indices and weights, known user index or -1.

        This is the only scoring path: offline evaluation and the API both come through it, so they agree
        exactly. A lone component is returned unstandardised.
        """
        n = len(idx)
        bucket = BUCKETS[3 if n >= BUCKET_EDGES[3] else 2 if n >= BUCKET_EDGES[2] else 1 if n else 0]
        active = {k: w for k, w in self.weights_for(bucket).items() if w != 0}
        if len(active) == 1:
            (name,) = active
            return self.components[name].score_one(idx, weights, user)
        total = np.zeros(self.n_items, dtype=np.float32)
        for name, w in active.items():
            total += np.float32(w) * standardise_one(self.components[name].score_one(idx, weights, user))
        return total

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
        """Blended scores (n_users x n_items), one row at a time through `score_one`."""
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
