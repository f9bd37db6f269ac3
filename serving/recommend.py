"""Scoring one request: the user's live history, the blended scores, the top-k and a reason per item.

The history is the artifact's row for the user plus their live events, weighted like the pipeline
weighs them (`settings.event_weights`, ratings by value, repeated events adding up), so the request
after an event already ranks with it. A user the artifact does not know, with no live event, has an
empty history: every component but popularity is silent and the blend falls back to popularity (the
hybrid's bucket "0"), which is the cold start. For a known user with live events, an embedding
component folds the whole history in rather than using the stored user vector, which predates them.

`Scorer.score_parts` gives the blend for one user with each component's weighted share of it (the
same blend offline evaluation scores, which a test checks); the shares say which component put an item
in the list, and so which reason it gets:

* a collaborative or content component: the history item contributing most to that item's score
  (S[i, j] for item-item, x_i·x_j for content, v_i·v_j for embeddings, times the event weight):
  "because you clicked X" when X comes from the user's live events, "similar to X" when it comes
  from the training history;
* popularity: "popular in category Y" under a category filter, else "popular now".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.events import CANONICAL_EVENT_TYPES
from recsys_assets.contract.scoring import Component, topk_from_scores
from serving.errors import UnknownItemError
from serving.loaded import LoadedModel
from serving.schemas import LiveEvent, ReasonKind, RecommendedItem, SimilarItem

VERBS = {
    "view": "viewed",
    "click": "clicked",
    "favorite": "favorited",
    "add_to_cart": "added to your cart",
    "purchase": "bought",
    "rating": "rated",
}
_STRENGTH = {t: i for i, t in enumerate(CANONICAL_EVENT_TYPES)}
# why an item is recommended: its kind, the sentence shown, the history item it rests on (or None)
Reason = tuple[ReasonKind, str, str | None]


@dataclass
class UserHistory:
    """One user's history: item indices (ascending) and weights, the known user index or -1, and
    which of its items come from live events (with the strongest event type on each)."""

    idx: np.ndarray
    weights: np.ndarray
    user: int
    live_types: dict[int, str] = field(default_factory=dict)

    @property
    def cold(self) -> bool:
        return len(self.idx) == 0


def build_history(
    model: LoadedModel, user_id: str, events: Iterable[LiveEvent], weights: dict[str, float]
) -> UserHistory:
    uidx = model.user_index.get(user_id, -1)
    history: sp.csr_matrix = model.artifact.history
    if uidx >= 0:
        lo, hi = history.indptr[uidx], history.indptr[uidx + 1]
        # the artifact's own arrays, dtype included, so a user without live events ranks exactly as offline
        base_idx, base_w = history.indices[lo:hi], history.data[lo:hi]
    else:
        base_idx, base_w = np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)
    live: dict[int, float] = {}
    types: dict[int, str] = {}
    for ev in events:
        j = model.item_index.get(ev.item_id)
        if j is None:
            continue  # an item the model does not know cannot inform its scores
        if ev.event_type == "rating" and ev.value is not None:
            w = float(ev.value)
        else:
            w = float(weights.get(ev.event_type, 1.0))
        live[j] = live.get(j, 0.0) + w
        if j not in types or _STRENGTH.get(ev.event_type, -1) > _STRENGTH.get(types[j], -1):
            types[j] = ev.event_type
    if not live:
        return UserHistory(idx=base_idx, weights=base_w, user=uidx)
    merged = dict(zip(base_idx.tolist(), base_w.tolist(), strict=True))
    for j, w in live.items():
        merged[j] = merged.get(j, 0.0) + w
    idx = np.fromiter(sorted(merged), dtype=np.int64, count=len(merged))
    merged_w = np.asarray([merged[j] for j in idx.tolist()], dtype=np.float32)
    # the stored user vector of an embedding model predates the live events: fold the history in
    return UserHistory(idx=idx, weights=merged_w, user=-1, live_types=types)


def _item_vectors(component: Component) -> np.ndarray | None:
    """Dense item vectors whose dot products say how alike two items are for this component."""
    if component.kind == "embedding":
        return np.asarray(component.arrays["item_factors"], dtype=np.float32)
    if component.kind == "autoencoder":
        # the decoder's output layer: one row per item
        return np.asarray(component.arrays[f"dec_w{int(component.params.get('n_dec', 1)) - 1}"], dtype=np.float32)
    return None


def _evidence(model: LoadedModel, name: str, hist_idx: np.ndarray, hist_w: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Contribution of each history item (rows) to each recommended item (columns)."""
    component = model.components[name]
    binary = bool(component.params.get("binary")) or component.kind == "autoencoder"
    w = np.ones_like(hist_w) if binary else hist_w
    if component.kind == "item_item":
        # S[i, j] for history items i and recommended items j, read from the k rows of S^T
        return w[:, None] * model.similarity_t[name][top][:, hist_idx].toarray().T
    if component.kind == "content":
        feats = sp.csr_matrix(component.arrays["item_features"])
        return w[:, None] * (feats[hist_idx] @ feats[top].T).toarray()
    vecs = _item_vectors(component)
    if vecs is None:
        return np.zeros((len(hist_idx), len(top)))
    return w[:, None] * (vecs[hist_idx] @ vecs[top].T)


def recommend(
    model: LoadedModel,
    history: UserHistory,
    k: int,
    category: str | None,
    exclude_seen: bool,
) -> list[RecommendedItem]:
    """The top-k items for a history, best first, each with its reason.

    Above the candidate threshold (`model.retriever`) only the drawn candidates are scored, with the
    exact blend; otherwise every item is.
    """
    cat_key = category.casefold() if category else None
    allowed = model.category_items.get(cat_key, np.empty(0, dtype=np.int64)) if cat_key is not None else None
    hide = history.idx if exclude_seen and len(history.idx) else None
    if model.retriever is not None:
        cand, cand_scores, parts = model.retriever.blend(history.idx, history.weights, history.user, hide, allowed)
        pos = topk_from_scores(cand_scores.astype(np.float64)[None, :], k)[0]
        pos = pos[pos >= 0]
        top, top_scores = cand[pos], cand_scores[pos].astype(np.float64)
        shares = {name: p[pos] for name, p in parts.items()}
    else:
        scores, parts = model.artifact.scorer.score_parts(history.idx, history.weights, history.user)
        scores = scores.astype(np.float64)
        if allowed is not None:
            masked = np.full_like(scores, -np.inf)
            masked[allowed] = scores[allowed]
            scores = masked
        if hide is not None:
            scores[hide] = -np.inf
        top = topk_from_scores(scores[None, :], k)[0]
        top = top[top >= 0]
        top_scores = scores[top]
        shares = {name: p[top] for name, p in parts.items()}
    if len(top) == 0:
        return []
    reasons = _reasons(model, history, shares, top, model.category_names.get(cat_key or "", category))
    return [
        RecommendedItem(
            item_id=str(model.artifact.item_ids[j]),
            rank=rank,
            score=float(s),
            title=model.titles[j],
            categories=model.categories[j],
            reason=reason,
            reason_kind=kind,
            evidence_item_id=evidence,
        )
        for rank, (j, s, (kind, reason, evidence)) in enumerate(
            zip(top.tolist(), top_scores.tolist(), reasons, strict=True), start=1
        )
    ]


def _reasons(
    model: LoadedModel,
    history: UserHistory,
    parts: dict[str, np.ndarray],
    top: np.ndarray,
    category: str | None,
) -> list[Reason]:
    """A reason per item of `top`; `parts` holds each component's weighted share of those items' scores."""
    popular: Reason = ("popular", f"popular in category {category}" if category else "popular now", None)
    if history.cold:
        return [popular] * len(top)
    components = model.components
    hist_idx, hist_w = np.asarray(history.idx), np.asarray(history.weights, dtype=np.float32)
    evidence = {
        name: _evidence(model, name, hist_idx, hist_w, top) for name in parts if components[name].kind != "popularity"
    }
    out: list[Reason] = []
    for col, j in enumerate(top.tolist()):
        dominant = max(parts, key=lambda name: parts[name][col])
        if components[dominant].kind == "repeat" and j in hist_idx:  # buy again: the item itself is the reason
            out.append(("history", f"you chose {model.titles[j]} before", str(model.artifact.item_ids[j])))
            continue
        contrib = evidence.get(dominant)
        if contrib is None or contrib.shape[0] == 0 or contrib[:, col].max() <= 0:
            out.append(popular)
            continue
        i = int(hist_idx[int(np.argmax(contrib[:, col]))])
        title = model.titles[i]
        item_id = str(model.artifact.item_ids[i])
        if i in history.live_types:
            out.append(("history", f"because you {VERBS.get(history.live_types[i], 'chose')} {title}", item_id))
        else:
            out.append(("similar", f"similar to {title}", item_id))
    return out


def similar_items(model: LoadedModel, item_id: str, k: int) -> tuple[str, list[SimilarItem]]:
    """Items most similar to one item: item-item component if any, else content, else embeddings."""
    j = model.item_index.get(item_id)
    if j is None:
        raise UnknownItemError(f"item {item_id!r} is not in the catalog of model {model.version}")
    by_kind = {c.kind: c for c in model.components.values()}
    vectors = next((v for c in model.components.values() if (v := _item_vectors(c)) is not None), None)
    title = model.titles[j]
    if "item_item" in by_kind:
        source = "item_item"
        row = sp.csr_matrix(by_kind["item_item"].arrays["similarity"])[j]
        scores = row.toarray()[0].astype(np.float64)
    elif "content" in by_kind:
        source = "content"
        feats = sp.csr_matrix(by_kind["content"].arrays["item_features"])
        scores = (feats @ feats[j].T).toarray()[:, 0].astype(np.float64)
    elif vectors is not None:
        source = "embedding"
        vecs = vectors.astype(np.float64)
        norms = np.linalg.norm(vecs, axis=1)
        norms[norms == 0] = 1.0
        scores = (vecs @ vecs[j]) / (norms * norms[j])
    else:
        source = "popularity"
        scores = np.asarray(by_kind["popularity"].arrays["popularity"], dtype=np.float64).copy()
    if source != "popularity":
        # only items that actually resemble it; no filler
        scores[scores <= 0] = -np.inf
    scores[j] = -np.inf
    top = topk_from_scores(scores[None, :], k)[0]
    top = top[top >= 0]
    reason = "popular now" if source == "popularity" else f"similar to {title}"
    items = [
        SimilarItem(
            item_id=str(model.artifact.item_ids[i]),
            rank=rank,
            score=float(scores[i]),
            title=model.titles[i],
            categories=model.categories[i],
            reason=reason,
        )
        for rank, i in enumerate(top.tolist(), start=1)
    ]
    return source, items
