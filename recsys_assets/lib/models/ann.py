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

from recsys_assets.contract.retrieval import VECTOR_KINDS, cold_items, item_matrix, moments
from recsys_assets.contract.scoring import Scorer

CONNECTIVITY = 16
EXPANSION_ADD = 128


def build_ann(vectors: np.ndarray, threads: int = 0) -> np.ndarray:
    """A usearch HNSW index (inner product) over `vectors`, keys = row numbers, as uint8 bytes."""
    from usearch.index import Index

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = Index(
        ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD
    )
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads)
    return np.frombuffer(index.save(), dtype=np.uint8).copy()


def retrieval_arrays(scorer: Scorer, history: sp.csr_matrix, ann: bool = True) -> dict[str, np.ndarray]:
    """Everything `contract.retrieval.Retriever` reads, by `<component>.<array>` name: score moments for
    every component, an ANN index per vector component, the cold items for a content component."""
    out: dict[str, np.ndarray] = {}
    for name, comp in scorer.components.items():
        for key, value in moments(comp).items():
            out[f"{name}.{key}"] = value
        if ann and comp.kind in VECTOR_KINDS:
            out[f"{name}.ann"] = build_ann(item_matrix(comp))
        if comp.kind == "content":
            out[f"{name}.cold"] = cold_items(history)
    return out
