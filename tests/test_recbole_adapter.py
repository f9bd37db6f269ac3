"""The RecBole adapter: every supported model learns a known answer on tiny data, ids and metrics line up.

The known answer is a checkerboard: two groups of users, each interacting only with its own half of the items. Any
personalised model must then recommend, to every user, unseen items from that user's own half. Pop cannot, and is
checked against the answer it does know: training-set popularity.
"""

import time

import numpy as np
import pandas as pd
import pytest

from recsys_assets.lib.models.recbole_adapter import (
    SUPPORTED_MODELS,
    RecBoleModelConfig,
    TrainedRecBoleModel,
    resolve_model_name,
    run_quick_start,
    train_recbole_model,
)

USERS_PER_GROUP, ITEMS_PER_HALF, EVENTS_PER_USER = 16, 12, 8

# Small and fast, yet enough to learn the checkerboard (well under a second per model on one core). Early stopping is
# off (stopping_step = epochs): 32 validation users are too few to judge an epoch by.
TINY_SETTINGS: dict[str, dict[str, object]] = {
    "Pop": {},
    "ItemKNN": {},
    "EASE": {},
    "BPR": {"epochs": 40, "stopping_step": 40, "learning_rate": 0.05, "embedding_size": 16},
    "NeuMF": {
        "epochs": 80,
        "stopping_step": 80,
        "learning_rate": 0.01,
        "embedding_size": 16,
        "params": {"mlp_hidden_size": [16]},
    },
    "LightGCN": {"epochs": 40, "stopping_step": 40, "learning_rate": 0.05, "embedding_size": 16},
    "NGCF": {"epochs": 60, "stopping_step": 60, "learning_rate": 0.01, "embedding_size": 16},
    "MultiVAE": {
        "epochs": 40,
        "stopping_step": 40,
        "learning_rate": 0.01,
        "embedding_size": 16,
        "params": {"mlp_hidden_size": [32]},
    },
    # SASRec: about 250 s per epoch on ml-100k at length 50 on this CPU, hence a short length and a tiny model here.
    "SASRec": {
        "epochs": 40,
        "stopping_step": 40,
        "learning_rate": 0.01,
        "embedding_size": 16,
        "max_seq_length": 10,
        "params": {"n_layers": 1, "n_heads": 1, "inner_size": 32},
    },
}


def group_of(identifier: str) -> str:
    """'user 1-3' and 'item 1-7' belong to group '1' (ids with spaces: RecBole's file format must not see them)."""
    return identifier.split(" ")[1].split("-")[0]


def checkerboard(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Canonical interactions split by time: each user's first 6 events train, the 7th validates, the 8th tests."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for group in range(2):
        for user in range(USERS_PER_GROUP):
            items = rng.permutation(ITEMS_PER_HALF)[:EVENTS_PER_USER]
            for step, item in enumerate(items):
                rows.append((f"user {group}-{user}", f"item {group}-{item}", "click", start + pd.Timedelta(hours=step)))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])
    frame["timestamp"] = frame["timestamp"].astype("datetime64[us, UTC]")
    frame["value"], frame["weight"] = 1.0, 1.0
    step = frame.groupby("user_id").cumcount()
    return frame[step < 6], frame[step == 6], frame[step == 7]


@pytest.fixture(scope="module")
def splits() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return checkerboard()


@pytest.fixture(scope="module")
def trained_bpr(splits) -> TrainedRecBoleModel:
    return train_recbole_model(RecBoleModelConfig(model="BPR", **TINY_SETTINGS["BPR"]), *splits)


def test_every_supported_model_has_tiny_settings() -> None:
    assert set(TINY_SETTINGS) == set(SUPPORTED_MODELS)
    assert {"Pop", "ItemKNN", "BPR", "NeuMF", "LightGCN", "EASE", "MultiVAE", "SASRec"} <= set(SUPPORTED_MODELS)


@pytest.mark.parametrize("model", [name for name in SUPPORTED_MODELS if name != "Pop"])
def test_model_recommends_from_the_users_own_half(model: str, splits) -> None:
    train, valid, test = splits
    trained = train_recbole_model(RecBoleModelConfig(model=model, **TINY_SETTINGS[model]), train, valid, test)

    users = sorted(train["user_id"].unique())
    recommendations = trained.recommend(users, k=5)
    assert len(recommendations) == 5 * len(users)
    own_half = recommendations["user_id"].map(group_of) == recommendations["item_id"].map(group_of)
    # Each user has 6 unseen items of its own half (4 never seen, plus its valid and test items) to fill a top 5.
    assert own_half[recommendations["rank"] == 1].all()
    assert own_half.mean() >= 0.95
    # Training items are excluded.
    seen = set(zip(train["user_id"], train["item_id"], strict=True))
    assert not any((u, i) in seen for u, i in zip(recommendations["user_id"], recommendations["item_id"], strict=True))

    # RecBole's own test metrics: chance is about 10/17 (general models) or 10/24 (SASRec keeps seen items).
    assert set(trained.test_metrics) >= {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"}
    assert trained.test_metrics["hit@10"] >= (0.6 if SUPPORTED_MODELS[model].sequential else 0.9)


def test_pop_ranks_by_training_popularity(splits) -> None:
    train, valid, test = splits
    trained = train_recbole_model(RecBoleModelConfig(model="Pop"), train, valid, test)
    counts = train["item_id"].value_counts().reindex(trained.item_ids, fill_value=0).to_numpy()
    scores = trained.score(["user 0-0", "user 1-5"], exclude_history=False)
    np.testing.assert_allclose(scores, np.tile(counts / counts.max(), (2, 1)), rtol=1e-6)


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
