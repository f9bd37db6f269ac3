"""The candidate path: ANN index round trip, exact scores on the candidates, all-item standardisation,
and the memory-mapped artifact (read-only, corrupt files refused)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_assets.contract.artifact import (
    ARRAYS,
    MANIFEST,
    ArtifactError,
    ServingArtifact,
    load_artifact,
    save_artifact,
)
from recsys_assets.contract.retrieval import Retriever, use_candidates
from recsys_assets.contract.scoring import Component, Scorer
from recsys_assets.lib.models.ann import build_ann, retrieval_arrays
from recsys_assets.tools.chaos import damage_keeping_checksum

N_ITEMS, N_USERS, DIM = 6_000, 60, 16  # above DENSE_LIMIT: the sparse item-item and content paths


def _scorer(seed: int = 0) -> tuple[Scorer, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, DIM)).astype(np.float32)
    items = centers[rng.integers(0, 40, N_ITEMS)] + 0.5 * rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    users = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    rows = np.repeat(np.arange(N_ITEMS), 10)
    sim = sp.csr_matrix(
        (rng.random(N_ITEMS * 10).astype(np.float32), (rows, rng.integers(0, N_ITEMS, N_ITEMS * 10))),
        shape=(N_ITEMS, N_ITEMS),
    )
    feats = sp.random(N_ITEMS, 50, density=0.05, format="csr", random_state=seed, dtype=np.float32)
    components = {
        "emb": Component("embedding", {"item_factors": items, "user_factors": users}),
        "pop": Component("popularity", {"popularity": rng.pareto(1.5, N_ITEMS).astype(np.float32)}),
        "knn": Component("item_item", {"similarity": sim}),
        "content": Component("content", {"item_features": feats}),
    }
    history = sp.random(N_USERS, N_ITEMS, density=0.003, format="csr", random_state=seed + 1, dtype=np.float32)
    history.data[:] = 1.0
    return Scorer(components, {"emb": 1.0, "pop": 0.3, "knn": 0.5, "content": 0.2}), history


@pytest.fixture(scope="module")
def scored() -> tuple[Scorer, sp.csr_matrix, Retriever]:
    scorer, history = _scorer()
    return scorer, history, Retriever(scorer, retrieval_arrays(scorer, history))


def _row(history: sp.csr_matrix, u: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = history.indptr[u], history.indptr[u + 1]
    return history.indices[lo:hi], history.data[lo:hi]


def test_ann_index_round_trip_finds_the_exact_neighbours() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(5_000, DIM)).astype(np.float32)
    raw = build_ann(vectors)
    assert raw.dtype == np.uint8 and raw.nbytes > vectors.nbytes / 2
    scorer = Scorer({"emb": Component("embedding", {"item_factors": vectors, "user_factors": vectors[:3]})}, {"emb": 1})
    index = Retriever(scorer, {"emb.ann": raw}).index("emb")
    found = []
    for q in rng.normal(size=(50, DIM)).astype(np.float32):
        exact = set(np.argsort(-(vectors @ q))[:10].tolist())
        found.append(len(exact & set(np.asarray(index.search(q, 50).keys).tolist())) / 10)
    assert np.mean(found) >= 0.95


@pytest.mark.parametrize("case", ["known", "folded", "cold"])
def test_candidate_scores_equal_the_exact_blend(scored, case: str) -> None:
    scorer, history, retriever = scored
    for u in range(0, N_USERS, 7):
        idx, w = _row(history, u)
        user = u if case == "known" else -1
        if case == "cold":
            idx, w = idx[:0], w[:0]
        exact = scorer.score_one(idx, w, user)
        cand, total, parts = retriever.blend(idx, w, user)
        assert len(cand) >= 100 and np.all(np.diff(cand) > 0)
        np.testing.assert_allclose(total, exact[cand], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sum(parts.values()), total, rtol=1e-5, atol=1e-5)


def test_standardisation_does_not_depend_on_the_drawn_candidates(scored) -> None:
    _, history, retriever = scored
    idx, w = _row(history, 4)
    cand_all, total_all, _ = retriever.blend(idx, w, 4)
    subset = cand_all[::3]
    cand_sub, total_sub, _ = retriever.blend(idx, w, 4, allowed=subset)
    assert len(cand_sub) < len(cand_all)
    pos = np.searchsorted(cand_all, cand_sub)
    # equal up to float32 summation order (a different candidate count may change BLAS's blocking)
    np.testing.assert_allclose(total_sub, total_all[pos], rtol=1e-5, atol=1e-6)


def test_candidate_topk_recovers_the_exact_topk(scored) -> None:
    scorer, history, retriever = scored
    recall = []
    for u in range(N_USERS):
        idx, w = _row(history, u)
        exact = scorer.topk_one(idx, w, 10, u, exclude=idx)
        approx = retriever.topk_one(idx, w, 10, u, exclude=idx)
        assert not set(approx.tolist()) & set(idx.tolist())
        recall.append(len(set(exact.tolist()) & set(approx.tolist())) / 10)
    assert np.mean(recall) >= 0.95


def test_threshold_switch() -> None:
    assert not use_candidates(1_682, 20_000)
    assert use_candidates(20_001, 20_000)
    assert use_candidates(1_682, 0)


def _artifact(scorer: Scorer, history: sp.csr_matrix, arrays: dict[str, np.ndarray] | None = None) -> ServingArtifact:
    ids = np.asarray([f"i{j}" for j in range(N_ITEMS)])
    return ServingArtifact(
        model_name="Synthetic",
        model_version="v1",
        scorer=scorer,
        user_ids=np.asarray([f"u{u}" for u in range(N_USERS)]),
        item_ids=ids,
        history=history,
        item_titles=ids,
        item_categories=np.full(N_ITEMS, "", dtype=str),
        retrieval=retrieval_arrays(scorer, history) if arrays is None else arrays,
    )


def test_mapped_artifact_is_read_only_and_scores_as_loaded(scored, tmp_path: Path) -> None:
    scorer, history, _ = scored
    art = _artifact(scorer, history)
    save_artifact(art, str(tmp_path))
    mapped = load_artifact(str(tmp_path), mmap=True)
    copied = load_artifact(str(tmp_path))
    factors = mapped.scorer.components["emb"].arrays["item_factors"]
    assert isinstance(factors, np.ndarray) and not factors.flags.writeable and not factors.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        factors[0, 0] = 1.0
    assert mapped.checksum == copied.checksum
    np.testing.assert_array_equal(mapped.retrieval["emb.ann"], art.retrieval["emb.ann"])
    retriever = Retriever(mapped.scorer, mapped.retrieval)
    idx, w = _row(history, 2)
    np.testing.assert_array_equal(
        retriever.topk_one(idx, w, 10, 2), Retriever(scorer, art.retrieval).topk_one(idx, w, 10, 2)
    )
    np.testing.assert_array_equal(mapped.scorer.score_one(idx, w, 2), copied.scorer.score_one(idx, w, 2))


def test_mapped_artifact_refuses_a_corrupted_file(scored, tmp_path: Path) -> None:
    scorer, history, _ = scored
    save_artifact(_artifact(scorer, history), str(tmp_path))
    data = bytearray((tmp_path / ARRAYS).read_bytes())
    data[len(data) // 3] ^= 0xFF
    (tmp_path / ARRAYS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(str(tmp_path), mmap=True)
    (tmp_path / ARRAYS).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(str(tmp_path), mmap=True)


def test_mapped_artifact_refuses_damage_behind_a_recomputed_checksum(scored, tmp_path: Path) -> None:
    scorer, history, _ = scored
    save_artifact(_artifact(scorer, history), str(tmp_path / "a"))
    damage_keeping_checksum(tmp_path / "a")
    with pytest.raises(ArtifactError, match=r"CRC|header|cannot|mismatch"):
        load_artifact(str(tmp_path / "a"), mmap=True)
    # a damaged local header (the offsets a map reads), checksum recomputed
    save_artifact(_artifact(scorer, history), str(tmp_path / "b"))
    data = bytearray((tmp_path / "b" / ARRAYS).read_bytes())
    data[:4] = b"XXXX"
    (tmp_path / "b" / ARRAYS).write_bytes(bytes(data))
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    manifest["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="local header"):
        load_artifact(str(tmp_path / "b"), mmap=True)


def test_a_repeat_component_is_served_exactly_on_the_candidate_path() -> None:
    scorer, history = _scorer(5)
    rng = np.random.default_rng(5)
    recency = history.copy()
    recency.data = rng.random(recency.nnz).astype(np.float32)
    repeat = Component(
        "repeat",
        {
            "recency": recency,
            "repurchase_rate": rng.random(N_ITEMS).astype(np.float32),
            "popularity": rng.pareto(1.5, N_ITEMS).astype(np.float32),
        },
    )
    scorer = Scorer({**scorer.components, "again": repeat}, {**scorer.weights, "again": 2.0})
    retriever = Retriever(scorer, retrieval_arrays(scorer, history))
    for u in range(0, N_USERS, 11):
        idx, w = _row(history, u)
        cand, total, _ = retriever.blend(idx, w, u)
        assert set(idx.tolist()) <= set(cand.tolist())  # the user's own items are always candidates
        np.testing.assert_allclose(total, scorer.score_one(idx, w, u)[cand], rtol=1e-4, atol=1e-4)


def test_candidate_recall_measures_the_approximation(scored) -> None:
    from recsys_assets.lib.models.ann import candidate_recall

    scorer, history, retriever = scored
    recall = candidate_recall(scorer, dict(retriever.arrays), history, n_users=30)
    assert 0.9 <= recall <= 1.0
    # a retriever that proposes only the 10 most popular items misses most of the exact list
    hist = history[:30]
    exact = scorer.topk(hist, 10, user_idx=np.arange(30), exclude=hist)
    popular = set(np.argsort(-scorer.components["pop"].arrays["popularity"])[:10].tolist())
    assert np.mean([len(set(e) & popular) / 10 for e in exact.tolist()]) < recall - 0.3


def _wide_content(seed: int = 5) -> tuple[Scorer, sp.csr_matrix]:
    """Content over 3,000 categories (most items in one, some in two), as a shop's log gives it."""
    rng = np.random.default_rng(seed)
    first = rng.zipf(1.4, N_ITEMS) % 3_000
    second = rng.integers(0, 3_000, N_ITEMS)
    two = rng.random(N_ITEMS) < 0.2
    rows = np.concatenate([np.arange(N_ITEMS), np.flatnonzero(two)])
    cols = np.concatenate([first, second[two]])
    feats = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_ITEMS, 3_000))
    feats.data[:] = 1.0
    scorer, history = _scorer(seed)
    components = {
        "content": Component("content", {"item_features": feats}),
        "pop": scorer.components["pop"],
        "knn": scorer.components["knn"],
    }
    return Scorer(components, {"content": 1.0, "pop": 0.3, "knn": 0.5}), history


@pytest.mark.parametrize("dense_profile", [True, False])
def test_a_wide_vocabulary_is_standardised_from_a_sparse_gram(
    dense_profile: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_assets.contract import retrieval

    if not dense_profile:  # a vocabulary too wide for a dense profile per request
        monkeypatch.setattr(retrieval, "DENSE_PROFILE_LIMIT", 100)
    scorer, history = _wide_content()
    arrays = retrieval_arrays(scorer, history)
    assert "content.gram_data" in arrays and "content.gram" not in arrays
    stored = sum(arrays[f"content.gram_{k}"].nbytes for k in ("data", "indices", "indptr"))
    assert stored < 3_000 * 3_000 * 8 / 20  # far below the dense matrix
    save_artifact(_artifact(scorer, history, arrays), str(tmp_path))
    mapped = load_artifact(str(tmp_path), mmap=True)
    for retriever in (Retriever(scorer, arrays), Retriever(mapped.scorer, mapped.retrieval)):
        for u in range(0, N_USERS, 5):
            idx, w = _row(history, u)
            # the content part is scored on the candidates, not over the catalog
            prepared = retriever._prepare("content", idx, w, u)
            assert prepared.profile is not None and (prepared.dense_profile is not None) == dense_profile
            cand, total, _ = retriever.blend(idx, w, u)
            np.testing.assert_allclose(total, scorer.score_one(idx, w, u)[cand], rtol=1e-4, atol=1e-4)


def test_a_gram_too_large_to_store_scores_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys_assets.contract import retrieval

    scorer, history = _wide_content()
    monkeypatch.setattr(retrieval, "SPARSE_GRAM_LIMIT", 100)
    arrays = retrieval_arrays(scorer, history)
    assert not any(k.startswith("content.gram") for k in arrays)
    retriever = Retriever(scorer, arrays)
    idx, w = _row(history, 3)
    assert retriever._prepare("content", idx, w, 3).full is not None
    cand, total, _ = retriever.blend(idx, w, 3)
    np.testing.assert_allclose(total, scorer.score_one(idx, w, 3)[cand], rtol=1e-4, atol=1e-4)


def test_term_lists_keep_each_term_s_heaviest_items_ties_to_the_lowest_index() -> None:
    from recsys_assets.contract.retrieval import term_lists

    feats = sp.csr_matrix(
        np.array(
            [
                [0.5, 0.0, 1.0],
                [0.9, 0.0, 0.0],
                [0.5, 0.0, 0.7],
                [0.5, 0.0, 0.0],
                [0.2, 0.0, 0.7],
            ],
            dtype=np.float32,
        )
    )
    lists = term_lists(Component("content", {"item_features": feats}), per_term=3)
    items, indptr = lists["term_items"], lists["term_indptr"]
    assert indptr.tolist() == [0, 3, 3, 6]  # term 1 has no item
    assert items[0:3].tolist() == [1, 0, 2]  # 0.9, then the 0.5s by index (3 is fourth)
    assert items[3:6].tolist() == [0, 2, 4]


def test_a_content_champion_over_many_categories_keeps_its_top_items_on_the_candidate_path() -> None:
    scorer, history = _wide_content()
    content = Scorer(
        {"content": scorer.components["content"], "pop": scorer.components["pop"]}, {"content": 1.0, "pop": 0.1}
    )
    arrays = retrieval_arrays(content, history)
    assert {"content.term_items", "content.term_indptr"} <= set(arrays)
    # every item with an event, as in a log the catalog is read from: no cold item to propose
    arrays["content.cold"] = np.empty(0, dtype=np.int64)
    for retriever in (Retriever(content, arrays), Retriever(content, {})):  # stored, or built for an older artifact
        recall = []
        for u in range(N_USERS):
            idx, w = _row(history, u)
            exact = content.topk_one(idx, w, 10, u, exclude=idx)
            approx = retriever.topk_one(idx, w, 10, u, exclude=idx)
            recall.append(len(set(exact.tolist()) & set(approx.tolist())) / 10)
        assert np.mean(recall) >= 0.95, np.mean(recall)
