"""The candidate path: above a catalog size, a list is scored exactly on a few hundred candidates.

Scoring every item with every component costs time in proportion to the catalog (about 20 ms per
list at a million items). Above `candidate_threshold_items` a `Retriever` first draws candidates:

* for an embedding (or Mult-VAE) component, the approximate nearest neighbours by inner product of
  the user's vector, from a usearch HNSW index built when the artifact was made (`<name>.ann`);
* for an item-item component, the items its neighbour lists reach from the user's history;
* the most popular items (a fallback that is always there);
* for a content component, the best matches among the items of largest weight in each of the user's
  terms (`<name>.term_items`, `term_lists`), and among the cold items (no training events,
  `<name>.cold`), which no collaborative component can surface;

then blends the components on those candidates only, with the same arithmetic as `Scorer`. The
standardisation is the exact one, not one over the candidates: each component's per-user mean and
standard deviation over *all* items come from moments stored at training time (the mean item vector
and the second-moment matrix `A^T A / n` of the item matrix, so mean = q.m and E[s^2] = q^T G q for a
user vector q; for content, q is the user's normalised term profile, and G is stored dense up to
`CONTENT_GRAM_LIMIT` terms and sparse above, e.g. a shop's thousands of categories; for item-item the
user's sparse score row itself). A candidate's score is therefore the
score the exact path gives it, whichever other candidates were drawn; what the approximation can
lose is only a top item that no source proposed. Below the threshold the exact path serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.scoring import DENSE_LIMIT, Component, Scorer, history_bucket
from recsys_assets.contract.topk import top_k

VECTOR_KINDS = ("embedding", "autoencoder")
# content moments are a vocabulary x vocabulary matrix: stored dense up to this vocabulary (8 MB)
CONTENT_GRAM_LIMIT = 1_024
# above it (a shop's thousands of categories), stored sparse when it has at most this many entries (~24 MB);
# building it costs one product per pair of an item's terms, bounded by SPARSE_GRAM_WORK first
SPARSE_GRAM_LIMIT = 2_000_000
SPARSE_GRAM_WORK = 100_000_000
# a request's content profile is also made dense (for products with feature rows) up to this vocabulary
DENSE_PROFILE_LIMIT = 1 << 16
# content candidates: each term's items of largest weight (its "champion list"), this many per term
CONTENT_PER_TERM = 200
# cold items whose content scores are computed per request (the rest are reached by other sources)
MAX_COLD = 20_000
# HNSW search breadth (never below the candidates asked for). At 1M items (`expansion_add` 128) the
# candidate path's recall@10 is 0.974 at 256 and 0.972 at 200, for 27% less search time, the largest
# single cost of a list there (docs/benchmarks.md, "Serving at scale, re-measured"); 0.986 at 100k (256)
ANN_EXPANSION = 200


def item_matrix(component: Component) -> np.ndarray:
    """The rows whose inner product with the user's query vector is the component's score."""
    if component.kind == "embedding":
        return np.asarray(component.arrays["item_factors"], dtype=np.float32)
    last = int(component.params["n_dec"]) - 1
    w = np.asarray(component.arrays[f"dec_w{last}"], dtype=np.float32)
    b = np.asarray(component.arrays[f"dec_b{last}"], dtype=np.float32)
    return np.hstack([w, b[:, None]])  # the bias as one more dimension, queried with a 1


def moments(component: Component, chunk: int = 65_536) -> dict[str, np.ndarray]:
    """Training-time statistics from which a user's mean and spread of scores over all items follow."""
    if component.kind == "popularity":
        pop = np.asarray(component.arrays["popularity"], dtype=np.float32)
        return {"stats": np.asarray([pop.mean(), pop.std()], dtype=np.float64)}
    if component.kind in VECTOR_KINDS:
        a = item_matrix(component)
        mean = np.zeros(a.shape[1])
        gram = np.zeros((a.shape[1], a.shape[1]))
        for lo in range(0, a.shape[0], chunk):
            part = a[lo : lo + chunk].astype(np.float64)
            mean += part.sum(axis=0)
            gram += part.T @ part
        return {"mean": mean / a.shape[0], "gram": gram / a.shape[0]}
    if component.kind == "content":
        feats = sp.csr_matrix(component.arrays["item_features"], dtype=np.float64)
        n, vocabulary = feats.shape
        mean = np.asarray(feats.sum(axis=0)).ravel() / n
        if vocabulary <= CONTENT_GRAM_LIMIT:
            return {"mean": mean, "gram": (feats.T @ feats).toarray() / n}
        if int(np.square(np.diff(feats.indptr), dtype=np.int64).sum()) > SPARSE_GRAM_WORK:
            return {}  # many terms per item (words of long texts): scored over the catalog per request
        gram = sp.csr_matrix(feats.T @ feats) / n
        if gram.nnz > SPARSE_GRAM_LIMIT:
            return {}
        return {"mean": mean, "gram_data": gram.data, "gram_indices": gram.indices, "gram_indptr": gram.indptr}
    return {}


def term_lists(component: Component, per_term: int = CONTENT_PER_TERM) -> dict[str, np.ndarray]:
    """A content component's champion lists (Manning, Raghavan and Schuetze, Introduction to Information
    Retrieval, 7.1.3): each term's `per_term` items of largest weight, ties to the lowest index, as the
    exact path breaks them. `term_items` holds them term after term, `term_indptr` where each term's start.
    A user's content candidates are the best of the lists of the terms in their profile: exact for items
    whose score comes from one term (one category); an item that matches the profile on several terms but
    is in no list's top is what the approximation can miss."""
    feats = sp.csc_matrix(component.arrays["item_features"], dtype=np.float32)
    counts = np.diff(feats.indptr)
    column = np.repeat(np.arange(feats.shape[1]), counts)
    # by column, then weight (largest first), then item: each column keeps its place in the layout
    order = np.lexsort((feats.indices, -feats.data, column))
    rank = np.arange(len(order)) - np.repeat(feats.indptr[:-1], counts)
    kept = np.minimum(counts, per_term)
    return {
        "term_items": feats.indices[order[rank < per_term]].astype(np.int32),
        "term_indptr": np.concatenate([[0], np.cumsum(kept)]).astype(np.int64),
    }


def cold_items(history: sp.csr_matrix, limit: int = MAX_COLD) -> np.ndarray:
    """Items nobody has an event on (the last `limit` of them by index: the newest, in a catalog
    that appends new items)."""
    cold = np.flatnonzero(np.diff(sp.csc_matrix(history).indptr) == 0)
    return cold[-limit:].astype(np.int64)


@dataclass
class _Prepared:
    """One component's per-request state: what its scores on any item and its statistics come from."""

    full: np.ndarray | None = None  # every item's raw score (small catalogs, popularity)
    vec: np.ndarray | None = None  # the query vector (embedding, Mult-VAE hidden layer)
    row: sp.csr_matrix | None = None  # item-item: the 1 x n sparse score row
    profile: sp.csr_matrix | None = None  # content: the normalised 1 x vocabulary profile
    dense_profile: np.ndarray | None = None  # content: the same over the whole vocabulary (up to DENSE_PROFILE_LIMIT)
    history: int = 0  # content: the user's history length
    silent: bool = False  # scores nothing for this user: zeros everywhere


def _content_scores(rows: sp.csr_matrix, prep: _Prepared) -> np.ndarray:
    """Content scores of the items in `rows` (their feature rows) against the user's profile: a sparse
    times dense product (a sparse times sparse one costs more in scipy's bookkeeping than in arithmetic)."""
    if prep.dense_profile is not None:
        return np.asarray(rows @ prep.dense_profile, dtype=np.float32)
    assert prep.profile is not None
    return np.asarray((rows @ prep.profile.T).todense(), dtype=np.float32).ravel()


@dataclass
class Retriever:
    """Candidates, then the exact blend on them, for one `Scorer` and its artifact's retrieval arrays."""

    scorer: Scorer
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    n_ann: int = 200
    n_neighbours: int = 200
    n_popular: int = 100
    n_cold: int = 50
    _state: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._state["moments"] = {}
        for name, comp in self.scorer.components.items():
            stored = {k.split(".", 1)[1]: v for k, v in self.arrays.items() if k.startswith(f"{name}.")}
            if "mean" not in stored and "stats" not in stored:
                stored.update(moments(comp))  # an artifact made before the moments were stored
            if "gram_data" in stored:  # a wide vocabulary's Gram matrix, stored sparse
                parts = (stored.pop("gram_data"), stored.pop("gram_indices"), stored.pop("gram_indptr"))
                stored["gram"] = sp.csr_matrix(parts, shape=(len(stored["mean"]),) * 2)
            self._state["moments"][name] = stored
        pops = [c for c in self.scorer.components.values() if c.kind == "popularity"]
        if pops:
            pop = np.asarray(pops[0].arrays["popularity"], dtype=np.float32)
            self._state["popular"] = np.sort(top_k(pop, min(self.n_popular, len(pop))))
        else:
            self._state["popular"] = np.arange(min(self.n_popular, self.scorer.n_items), dtype=np.int64)

    def index(self, name: str) -> Any:
        """The component's ANN index (a read-only view of the artifact's bytes), None without one."""
        cache = self._state.setdefault("indexes", {})
        if name not in cache:
            raw = self.arrays.get(f"{name}.ann")
            if raw is None:
                cache[name] = None
            else:
                from usearch.index import Index

                index = Index.restore(np.ascontiguousarray(raw).data, view=True)
                if index is None:
                    raise ValueError(f"the artifact's ANN index of {name!r} cannot be read")
                # a settable property at run time; usearch's type stubs declare it read-only
                index.expansion_search = max(ANN_EXPANSION, self.n_ann)  # type: ignore[misc]
                cache[name] = index
        return cache[name]

    # -- one request ----------------------------------------------------------------------------

    def _prepare(self, name: str, idx: np.ndarray, w: np.ndarray, user: int) -> _Prepared:
        comp = self.scorer.components[name]
        c = comp._cache()
        if comp.kind == "popularity":
            return _Prepared(full=c["pop"])
        if comp.kind == "embedding":
            vec = comp.user_vector(idx, w, user)
            return _Prepared(silent=True) if vec is None else _Prepared(vec=vec)
        if comp.kind == "autoencoder":
            return _Prepared(vec=np.append(comp.autoencoder_hidden(idx), np.float32(1.0)).astype(np.float32))
        if comp.kind == "repeat":  # the user's own items (and the tail): exact, one pass over the catalog
            return _Prepared(full=comp.score_one(idx, w, user))
        if len(idx) == 0:
            return _Prepared(silent=True)
        small = comp.n_items <= DENSE_LIMIT or "gram" not in self._state["moments"][name]
        if (comp.kind == "item_item" and isinstance(c["sim"], np.ndarray)) or (comp.kind == "content" and small):
            return _Prepared(full=comp.score_one(idx, w, user))
        w32 = np.asarray(w, dtype=np.float32)
        if comp.kind == "item_item":
            ww = np.ones_like(w32) if comp.params.get("binary") else w32
            row = sp.csr_matrix(sp.csr_matrix(ww[None, :]) @ c["sim"][idx])
            row.sum_duplicates()
            return _Prepared(row=row)
        profile = sp.csr_matrix(sp.csr_matrix(w32[None, :]) @ c["feats"][idx])
        norm2 = float(profile.multiply(profile).sum())
        if norm2 <= 0:
            return _Prepared(silent=True)
        profile = profile / np.float32(np.sqrt(norm2))
        dense = np.asarray(profile.todense(), np.float32).ravel() if profile.shape[1] <= DENSE_PROFILE_LIMIT else None
        return _Prepared(profile=profile, dense_profile=dense, history=len(idx))

    def _propose(self, name: str, prep: _Prepared) -> np.ndarray:
        """This component's candidates (item indices)."""
        comp = self.scorer.components[name]
        if prep.silent or comp.kind == "popularity":
            return np.empty(0, dtype=np.int64)
        if prep.full is not None:
            return top_k(prep.full, min(self.n_neighbours, len(prep.full)))
        if prep.vec is not None:
            index = self.index(name)
            if index is not None:
                # a fresh native array: usearch refuses the buffer format of a view into the mapped file
                query = np.array(prep.vec, dtype=np.float32)
                return np.asarray(index.search(query, self.n_ann).keys, dtype=np.int64)
            return top_k(item_matrix(comp) @ prep.vec, min(self.n_ann, comp.n_items))
        if prep.row is not None:
            row = prep.row
            keep = np.argsort(-row.data, kind="stable")[: self.n_neighbours]
            return row.indices[keep].astype(np.int64)
        if prep.profile is None:
            return np.empty(0, dtype=np.int64)
        feats = comp._cache()["feats"]
        items, indptr = self._term_lists(name)
        terms = prep.profile.indices
        drawn = np.unique(np.concatenate([items[a:b] for a, b in zip(indptr[terms], indptr[terms + 1], strict=True)]))
        pools = [np.empty(0, dtype=np.int64)]
        if len(drawn):  # the best of them, with room for the user's own items (left out later)
            best = top_k(_content_scores(feats[drawn], prep), min(self.n_neighbours + prep.history, len(drawn)))
            pools.append(drawn[best].astype(np.int64))
        cold = self.arrays.get(f"{name}.cold")
        if cold is not None and len(cold):
            cache = self._state.setdefault("cold_features", {})
            if name not in cache:  # the cold items' rows, taken out of the feature matrix once, not per request
                cache[name] = feats[np.asarray(cold, dtype=np.int64)]
            scores = _content_scores(cache[name], prep)
            pools.append(np.asarray(cold, dtype=np.int64)[top_k(scores, min(self.n_cold, len(cold)))])
        return np.concatenate(pools)

    def _term_lists(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The content component's champion lists (`term_lists`): stored, or built once for an artifact
        made before they were."""
        cache = self._state.setdefault("term_lists", {})
        if name not in cache:
            keys = (f"{name}.term_items", f"{name}.term_indptr")
            if all(k in self.arrays for k in keys):
                cache[name] = (np.asarray(self.arrays[keys[0]]), np.asarray(self.arrays[keys[1]]))
            else:
                built = term_lists(self.scorer.components[name])
                cache[name] = (built["term_items"], built["term_indptr"])
        return cache[name]

    def _raw(self, name: str, prep: _Prepared, cand: np.ndarray) -> np.ndarray:
        """The component's unnormalised scores on `cand`, as `Component.score_one` computes them."""
        comp = self.scorer.components[name]
        c = comp._cache()
        if prep.silent:
            return np.zeros(len(cand), dtype=np.float32)
        if prep.full is not None:
            return prep.full[cand]
        if prep.vec is not None:
            if comp.kind == "embedding":
                return c["items"][cand] @ prep.vec
            last = int(comp.params["n_dec"]) - 1
            return c[f"dec_w{last}"][cand] @ prep.vec[:-1] + c[f"dec_b{last}"][cand]
        if prep.row is not None:
            row = prep.row
            out = np.zeros(len(cand), dtype=np.float32)
            pos = np.searchsorted(row.indices, cand)
            hit = pos < len(row.indices)
            hit[hit] = row.indices[pos[hit]] == cand[hit]
            out[hit] = row.data[pos[hit]]
            return out
        return _content_scores(c["feats"][cand], prep)

    def _standardised(self, name: str, prep: _Prepared, raw: np.ndarray) -> np.ndarray:
        """`raw` standardised with the user's mean and deviation over every item, not the candidates."""
        if prep.silent:
            return np.zeros_like(raw, dtype=np.float32)
        comp = self.scorer.components[name]
        if comp.kind == "popularity":  # the stored float32 mean and deviation: the exact path's
            mean32, std = (float(x) for x in self._state["moments"][name]["stats"])
            if std <= 1e-12:
                return np.zeros_like(raw, dtype=np.float32)
            return ((raw - np.float32(mean32)) / np.float32(std)).astype(np.float32, copy=False)
        if prep.full is not None:
            full = prep.full
            std = float(full.std())
            if std <= 1e-12:
                return np.zeros_like(raw, dtype=np.float32)
            return ((raw - full.mean()) / np.float32(std)).astype(np.float32, copy=False)
        m = self._state["moments"][name]
        n = self.scorer.n_items
        if prep.row is not None:
            data = prep.row.data.astype(np.float64)
            mean, second = data.sum() / n, float(data @ data) / n
        elif prep.vec is not None:
            q = prep.vec.astype(np.float64)
            mean, second = float(q @ m["mean"]), float(q @ m["gram"] @ q)
        else:
            assert prep.profile is not None
            terms, vals = prep.profile.indices, prep.profile.data.astype(np.float64)
            gram = m["gram"]
            block = gram[terms][:, terms].toarray() if sp.issparse(gram) else gram[np.ix_(terms, terms)]
            mean, second = float(vals @ m["mean"][terms]), float(vals @ block @ vals)
        std = float(np.sqrt(max(second - mean * mean, 0.0)))
        if std <= 1e-12 * max(1.0, abs(mean)):
            return np.zeros_like(raw, dtype=np.float32)
        return ((raw.astype(np.float64) - mean) / std).astype(np.float32)

    def blend(
        self,
        idx: np.ndarray,
        weights: np.ndarray,
        user: int = -1,
        exclude: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Candidates (ascending item indices), their blended scores and each component's weighted share.

        `exclude` (item indices) are left out of the candidates; `allowed` (item indices, e.g. a
        category) restricts them, topped up with the category's most popular items.
        """
        active = self.scorer.active(history_bucket(len(idx)))
        preps = {name: self._prepare(name, idx, weights, user) for name in active}
        pools = [self._state["popular"], *(self._propose(name, prep) for name, prep in preps.items())]
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
            pools.append(self._popular_within(allowed))
        cand = np.unique(np.concatenate(pools).astype(np.int64))
        cand = cand[(cand >= 0) & (cand < self.scorer.n_items)]
        if allowed is not None:
            cand = cand[np.isin(cand, allowed)]
        if exclude is not None and len(exclude):
            cand = cand[~np.isin(cand, exclude)]
        if len(active) == 1:
            (name,) = active
            raw = self._raw(name, preps[name], cand)
            return cand, raw, {name: raw}
        total = np.zeros(len(cand), dtype=np.float32)
        parts: dict[str, np.ndarray] = {}
        for name, w in active.items():
            part = np.float32(w) * self._standardised(name, preps[name], self._raw(name, preps[name], cand))
            total += part
            parts[name] = part
        return cand, total, parts

    def _popular_within(self, allowed: np.ndarray) -> np.ndarray:
        pops = [c for c in self.scorer.components.values() if c.kind == "popularity"]
        if not pops or len(allowed) <= self.n_popular:
            return allowed[: self.n_popular]
        pop = np.asarray(pops[0].arrays["popularity"], dtype=np.float32)[allowed]
        return allowed[top_k(pop, self.n_popular)]

    def topk_one(
        self,
        idx: np.ndarray,
        weights: np.ndarray,
        k: int,
        user: int = -1,
        exclude: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """`Scorer.topk_one` on the candidate path (`allowed` as item indices); -1 padded."""
        cand, total, _ = self.blend(idx, weights, user, exclude, allowed)
        pos = top_k(total, k)
        return np.where(pos >= 0, cand[np.maximum(pos, 0)], -1)

    def topk(
        self, history: sp.csr_matrix, k: int, user_idx: np.ndarray | None = None, exclude: Any = None
    ) -> np.ndarray:
        """`Scorer.topk` on the candidate path: top-k item indices per row of `history`."""
        out = np.full((history.shape[0], k), -1, dtype=np.int64)
        ex = None if exclude is None else sp.csr_matrix(exclude)
        for r in range(history.shape[0]):
            lo, hi = history.indptr[r], history.indptr[r + 1]
            user = -1 if user_idx is None else int(user_idx[r])
            hide = None if ex is None else ex.indices[ex.indptr[r] : ex.indptr[r + 1]]
            out[r] = self.topk_one(history.indices[lo:hi], history.data[lo:hi], k, user, hide)
        return out


def use_candidates(n_items: int, threshold: int) -> bool:
    """The candidate path serves catalogs above `threshold` items (0: always); the exact path the rest."""
    return n_items > threshold
