"""The Hybrid's blend search on a large catalog: each validation user's candidates, not every item.

Every trial of the weight search ranks the sampled validation users' blended scores. Over the whole
catalog that is users x items cells per trial; at 100k items and a few hundred trials it took most of the
pipeline's time (docs/benchmarks.md, issue 16). A blend's top-k is, item for item, almost always among
the items some component ranks high, so above `HybridModel.candidates_above` items the search ranks
only the union of each component's `PER_PART` best items for the user (seen items left out in the
discovery setting), as the API's candidate path does for a list (`contract.retrieval`). Standardisation
still uses the whole catalog's scores of each component (`standardise`), so a candidate's blended score
is the exact one; only which items compete is bounded. The search picks weights; the chosen Hybrid is then
evaluated like every other candidate, over the whole catalog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.scoring import Component, standardise, topk_from_scores
from recsys_assets.contract.topk import PAD, top_k_wide
from recsys_assets.lib.evaluation.batched import batch_size

PER_PART = 200  # candidates per component and user
SPARSE_KINDS = ("item_item", "content")  # components whose scores are mostly zero: no dense row ...
SPARSE_SHARE = 0.05  # ... while at most this share of a batch's scores is stored
MEMORY_MB = 256  # one batch's standardised scores, every component together


@dataclass(frozen=True)
class BlendCandidates:
    """Users x candidates: the item of each column, each component's standardised score there, and which
    columns count (a duplicate of an item another component proposed, or a seen item, does not)."""

    items: np.ndarray  # int64, users x columns, sorted by item in each row
    parts: dict[str, np.ndarray]  # float32, users x columns
    keep: np.ndarray  # bool, users x columns

    def subset(self, rows: np.ndarray) -> BlendCandidates:
        """The candidates of the users of `rows` (a mask or indices): slice once, rank many blends."""
        return BlendCandidates(self.items[rows], {n: p[rows] for n, p in self.parts.items()}, self.keep[rows])

    def topk(self, weights: Mapping[str, float], rows: np.ndarray | None, k: int) -> np.ndarray:
        """Top-`k` item indices (-1 padded) of the blend `weights` for the users of `rows` (a mask or
        indices; None: every user)."""
        if rows is not None:
            return self.subset(rows).topk(weights, None, k)
        total = np.where(self.keep, 0.0, -np.inf)
        for name, w in weights.items():
            if w:
                total += w * self.parts[name]
        cols = topk_from_scores(total, k)  # ties by column, i.e. by item index, as over the whole catalog
        out = np.take_along_axis(self.items, np.maximum(cols, 0), axis=1)
        out[cols < 0] = -1
        return out


def blend_candidates(
    components: Mapping[str, Component],
    names: Sequence[str],
    history: sp.csr_matrix,
    users: np.ndarray,
    *,
    exclude_seen: bool,
    per_part: int = PER_PART,
    memory_mb: int = MEMORY_MB,
) -> BlendCandidates:
    """The candidates of `users` (rows of `history`, their training items): each component's `per_part`
    best items by its standardised score over the whole catalog, seen items left out when `exclude_seen`."""
    history = sp.csr_matrix(history)
    n_users, n_items = history.shape
    per_part = min(per_part, n_items)
    # a popularity component scores everyone alike: its standardised row and its order, once
    alike = {n: _one_order(components[n]) for n in names if components[n].kind == "popularity"}
    # item-item and content scores are sparse: each row's mean and spread from its non-zero scores
    sparse = [n for n in names if n not in alike and components[n].kind in SPARSE_KINDS]
    dense = [n for n in names if n not in alike and n not in sparse]
    # float64 standardised scores of every other component at once, and the seen mask
    step = batch_size(n_items, max(1, memory_mb // (2 * max(len(dense) + len(sparse), 1))))
    items, keep = [], []
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, n_users, step):
        stop = min(start + step, n_users)
        hist = history[start:stop]
        std = {n: standardise(components[n].raw_scores(hist, users[start:stop])) for n in dense}
        rows = {}
        for n in sparse:
            raw = _sparse_raw(components[n], hist)
            if raw.nnz > SPARSE_SHARE * raw.shape[0] * raw.shape[1]:  # dense after all (content, often)
                std[n] = standardise(raw.toarray())  # = raw_scores: the same products, then filled in
            else:
                raw.sort_indices()  # (only here: sorting a dense-ish content block cost 13% of the search)
                rows[n] = _SparseRows(raw)
        seen = hist.toarray() != 0 if exclude_seen and len(std) else None
        proposals = []
        for n in names:
            if n in alike:
                proposals.append(_first_unseen(alike[n][1], hist, exclude_seen, per_part))
            elif n in rows:
                proposals.append(rows[n].best(hist, exclude_seen, per_part))
            else:
                proposals.append(_best(std[n] if seen is None else np.where(seen, -np.inf, std[n]), per_part))
        cand = np.sort(np.concatenate(proposals, axis=1), axis=1)
        ok = np.ones(cand.shape, dtype=bool)
        ok[:, 1:] = cand[:, 1:] != cand[:, :-1]
        if exclude_seen:
            ok &= ~_held(hist, cand)
        items.append(cand)
        keep.append(ok)
        for n in names:
            if n in alike:
                part = alike[n][0][cand]
            elif n in rows:
                part = rows[n].values(cand)
            else:
                part = np.take_along_axis(std[n], cand, axis=1)
            parts[n].append(part.astype(np.float32))
    width = per_part * len(names)
    empty_i, empty_b = np.empty((0, width), dtype=np.int64), np.empty((0, width), dtype=bool)
    return BlendCandidates(
        items=np.concatenate(items) if items else empty_i,
        parts={n: np.concatenate(p) if p else np.empty((0, width), dtype=np.float32) for n, p in parts.items()},
        keep=np.concatenate(keep) if keep else empty_b,
    )


def _one_order(component: Component) -> tuple[np.ndarray, np.ndarray]:
    """A component that scores every user alike (popularity): its standardised scores, as `standardise` gives
    each user's row, and its items best first (ties by item index), without a users x items block."""
    row = standardise(component.raw_scores(sp.csr_matrix((1, component.n_items), dtype=np.float32), None))[0]
    return row, np.lexsort((np.arange(len(row)), -row))


def _first_unseen(order: np.ndarray, history: sp.csr_matrix, exclude_seen: bool, count: int) -> np.ndarray:
    """Each history row's first `count` items of `order`, those the row holds (seen) left out with
    `exclude_seen`; when fewer are left, the row is filled up with seen ones (lowest index first), which `keep`
    leaves out."""
    out = np.empty((history.shape[0], count), dtype=np.int64)
    if not exclude_seen:
        out[:] = order[:count]
        return out
    for r in range(history.shape[0]):
        lo, hi = history.indptr[r], history.indptr[r + 1]
        had = history.indices[lo:hi][history.data[lo:hi] != 0]
        head = order[: count + len(had)]
        unseen = ~np.isin(head, had)
        kept = head[unseen][:count]
        out[r, : len(kept)] = kept
        out[r, len(kept) :] = np.unique(had)[: count - len(kept)]  # as `_best` fills a short row
    return out


def _best(scores: np.ndarray, count: int) -> np.ndarray:
    """Each row's `count` best items (ties by item index, as `top_k`; a threshold, not a partition of the
    whole row: at 1M items a content row is mostly tied zeros, where `argpartition` is slowest); a row with
    fewer finite scores is filled up with its -inf (seen) items, which the candidates' `keep` leaves out."""
    best = top_k_wide(scores, count)
    for r in np.flatnonzero((best == PAD).any(axis=1)):
        short = best[r] == PAD
        best[r, short] = np.flatnonzero(~np.isfinite(scores[r]))[: short.sum()]
    return best


def _held(history: sp.csr_matrix, cand: np.ndarray) -> np.ndarray:
    """Whether each row's candidate is an item of its history row (a stored non-zero)."""
    out = np.zeros(cand.shape, dtype=bool)
    for r in range(cand.shape[0]):
        lo, hi = history.indptr[r], history.indptr[r + 1]
        out[r] = np.isin(cand[r], history.indices[lo:hi][history.data[lo:hi] != 0])
    return out


def _sparse_raw(component: Component, history: sp.csr_matrix) -> sp.csr_matrix:
    """`component.raw_scores(history, None)` of an item-item or content component, kept sparse (absent: 0):
    the same products, without the dense block."""
    if component.kind == "item_item":
        h = history.sign() if component.params.get("binary") else history
        out = h @ component.arrays["similarity"]
    else:
        feats = component.arrays["item_features"]
        profile = history @ feats
        norms = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1))).ravel()
        norms[norms == 0] = 1.0
        out = (sp.diags(1.0 / norms) @ profile) @ feats.T
    return sp.csr_matrix(out, dtype=np.float64)


class _SparseRows:
    """Sparse raw scores, standardised as `standardise` does their dense rows: each row's mean and standard
    deviation over every item (the absent ones are zeros), computed from its stored scores (equal to the dense
    figures up to rounding); a row without spread standardises to zeros."""

    def __init__(self, raw: sp.csr_matrix) -> None:
        self.raw = raw
        n = raw.shape[1]
        nnz = np.diff(raw.indptr)
        rows = np.repeat(np.arange(raw.shape[0]), nnz)
        self.mean = np.bincount(rows, weights=raw.data, minlength=raw.shape[0]) / n
        dev = np.bincount(rows, weights=(raw.data - self.mean[rows]) ** 2, minlength=raw.shape[0])
        self.std = np.sqrt((dev + (n - nnz) * self.mean**2) / n)
        self.flat = self.std <= 1e-12

    def values(self, cand: np.ndarray) -> np.ndarray:
        """Standardised scores of each row's candidate items (rows x columns)."""
        out = np.zeros(cand.shape, dtype=np.float64)
        for r in range(cand.shape[0]):
            if self.flat[r]:
                continue
            lo, hi = self.raw.indptr[r], self.raw.indptr[r + 1]
            idx, val = self.raw.indices[lo:hi], self.raw.data[lo:hi]
            x = np.zeros(cand.shape[1])
            if len(idx):
                at = np.minimum(np.searchsorted(idx, cand[r]), len(idx) - 1)
                hit = idx[at] == cand[r]
                x[hit] = val[at[hit]]
            out[r] = (x - self.mean[r]) / self.std[r]
        return out

    def best(self, history: sp.csr_matrix, exclude_seen: bool, count: int) -> np.ndarray:
        """Each row's `count` best items by standardised score (ties by item index, as `_best` on the dense
        row): the positive scores, then the zeros (lowest index first), then the negative ones; seen items left
        out with `exclude_seen` and used last, as `_best` fills a short row."""
        n = self.raw.shape[1]
        out = np.empty((self.raw.shape[0], count), dtype=np.int64)
        for r in range(self.raw.shape[0]):
            lo, hi = history.indptr[r], history.indptr[r + 1]
            seen = np.unique(history.indices[lo:hi][history.data[lo:hi] != 0]) if exclude_seen else np.empty(0, int)
            a, b = self.raw.indptr[r], self.raw.indptr[r + 1]
            idx, val = self.raw.indices[a:b], self.raw.data[a:b]
            if self.flat[r]:  # every item ties
                idx, val = idx[:0], val[:0]
            stored = idx[val != 0]
            free = ~np.isin(idx, seen) & (val != 0)
            idx, val = idx[free], val[free]
            picked = [_top(idx, val, val > 0, count)]
            short = count - len(picked[0])
            if short > 0:  # the zeros: items with no stored score, not seen, lowest index first
                blocked = np.union1d(stored, seen)
                span = np.arange(min(n, short + len(blocked)))
                picked.append(span[~np.isin(span, blocked)][:short])
                short -= len(picked[-1])
            if short > 0:
                picked.append(_top(idx, val, val < 0, short))
                short -= len(picked[-1])
            if short > 0:  # fewer unseen items than `count`: seen ones, which `keep` leaves out
                picked.append(seen[:short])
            out[r] = np.concatenate(picked)
        return out


def _top(idx: np.ndarray, val: np.ndarray, where: np.ndarray, count: int) -> np.ndarray:
    """The items `idx` (ascending) of the `count` best `val` among `where`, best first, ties by item index."""
    idx, val = idx[where], val[where]
    if len(val) <= count:
        return idx[np.lexsort((idx, -val))]
    return idx[top_k_wide(val[None, :], count)[0]]
