"""The refit for serving, on MovieLens-100k: the newest 10% of events are held back as "the future";
on the rest, the evaluated candidates (trained on the temporal split's earliest 80%) are compared with
their refits (trained on all but the newest 5%), EASE and the hybrid blending EASE."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys_assets.contract.artifact import MANIFEST, ServingArtifact, load_artifact, save_artifact
from recsys_assets.contract.scoring import topk_from_scores
from recsys_assets.contract.settings import get_settings
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.evaluation.metrics import evaluate_topk
from recsys_assets.lib.ingest import cleaning, readers
from recsys_assets.lib.models.fitting import (
    artifact_metrics,
    evaluate_scores,
    fingerprint,
    prepare,
    serving_artifact,
)
from recsys_assets.lib.models.refit import refit_artifact, refit_ratios


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    s = get_settings(storage_uri=str(tmp_path_factory.mktemp("refit")))
    raw, items, users = readers.read_movielens()
    inter = cleaning.clean_events(raw, s.cleaning()).interactions
    held = S.temporal_split(inter, (0.9, 0.0, 0.1))
    past, future = held.train, held.test
    items, users = cleaning.build_items(inter, items), cleaning.build_users(inter, users)
    temporal = prepare(past, items, users, S.TEMPORAL)
    first_seen = past.groupby("item_id")["timestamp"].min()
    return {
        "past": past,
        "future": future,
        "items": items,
        "users": users,
        "temporal": temporal,
        # items whose every event is in the newest 20% of `past`: the evaluated candidates never saw them
        "new_items": first_seen[first_seen >= temporal.split.valid["timestamp"].min()].index,
    }


@pytest.fixture(scope="module")
def artifacts(data: dict) -> dict[str, ServingArtifact]:
    from recsys_assets.lib.models.candidates import native_candidate, recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config

    temporal, past = data["temporal"], data["past"]
    fp = fingerprint(past)
    ease = recbole_candidate(RecBoleModelConfig(**model_config("EASE", "smoke")), temporal)
    hybrid = native_candidate("Hybrid", temporal, ease)
    out = {}
    for cand in (ease, hybrid):
        res = evaluate_scores(cand.scores(np.arange(temporal.data.n_users)), temporal, cand.name)
        out[f"{cand.name} temporal"] = serving_artifact(cand, temporal.data, fp, metrics=artifact_metrics(res))
    tables = (past, data["items"], data["users"])
    common = {"tuned": {}, "budget": "smoke", "seed": 2020}
    out["EASE refit"] = refit_artifact("EASE", *tables, **common)
    out["Hybrid refit"] = refit_artifact(
        "Hybrid", *tables, **common, reference=out["Hybrid temporal"], hybrid_cf="EASE"
    )
    return out


def past_matrix(data: dict) -> sp.csr_matrix:
    """Every event before the future, as the API would hold it for each user."""
    return S.interactions_to_csr(data["past"], data["users"]["user_id"], data["items"]["item_id"])


def new_item_ranks(art: ServingArtifact, data: dict) -> np.ndarray:
    """Rank (1 = top) of each future (user, new item) pair among the user's unseen items."""
    users, items, hist = pd.Index(data["users"]["user_id"]), pd.Index(data["items"]["item_id"]), past_matrix(data)
    pairs = data["future"][data["future"]["item_id"].isin(data["new_items"])].drop_duplicates(["user_id", "item_id"])
    u, j = users.get_indexer(pairs["user_id"]), items.get_indexer(pairs["item_id"])
    keep = np.diff(hist.indptr)[u] > 0  # users with a history to go by
    u, j = u[keep], j[keep]
    scores = art.scorer.score(hist[u], user_idx=u)
    scores[hist[u].nonzero()] = -np.inf
    return (scores > scores[np.arange(len(u)), j][:, None]).sum(axis=1) + 1


def future_ndcg(art: ServingArtifact, data: dict) -> float:
    hist = past_matrix(data)
    truth = S.interactions_to_csr(data["future"], data["users"]["user_id"], data["items"]["item_id"])
    users = np.flatnonzero((np.diff(truth.indptr) > 0) & (np.diff(hist.indptr) > 0))
    top = topk_from_scores(art.scorer.score(hist[users], user_idx=users), 10, exclude=hist[users])
    res = evaluate_topk(top, truth[users], (10,))
    return float(res.loc[res["metric"] == "ndcg", "value"].iloc[0])


def test_empty_test_part_in_the_split_code(data: dict) -> None:
    past = data["past"]
    split = S.temporal_split(past, refit_ratios(0.05))
    assert split.test.empty and list(split.test.columns) == list(past.columns)
    assert len(split.train) + len(split.valid) == len(past)
    assert split.train["timestamp"].max() < split.valid["timestamp"].min()
    assert 0.04 * len(past) <= len(split.valid) <= 0.05 * len(past)
    assert split.summary()["test_events"] == 0
    pdata = prepare(past, data["items"], data["users"], S.TEMPORAL, ratios=refit_ratios(0.05))
    assert pdata.test_truth.nnz == 0 and pdata.new_item_truth.nnz == 0
    assert pdata.valid_truth.nnz > 0 and pdata.data.matrix.nnz > 0
    with pytest.raises(ValueError, match="valid_share"):
        refit_ratios(0.0)


@pytest.mark.parametrize("model", ["EASE", "Hybrid"])
def test_refit_covers_everyone_and_every_event(model: str, data: dict, artifacts: dict) -> None:
    art, past = artifacts[f"{model} refit"], data["past"]
    assert art.item_ids.tolist() == data["items"]["item_id"].astype(str).tolist()
    assert art.user_ids.tolist() == data["users"]["user_id"].astype(str).tolist()
    assert art.history.nnz == len(past.drop_duplicates(["user_id", "item_id"]))
    assert art.history.sum() == pytest.approx(past["weight"].sum())
    assert re.fullmatch(rf"{model}-{fingerprint(past)[:8]}-\d{{14}}", art.model_version)
    # trained on every event, the newest (the validation slice that tuned the blend) included
    assert pd.Timestamp(art.trained_until) == past["timestamp"].max()
    assert pd.Timestamp(art.trained_until) > pd.Timestamp(artifacts[f"{model} temporal"].trained_until)


def test_new_items_are_known_only_after_the_refit(data: dict, artifacts: dict) -> None:
    new = pd.Index(data["items"]["item_id"]).get_indexer(data["new_items"])
    assert len(new) >= 20
    tuning = S.temporal_split(data["past"], refit_ratios(0.05))
    index = pd.Index(data["items"]["item_id"])
    only_newest = np.setdiff1d(
        index.get_indexer(tuning.valid["item_id"].unique()), index.get_indexer(tuning.train["item_id"].unique())
    )
    # items whose only events are in the newest slice (it tunes the blend): the refit knows them too
    assert len(only_newest) > 0 and np.isin(only_newest, new).all()
    known = new

    def columns_used(art: ServingArtifact, component: str) -> np.ndarray:
        sim = sp.csr_matrix(art.scorer.components[component].arrays["similarity"])
        return np.asarray(abs(sim).sum(axis=0)).ravel() > 0

    assert not columns_used(artifacts["EASE temporal"], "EASE")[new].any()
    assert columns_used(artifacts["EASE refit"], "EASE")[known].all()
    hybrid_t, hybrid_r = (artifacts[f"Hybrid {v}"].scorer.components for v in ("temporal", "refit"))
    assert not columns_used(artifacts["Hybrid temporal"], "collaborative")[new].any()
    assert columns_used(artifacts["Hybrid refit"], "collaborative")[known].all()
    assert (hybrid_t["popularity"].arrays["popularity"][new] == 0).all()
    assert (hybrid_r["popularity"].arrays["popularity"][known] > 0).all()


@pytest.mark.parametrize("model", ["EASE", "Hybrid"])
def test_refit_recommends_new_items_to_the_users_who_take_them_up(model: str, data: dict, artifacts: dict) -> None:
    """In the held-back future, users who took up a new item find it far higher in the refit's ranking
    (the temporal candidate cannot tell it from any unknown item)."""
    before, after = (new_item_ranks(artifacts[f"{model} {v}"], data) for v in ("temporal", "refit"))
    assert len(after) >= 15
    assert np.median(after) < np.median(before) / 2
    assert (after < before).mean() >= 0.75


def test_refit_hybrid_ranks_the_future_better(data: dict, artifacts: dict) -> None:
    assert future_ndcg(artifacts["Hybrid refit"], data) > future_ndcg(artifacts["Hybrid temporal"], data) + 0.02


def test_refit_round_trips_with_its_training_time(tmp_path: Path, artifacts: dict) -> None:
    art, reference = artifacts["Hybrid refit"], artifacts["Hybrid temporal"]
    # the evaluation's metrics are copied; candidates_recall@10 is measured on each artifact itself
    own = "candidates_recall@10"
    assert {k: v for k, v in art.metrics.items() if k != own} == {
        k: v for k, v in reference.metrics.items() if k != own
    }
    assert art.metrics["ndcg@10"] > 0 and 0.9 <= art.metrics[own] <= 1.0
    save_artifact(art, str(tmp_path))
    loaded = load_artifact(str(tmp_path))
    assert (loaded.trained_until, loaded.model_version, loaded.metrics) == (
        art.trained_until,
        art.model_version,
        art.metrics,
    )
    users = np.arange(0, len(art.user_ids), 37)
    np.testing.assert_array_equal(loaded.topk_for_users(users, 10), art.topk_for_users(users, 10))
    # an artifact written before the field existed loads with an empty training time
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["trained_until"]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert load_artifact(str(tmp_path)).trained_until == ""


def test_without_a_test_part_recbole_still_keeps_the_best_validation_epoch(data: dict) -> None:
    """RecBole loads the best epoch back only when it tests; with nothing to test the adapter does it."""
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig, train_recbole_model

    split = S.temporal_split(data["past"], refit_ratios(0.05))

    def train(epochs: int):
        # a learning rate this high makes validation jump around: the last epoch is rarely the best
        config = RecBoleModelConfig(
            model="MultiVAE", epochs=epochs, stopping_step=epochs, learning_rate=3e-2, valid_metric="NDCG@10"
        )
        return train_recbole_model(config, split.train, split.valid, split.test)

    longer = train(8)
    assert longer.test_metrics == {} and len(longer.valid_scores) == longer.epochs_trained == 8
    best = int(np.argmax(longer.valid_scores)) + 1
    assert best < 8 and longer.best_valid_score == max(longer.valid_scores)
    shorter = train(best)  # the same epochs up to the best one, which is also its last
    users = longer.user_ids[:100]
    np.testing.assert_array_equal(longer.score(users), shorter.score(users))


def test_refit_refuses_what_it_cannot_serve(data: dict, artifacts: dict) -> None:
    tables = (data["past"], data["items"], data["users"])
    common = {"tuned": {}, "budget": "smoke", "seed": 2020}
    with pytest.raises(ValueError, match="cannot be served"):
        refit_artifact("NeuMF", *tables, **common)
    with pytest.raises(ValueError, match="hybrid_cf"):
        refit_artifact("Hybrid", *tables, **common, hybrid_cf="Pop")
    with pytest.raises(ValueError, match="reference artifact is a Hybrid"):
        refit_artifact("EASE", *tables, **common, reference=artifacts["Hybrid temporal"])


def test_an_implicit_model_and_a_hybrid_blending_one_refit_for_serving(data: dict) -> None:
    tables = (data["past"], data["items"], data["users"])
    common = {"tuned": {}, "budget": "smoke", "seed": 2020}
    knn = refit_artifact("ItemItemBM25", *tables, **common)
    assert knn.model_name == "ItemItemBM25" and knn.scorer.components["collaborative"].kind == "item_item"
    hybrid = refit_artifact("Hybrid", *tables, **common, hybrid_cf="ALS")
    assert hybrid.scorer.components["collaborative"].kind == "embedding"
    for art in (knn, hybrid):
        assert len(art.item_ids) == len(data["items"]) and art.history.nnz == past_matrix(data).nnz
        users = np.arange(50)
        top = art.topk_for_users(users, 10)
        assert (top >= 0).all() and not sp.csr_matrix(art.history[users]).multiply(_onehot(top, len(art.item_ids))).nnz


def _onehot(top: np.ndarray, n_items: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    return sp.csr_matrix((np.ones(top.size), (rows, top.ravel())), shape=(top.shape[0], n_items))
