"""The candidate path's arrays, built when an artifact is made: moments and ANN indexes per component.

The ANN index is usearch's HNSW over each embedding (or Mult-VAE output) component's item vectors,
inner-product metric, serialised to bytes and stored in the artifact, where the API maps it without
copying (`Index.restore(buffer, view=True)`). Chosen over faiss (HNSW) and hnswlib by measurement
(docs/benchmarks.md, "Candidate generation"): at 100k items hnswlib queries fastest but cannot be
memory-mapped (each worker would hold its own copy), faiss's file is the largest and its queries the
slowest; recall of the exact top-10 among 200 candidates was the same for all three (0.985-0.989).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.retrieval import VECTOR_KINDS, cold_items, item_matrix, moments, term_lists
from recsys_assets.contract.scoring import Scorer

CONNECTIVITY = 16
EXPANSION_ADD = 128


def build_ann(
    vectors: np.ndarray, threads: int = 0, connectivity: int = CONNECTIVITY, expansion_add: int = EXPANSION_ADD
) -> np.ndarray:
    """A usearch HNSW index (inner product) over `vectors`, keys = row numbers, as uint8 bytes.

    `threads=0`: as many threads as cores. A smaller `expansion_add` builds faster (the build's cost
    is about proportional to it) at some cost in recall, measured in docs/benchmarks.md."""
    from usearch.index import Index

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = Index(
        ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=connectivity, expansion_add=expansion_add
    )
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads)
    return np.frombuffer(index.save(), dtype=np.uint8).copy()


def retrieval_arrays(
    scorer: Scorer, history: sp.csr_matrix, ann: bool = True, **ann_options: int
) -> dict[str, np.ndarray]:
    """Everything `contract.retrieval.Retriever` reads, by `<component>.<array>` name: score moments for
    every component, an ANN index per vector component, the cold items and champion lists of a content component."""
    out: dict[str, np.ndarray] = {}
    for name, comp in scorer.components.items():
        for key, value in moments(comp).items():
            out[f"{name}.{key}"] = value
        if ann and comp.kind in VECTOR_KINDS:
            out[f"{name}.ann"] = build_ann(item_matrix(comp), **ann_options)
        if comp.kind == "content":
            out[f"{name}.cold"] = cold_items(history)
            if f"{name}.mean" in out:  # moments stored: the candidate path scores it on candidates it proposes
                for key, value in term_lists(comp).items():
                    out[f"{name}.{key}"] = value
    return out


def candidate_recall(
    scorer: Scorer, arrays: dict[str, np.ndarray], history: sp.csr_matrix, k: int = 10, n_users: int = 200
) -> float:
    """Share of the exact top-k (seen items excluded) that the candidate path also serves, over a fixed
    sample of up to `n_users` users with a history: what the approximation costs this artifact."""
    from recsys_assets.contract.retrieval import Retriever

    history = sp.csr_matrix(history)
    users = np.flatnonzero(np.diff(history.indptr) > 0)
    if len(users) == 0 or scorer.n_items <= k:
        return 1.0
    users = np.random.default_rng(0).choice(users, size=min(n_users, len(users)), replace=False)
    users.sort()
    hist = history[users]
    exact = scorer.topk(hist, k, user_idx=users, exclude=hist)
    approx = Retriever(scorer, arrays).topk(hist, k, user_idx=users, exclude=hist)
    found = [
        len(set(e[e >= 0].tolist()) & set(a.tolist())) / max(1, int((e >= 0).sum()))
        for e, a in zip(exact, approx, strict=True)
    ]
    return float(np.mean(found))
