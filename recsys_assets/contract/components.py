"""Scoring components with plain NumPy/SciPy: what each kind of model contributes to a blend (`scoring.Scorer`).

A component scores every item for a user from that user's history (a sparse row of event weights) and, for
embedding models, a stored user vector:

* `popularity`: training popularity, the same for everyone (the cold-start fallback);
* `item_item`: history @ S for an item-item matrix S (ItemKNN, EASE);
* `embedding`: U[u] @ V.T for users known at training time, and a least-squares fold-in of the
  history onto V for users who are not (BPR, LightGCN);
* `content`: cosine between the user's event-weighted profile and each item's TF-IDF vector;
* `autoencoder`: Mult-VAE's encoder and decoder applied to the user's 0/1 history (MultiVAE);
* `repeat`: the user's own items first ("buy again": time-decayed frequency at training time, times each
  item's repurchase rate; items only in the given history count undecayed), then training popularity.

Each kind has one way of computing its scores. Popularity, repeat, and item-item and content above
`DENSE_LIMIT` items compute a batch of users at once (`Component.score_many`), and one user is a batch of one;
the others (embeddings, the autoencoder, the dense item-item and content forms of small catalogs) compute one
user at a time (`Component.score_one`), and a batch is their rows one by one. Either way a row of a batch is
bit for bit the user's scores alone, so offline evaluation (batches) ranks exactly as the API (one user).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

KINDS = ("popularity", "item_item", "embedding", "content", "autoencoder", "repeat")
# Catalogs up to this size keep item x item matrices dense for the one-user path (5,000 items: 100 MB).
DENSE_LIMIT = 5_000


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
            return self.score_many(history, user_idx).astype(np.float64)
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

    # -- one user, and a batch ---------------------------------------------------------------------

    def _cache(self) -> dict[str, Any]:
        """Arrays in the layout scoring reads fastest, built once per component."""
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

    @property
    def batched(self) -> bool:
        """Whether the component computes a batch of users at once (`score_many`), a user alone as a batch of one."""
        kind = self.kind
        return kind in ("popularity", "repeat") or (kind in ("item_item", "content") and self.n_items > DENSE_LIMIT)

    def score_one(self, idx: np.ndarray, weights: np.ndarray, user: int = -1) -> np.ndarray:
        """Unnormalised scores (n_items,) for one user from their history (item indices and weights, in any order)
        and known user index (-1: none): a batch of one when the component is `batched`."""
        if self.batched:
            one = np.array([0, len(idx)])
            return self._score_batch(one, np.asarray(idx), np.asarray(weights), np.array([user]))[0]
        c = self._cache()
        w = np.asarray(weights, dtype=np.float32)
        if self.kind == "item_item":  # a dense similarity matrix (see `batched`)
            if len(idx) == 0:
                return np.zeros(self.n_items, dtype=np.float32)
            rows = c["sim"][idx]
            return rows.sum(axis=0) if self.params.get("binary") else w @ rows
        if self.kind == "content":  # cosine via the item-item Gram matrix
            if len(idx) == 0:
                return np.zeros(self.n_items, dtype=np.float32)
            cols = c["gram"][idx]  # (h, n) rows = columns by symmetry
            raw = w @ cols
            norm2 = float(w @ cols[:, idx] @ w)
            return raw / np.float32(np.sqrt(norm2)) if norm2 > 0 else np.zeros(self.n_items, dtype=np.float32)
        if self.kind == "embedding":
            vec = self.user_vector(idx, w, user)
            return np.zeros(self.n_items, dtype=np.float32) if vec is None else c["items"] @ vec
        last = int(self.params["n_dec"]) - 1
        return self.autoencoder_hidden(idx) @ c[f"dec_w{last}"].T + c[f"dec_b{last}"]

    def score_many(self, history: sp.csr_matrix, user_idx: np.ndarray | None = None) -> np.ndarray:
        """`score_one` of every row of `history` (float32, rows x items), bit for bit; `user_idx`: the rows' known
        user indices (-1 for none), None when no row has one. Without a batched form, one row at a time."""
        history = sp.csr_matrix(history)
        n_rows = history.shape[0]
        users = np.full(n_rows, -1) if user_idx is None else np.asarray(user_idx)
        if self.batched:
            return self._score_batch(history.indptr, history.indices, history.data, users)
        out = np.empty((n_rows, self.n_items), dtype=np.float32)
        for r in range(n_rows):
            lo, hi = history.indptr[r], history.indptr[r + 1]
            out[r] = self.score_one(history.indices[lo:hi], history.data[lo:hi], int(users[r]))
        return out

    def _score_batch(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, users: np.ndarray) -> np.ndarray:
        """The batched kinds' scores (float32, rows x items) of histories in CSR form (`indptr`, `indices`, `data`,
        kept in their order) and the rows' known user indices (-1: none).

        * `popularity`: the same row for everyone; `repeat`: its tail row, the user's own items set on it;
        * `item_item`: the histories (0/1 when the component is binary) times the sparse neighbour matrix: each
          score sums the similarity rows of the user's items in history order, in float32;
        * `content`: the profiles in one sparse product, every item's cosine in one product with the dense
          profiles (items x users: each item's sum runs over its features in the stored order), each profile's
          norm from its own sparse row. Every sum is one row's own, so a row's scores do not depend on the batch.
        """
        c = self._cache()
        n_rows = len(indptr) - 1
        if self.kind == "popularity":
            return np.broadcast_to(c["pop"], (n_rows, self.n_items)).copy()
        if self.kind == "repeat":
            return self._repeat_batch(c, indptr, indices, np.asarray(data, dtype=np.float32), users)
        # a copy: the caller's arrays (the API's are views of the artifact's history) are changed below
        hist = sp.csr_matrix((np.asarray(data, dtype=np.float32), indices, indptr), (n_rows, self.n_items), copy=True)
        if self.kind == "item_item":
            if self.params.get("binary"):  # models trained on implicit feedback (RecBole's) score a 0/1 history
                hist.data[:] = 1.0
            return (hist @ c["sim"]).toarray()
        feats = c["feats"]
        hist.eliminate_zeros()  # an event of weight 0 adds no feature to the profile, not even a stored zero
        profiles = sp.csr_matrix(hist @ feats)
        raw = np.ascontiguousarray((feats @ profiles.T.toarray()).T)
        for r in range(n_rows):
            row = profiles[r]
            norm2 = float(row.multiply(row).sum())
            raw[r] = raw[r] / np.float32(np.sqrt(norm2)) if norm2 > 0 else 0.0
        return raw

    def _repeat_batch(
        self, c: dict[str, Any], indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, users: np.ndarray
    ) -> np.ndarray:
        """BuyAgain: the tail (popularity, below 1) everywhere; on the user's own items 1 + weight x repurchase
        rate where that is positive. A known user's stored (decayed) recency overrides the history's weight of
        an item, and of an item listed twice the last weight counts; each product in float32."""
        tail, rec, rate = c["tail"], c["recency"], c["rate"]
        out = np.broadcast_to(tail, (len(indptr) - 1, len(tail))).copy()
        for r in range(len(indptr) - 1):
            pos, val = indices[indptr[r] : indptr[r + 1]], data[indptr[r] : indptr[r + 1]]
            user = int(users[r])
            if 0 <= user < rec.shape[0]:  # an item not in the stored recency (a live event) counts undecayed
                lo, hi = rec.indptr[user], rec.indptr[user + 1]
                pos, val = np.concatenate([pos, rec.indices[lo:hi]]), np.concatenate([val, rec.data[lo:hi]])
            if len(pos) > 1:
                pos, last = np.unique(pos[::-1], return_index=True)
                val = val[::-1][last]
            own = val * rate[pos]
            mine = own > 0
            out[r, pos[mine]] = np.float32(1.0) + own[mine]
        return out

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
        top = float(w.max())
        if top <= 0:  # nothing liked (e.g. ratings of 0): no preference to fold in
            return np.zeros(items.shape[1], dtype=np.float32)
        v = items[idx].astype(np.float64)
        a = v.T @ v + reg * np.eye(v.shape[1])
        return np.linalg.solve(a, v.T @ (w / top)).astype(np.float32)

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
            if w.max() <= 0:
                continue
            # rank-1 targets: the user likes these items in proportion to their weights
            a = v.T @ v + reg * np.eye(v.shape[1])
            out[r] = np.linalg.solve(a, v.T @ (w / w.max()))
        return out
