"""The API's look-up tables come from the artifact's arrays: same answers as dicts and lists, shared
pages instead of per-worker Python objects, older artifacts still served, damaged tables refused."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_assets.contract.artifact import MANIFEST, ArtifactError, ServingArtifact, load_artifact, save_artifact
from recsys_assets.contract.lookup import IdIndex
from recsys_assets.contract.scoring import Component, Scorer
from serving.loaded import LoadedModel
from serving.recommend import UserHistory, build_history, recommend, similar_items

CATEGORIES = ["Drama|Comedy", "", "drama", "Sci-Fi", "Comedy|Sci-Fi|Horror"]


def _catalog(n_items: int, n_users: int = 50, seed: int = 0) -> ServingArtifact:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n_items, 8)).astype(np.float32)

    def sparse(rows: int, per_row: int) -> sp.csr_matrix:
        cols = rng.integers(0, n_items, rows * per_row)
        m = sp.csr_matrix((rng.random(len(cols)), (np.repeat(np.arange(rows), per_row), cols)), (rows, n_items))
        m.sum_duplicates()
        return m.astype(np.float32)

    sim, history = sparse(n_items, 5), sparse(n_users, 8)
    history.data[:] = 1.0
    scorer = Scorer(
        {
            "emb": Component("embedding", {"item_factors": items, "user_factors": rng.normal(size=(n_users, 8))}),
            "knn": Component("item_item", {"similarity": sim}),
            "pop": Component("popularity", {"popularity": rng.pareto(1.5, n_items).astype(np.float32)}),
        },
        {"emb": 1.0, "knn": 0.5, "pop": 0.2},
    )
    # ids not in row order, so the stored order matters
    ids = np.asarray([f"item-{(j * 7919) % n_items:07d}" for j in range(n_items)])
    return ServingArtifact(
        model_name="Synthetic",
        model_version="v1",
        scorer=scorer,
        user_ids=np.asarray([f"user-{(u * 31) % n_users}" for u in range(n_users)]),
        item_ids=ids,
        history=history,
        item_titles=np.asarray([f"Title {j}" if j % 3 else "" for j in range(n_items)]),
        item_categories=np.asarray([CATEGORIES[j % len(CATEGORIES)] for j in range(n_items)]),
    )


def test_id_index_answers_like_a_dict() -> None:
    ids = np.asarray(["b", "a", "c10", "c2", "é", ""])
    index = IdIndex(ids)
    for row, key in enumerate(ids.tolist()):
        assert index.get(key) == row and key in index and index[key] == row
    assert index.get(7, -1) == -1 and None not in index
    for unknown in ("d", "c", "a ", "bb", "c1"):
        assert index.get(unknown, -1) == -1 and unknown not in index
    with pytest.raises(KeyError):
        index["zz"]
    assert IdIndex(np.asarray([], dtype=str)).get("a", -1) == -1


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("lookup")
    save_artifact(_catalog(600), str(directory))
    return directory


def test_stored_tables_serve_as_the_old_per_worker_ones(stored: Path) -> None:
    mapped = load_artifact(str(stored), mmap=True)
    assert {"user_order", "item_order", "category_items", "knn.similarity_t"} <= set(mapped.lookup)
    new = LoadedModel.build(mapped, "x")
    old_art = load_artifact(str(stored))
    old_art.lookup = {}  # an artifact written before the tables: computed at load
    old = LoadedModel.build(old_art, "x")
    art = mapped
    for j, item in enumerate(art.item_ids.tolist()):
        assert new.item_index.get(item) == j == old.item_index.get(item)
        assert new.titles[j] == (str(art.item_titles[j]) or item)
        assert new.categories[j] == [c for c in str(art.item_categories[j]).split("|") if c]
    assert new.item_index.get("item-nope") is None and new.user_index.get("nobody", -1) == -1
    assert new.category_names.get("sci-fi") == "Sci-Fi" and new.category_names.get("drama") == "Drama"
    dramas = new.category_items.get("drama")
    assert dramas.dtype == np.int64 and dramas.tolist() == [
        j for j in range(len(art.item_ids)) if "drama" in str(art.item_categories[j]).casefold().split("|")
    ]
    assert new.category_items.get("western", None) is None
    assert (new.similarity_t["knn"] != sp.csr_matrix(art.scorer.components["knn"].arrays["similarity"]).T).nnz == 0
    weights = {"click": 1.0}
    for user in ["user-3", "user-17", "someone-new"]:
        for category in (None, "Comedy", "sci-fi"):
            a = recommend(new, build_history(new, user, [], weights), 10, category, True)
            b = recommend(old, build_history(old, user, [], weights), 10, category, True)
            assert a == b and a
    assert similar_items(new, str(art.item_ids[5]), 5) == similar_items(old, str(art.item_ids[5]), 5)


def test_damaged_tables_are_refused(stored: Path, tmp_path: Path) -> None:
    art = load_artifact(str(stored))
    art.lookup = dict(art.lookup, item_order=np.full(len(art.item_ids), len(art.item_ids) + 5, dtype=np.int32))
    with pytest.raises(ArtifactError, match="look-up tables"):
        LoadedModel.build(art, "x")
    art.lookup = {k: v for k, v in load_artifact(str(stored)).lookup.items() if k != "knn.similarity_t"}
    with pytest.raises(ArtifactError, match="similarity_t"):
        LoadedModel.build(art, "x")
    manifest = json.loads((stored / MANIFEST).read_text())
    assert [a["name"] for a in manifest["lookup"]][:2] == ["lookup.user_order", "lookup.item_order"]


def test_a_worker_holds_no_per_item_python_objects(tmp_path: Path) -> None:
    """At 100k items the dicts and lists the API used to build took ~25 MB per worker; the tables
    read from the mapped file leave only small per-process state."""
    save_artifact(_catalog(100_000, seed=2), str(tmp_path))
    art = load_artifact(str(tmp_path), mmap=True)
    tracemalloc.start()
    try:
        model = LoadedModel.build(art, "x", candidate_threshold=0)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert model.item_index.get(str(art.item_ids[99_999])) == 99_999
    assert current < 4_000_000, f"{current / 1e6:.1f} MB held after build"
    h = UserHistory(idx=np.array([3, 4]), weights=np.ones(2, dtype=np.float32), user=-1)
    assert len(recommend(model, h, 10, "comedy", True)) == 10
