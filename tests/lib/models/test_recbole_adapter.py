"""The RecBole adapter: ids, scores, metrics and embeddings line up with RecBole's, and its configuration refuses
what RecBole would only reject deep inside (or silently misread).

The data set is the model tests' checkerboard (`tests/lib/models/checkerboard.py`); that every supported model
learns it, through the adapter, is the model contract's check (`tests/lib/models/test_contract.py`).
"""

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from recsys_assets.lib.models.recbole_adapter import (
    RecBoleModelConfig,
    TrainedRecBoleModel,
    resolve_model_name,
    run_quick_start,
    train_recbole_model,
)
from tests.conftest import ROOT
from tests.lib.models.checkerboard import TINY_SETTINGS, checkerboard


@pytest.fixture(scope="module")
def splits() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    split = checkerboard().split
    return split.train, split.valid, split.test


@pytest.fixture(scope="module")
def trained_bpr(splits) -> TrainedRecBoleModel:
    return train_recbole_model(RecBoleModelConfig(model="BPR", **TINY_SETTINGS["BPR"]), *splits)


def test_recommend_in_our_ids_and_recboles_own_test_metrics(trained_bpr: TrainedRecBoleModel, splits) -> None:
    train, _valid, _test = splits
    users = sorted(train["user_id"].unique())
    recommendations = trained_bpr.recommend(users, k=5)
    assert list(recommendations.columns) == ["user_id", "rank", "item_id", "score"]
    assert len(recommendations) == 5 * len(users)
    assert (recommendations.groupby("user_id")["score"].diff().dropna() <= 0).all()
    seen = set(zip(train["user_id"], train["item_id"], strict=True))
    assert not any((u, i) in seen for u, i in zip(recommendations["user_id"], recommendations["item_id"], strict=True))
    # RecBole's own test metrics: chance is about 10/17 (train and valid items are not ranked).
    assert set(trained_bpr.test_metrics) >= {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"}
    assert trained_bpr.test_metrics["hit@10"] >= 0.9


def test_scores_ids_and_exclusion(trained_bpr: TrainedRecBoleModel, splits) -> None:
    train, valid, test = splits
    all_users = set(pd.concat([train, valid, test])["user_id"])
    assert set(trained_bpr.user_ids) == all_users
    assert set(trained_bpr.item_ids) == set(pd.concat([train, valid, test])["item_id"])
    assert [trained_bpr.user_index[user] for user in trained_bpr.user_ids] == list(range(1, len(all_users) + 1))

    scores = trained_bpr.score(["user 1-3", "user 0-2"])
    assert scores.shape == (2, len(trained_bpr.item_ids))
    seen = train.loc[train["user_id"] == "user 1-3", "item_id"]
    columns = [trained_bpr.item_index[item] - 1 for item in seen]
    assert np.isneginf(scores[0, columns]).all()
    assert np.isfinite(scores[0]).sum() == len(trained_bpr.item_ids) - len(columns)
    assert np.isfinite(trained_bpr.score(["user 1-3"], exclude_history=False)).all()

    with pytest.raises(ValueError, match="unknown to the model"):
        trained_bpr.score(["user 9-9"])


def test_our_metrics_match_recboles(trained_bpr: TrainedRecBoleModel, splits) -> None:
    """RecBole's test ranking excludes train and valid items; ours with the same history gives the same recall."""
    _train, _valid, test = splits
    users = sorted(test["user_id"].unique())
    top = trained_bpr.recommend(users, k=10, history="train+valid")
    relevant = set(zip(test["user_id"], test["item_id"], strict=True))
    hits = top.apply(lambda row: (row["user_id"], row["item_id"]) in relevant, axis=1).groupby(top["user_id"]).sum()
    positives = test.groupby("user_id")["item_id"].nunique()
    recall = (hits / positives.reindex(hits.index)).mean()
    assert recall == pytest.approx(trained_bpr.test_metrics["recall@10"], abs=1e-4)


def test_embeddings_reproduce_scores(trained_bpr: TrainedRecBoleModel) -> None:
    export = trained_bpr.embeddings()
    assert export is not None and export.exact
    assert export.user_ids == trained_bpr.user_ids and export.item_ids == trained_bpr.item_ids
    users = ["user 0-1", "user 1-1"]
    rows = [trained_bpr.user_index[user] - 1 for user in users]
    np.testing.assert_allclose(
        export.user_embeddings[rows] @ export.item_embeddings.T,
        trained_bpr.score(users, exclude_history=False),
        rtol=1e-4,
        atol=1e-5,
    )


def test_misspelt_model_name_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"Unknown RecBole model 'LigthGCN'\. Did you mean 'LightGCN'\?"):
        RecBoleModelConfig(model="LigthGCN")
    with pytest.raises(ValueError, match="Supported models: Pop, ItemKNN"):
        resolve_model_name("NoSuchModel")
    assert RecBoleModelConfig(model="lightgcn").model == "LightGCN"


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="set by the adapter"):
        RecBoleModelConfig(params={"epochs": 3})
    with pytest.raises(ValueError, match="must be a number"):
        RecBoleModelConfig(params={"mlp_hidden_size": {"a": 1}})
    config = RecBoleModelConfig(model="NeuMF", embedding_size=8, params={"mlp_hidden_size": [16, 8], "dropout_prob": 0})
    settings = config.recbole_settings()
    assert settings["mf_embedding_size"] == settings["mlp_embedding_size"] == 8
    assert settings["mlp_hidden_size"] == [16, 8]
    assert RecBoleModelConfig(model="SASRec").recbole_settings()["train_neg_sample_args"] is None
    with pytest.raises(ValueError, match="valid_metric 'NDCG@20' is not among metrics"):
        RecBoleModelConfig(valid_metric="NDCG@20")


def test_config_is_plain_pydantic_and_the_model_library_imports_no_dagster() -> None:
    code = """
import sys
import pydantic
from recsys_assets.lib.models import base, candidates, fitting, native, recbole_adapter, refit, tuning
assert issubclass(recbole_adapter.RecBoleModelConfig, pydantic.BaseModel)
assert "dagster" not in sys.modules, "the model library imports dagster"
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    with pytest.raises(ValueError, match="extra"):
        RecBoleModelConfig(model="BPR", epoch=3)  # a misspelt field is an error, not silently dropped


def test_splits_must_be_non_empty_and_canonical(splits) -> None:
    train, valid, test = splits
    with pytest.raises(ValueError, match="valid split is empty"):
        train_recbole_model(RecBoleModelConfig(model="Pop"), train, valid.iloc[0:0], test)
    with pytest.raises(ValueError, match="lacks column"):
        train_recbole_model(RecBoleModelConfig(model="Pop"), train.drop(columns="timestamp"), valid, test)


@pytest.mark.integration
def test_quick_start_reproduces_recboles_published_bpr_on_ml_100k() -> None:
    """RecBole's docs (get_started/started/general.rst): test NDCG@10 0.292 and Recall@10 0.2523 for BPR."""
    started = time.perf_counter()
    result = run_quick_start("BPR")
    elapsed = time.perf_counter() - started
    print(f"BPR quick start: {result.test_result} after {result.epochs_trained} epochs, {elapsed:.0f}s")
    assert result.test_result["ndcg@10"] == pytest.approx(0.292, abs=0.02)
    assert result.test_result["recall@10"] == pytest.approx(0.2523, abs=0.02)


def test_validated_in_batches_above_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above `recbole_collector_cells`, RecBole trains epoch by epoch and our batched NDCG@10 early-stops it:
    RecBole's own validation and test never run, and the model keeps its best epoch's weights."""
    from recbole.trainer.trainer import Trainer

    from recsys_assets.lib.evaluation.batched import EvaluationConfig
    from recsys_assets.lib.models.fitting import valid_ndcg
    from recsys_assets.lib.models.recbole_recommender import RecBoleRecommender

    data = checkerboard()
    config = RecBoleModelConfig(model="BPR", **{**TINY_SETTINGS["BPR"], "epochs": 6, "stopping_step": 2})
    assert not RecBoleRecommender(config).validated_in_batches(data)  # the default: RecBole's collector

    def refuse(*_args, **_kwargs):
        raise AssertionError("RecBole's collector was used")

    monkeypatch.setattr(Trainer, "_valid_epoch", refuse)
    monkeypatch.setattr(Trainer, "evaluate", refuse)
    evaluation = EvaluationConfig(recbole_collector_cells=0, batch_memory_mb=1)
    model = RecBoleRecommender(config, evaluation)
    assert model.validated_in_batches(data)
    model.fit(data)
    trained = model.trained
    assert trained.test_metrics == {}
    # one validation per epoch; with stopping_step 2 at least three epochs run
    assert 3 <= trained.epochs_trained <= 6 and len(trained.valid_scores) == trained.epochs_trained
    assert trained.best_valid_score == max(trained.valid_scores) == trained.best_valid_metrics["validate"]
    # the weights kept are the best epoch's: validating them again gives its value
    assert valid_ndcg(model.score, data, evaluation) == pytest.approx(trained.best_valid_score, abs=1e-12)
