"""Train RecBole models on our own train/valid/test splits behind a typed interface.

RecBole is driven by a string-keyed configuration and reads "atomic" files from disk; both stay inside this adapter
(`recbole_config` builds the configuration, `recbole_data` writes the files). A caller passes a `RecBoleModelConfig`
and the canonical interactions split into train, valid and test DataFrames, and gets back a `TrainedRecBoleModel`:
full-ranking scores and top-K items for our user ids, RecBole's own test metrics, and the maps between our ids and
RecBole's.

The splits are written as RecBole benchmark files, so RecBole trains, early-stops and tests on exactly the rows the
caller chose, the same rows every other model sees. The test part of a general model may be empty (a refit for
serving): its file then holds only the header and nothing is tested.

`run_quick_start` is the other way in: RecBole's own quick-start protocol on its bundled ml-100k, with RecBole
splitting the data itself, to check that this stack reproduces RecBole's published figures.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_assets.lib.models.recbole_compat import patch_recbole
from recsys_assets.lib.models.recbole_config import (
    SUPPORTED_MODELS,
    ModelSpec,
    RecBoleModelConfig,
    build_config,
    make_trainer,
    resolve_model_name,
)
from recsys_assets.lib.models.recbole_data import (
    DATASET_NAME,
    INTERACTION_COLUMNS,
    ITEM_FIELD,
    SPLITS,
    USER_FIELD,
    check_frame,
    data_settings,
    encode,
    id_universe,
    write_atomic_files,
)
from recsys_assets.lib.models.recbole_trained import EmbeddingExport, TrainedRecBoleModel

# The adapter's whole surface, wherever each name is defined.
__all__ = [
    "INTERACTION_COLUMNS",
    "SUPPORTED_MODELS",
    "EmbeddingExport",
    "ModelSpec",
    "QuickStartResult",
    "RecBoleModelConfig",
    "TrainedRecBoleModel",
    "resolve_model_name",
    "run_quick_start",
    "train_recbole_model",
]

logger = logging.getLogger(__name__)

# Validation of a model during training (e.g. NDCG@10 of the batched evaluation), higher is better.
Validate = Callable[[TrainedRecBoleModel], float]


def train_recbole_model(
    config: RecBoleModelConfig,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    *,
    validate: Validate | None = None,
) -> TrainedRecBoleModel:
    """Train `config.model` on `train`, early-stop on `valid`, report RecBole's metrics on `test`.

    The frames follow the canonical interactions schema (`INTERACTION_COLUMNS`); the caller filters event types.
    General models see each (user, item) pair once per split; sequential models see every event, oldest first,
    each valid/test event predicted from all earlier events of its user (train, then valid, then test).
    `test` may be empty for general models: the best validation epoch is still loaded, and `test_metrics` is empty.

    With `validate` (a function of the model being trained, higher is better), RecBole trains one epoch at a
    time with no validation data and `validate` early-stops it instead of RecBole's collector (whose full-sort
    evaluation holds every validation user's scores); the best epoch's weights are kept, nothing is tested by
    RecBole (`test_metrics` is empty) and `best_valid_metrics` holds `validate`'s value as `"validate"`.
    """
    patch_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    spec = config.spec
    frames = {name: check_frame(name, frame) for name, frame in zip(SPLITS, (train, valid, test), strict=True)}
    if spec.sequential and test.empty:
        # RecBole cannot read an item-list column from a file without rows.
        raise ValueError(f"{config.model} is sequential and needs rows in the test split")
    user_universe = id_universe(frames, "user_id")
    item_universe = id_universe(frames, "item_id")
    coded = {name: encode(frame, user_universe, item_universe, spec) for name, frame in frames.items()}

    with tempfile.TemporaryDirectory(prefix="recbole-") as workdir:
        root = Path(workdir)
        write_atomic_files(root / DATASET_NAME, coded, spec, config.max_seq_length)
        settings = data_settings(root, spec) | config.recbole_settings()
        recbole_config = build_config(config.model, DATASET_NAME, settings)
        init_seed(recbole_config["seed"], recbole_config["reproducibility"])
        dataset = create_dataset(recbole_config)
        train_data, valid_data, test_data = data_preparation(recbole_config, dataset)
        init_seed(recbole_config["seed"], recbole_config["reproducibility"])
        model = get_model(recbole_config["model"])(recbole_config, train_data._dataset).to(recbole_config["device"])
        trainer = make_trainer(recbole_config, model)
        trained = _trained(config, model, dataset, coded, user_universe, item_universe)

        curve: list[float] = []
        started = time.perf_counter()
        if validate is not None:
            best_valid_score = _fit_validated_by(validate, trained, trainer, train_data, config.stopping_step, curve)
            best_valid_result: Mapping[str, Any] = {"validate": best_valid_score}
        else:
            best_valid_score, best_valid_result = trainer.fit(
                train_data, valid_data, verbose=False, saved=True, callback_fn=lambda _epoch, score: curve.append(score)
            )
        train_seconds = time.perf_counter() - started
        if validate is not None:
            test_result: Mapping[str, Any] = {}
        elif coded["test"].empty:
            _load_best_epoch(trainer, model)
            test_result = {}
        else:
            # Loads the best epoch's weights back into `model` before testing.
            test_result = trainer.evaluate(test_data, load_best_model=True)

    trained.test_metrics = _floats(test_result)
    trained.best_valid_metrics = _floats(best_valid_result)
    trained.best_valid_score = float(best_valid_score)
    trained.epochs_trained = len(curve)
    trained.train_seconds = train_seconds
    trained.valid_scores = tuple(float(score) for score in curve)
    logger.info(
        "%s trained %d epoch(s) in %.1fs; test %s", config.model, trained.epochs_trained, train_seconds, test_result
    )
    return trained


def _trained(
    config: RecBoleModelConfig,
    model: Any,
    dataset: Any,
    coded: dict[str, pd.DataFrame],
    user_universe: Any,
    item_universe: Any,
) -> TrainedRecBoleModel:
    """The model (still to be trained) with our ids and the histories it conditions on; no metrics yet."""
    user_tokens = list(dataset.field2id_token[USER_FIELD][1:])
    item_tokens = list(dataset.field2id_token[ITEM_FIELD][1:])
    user_token_id, item_token_id = dataset.field2token_id[USER_FIELD], dataset.field2token_id[ITEM_FIELD]
    histories = {
        name: pd.DataFrame(
            {
                "user": frame["user"].map(user_token_id).to_numpy(dtype=np.int64),
                "item": frame["item"].map(item_token_id).to_numpy(dtype=np.int64),
            }
        )
        for name, frame in coded.items()
    }
    return TrainedRecBoleModel(
        config=config,
        model=model,
        user_ids=[user_universe[int(token)] for token in user_tokens],
        item_ids=[item_universe[int(token)] for token in item_tokens],
        histories=histories,
        test_metrics={},
        best_valid_metrics={},
        best_valid_score=float("nan"),
        epochs_trained=0,
        train_seconds=0.0,
    )


def _fit_validated_by(
    validate: Validate,
    trained: TrainedRecBoleModel,
    trainer: Any,
    train_data: Any,
    stopping_step: int,
    curve: list[float],
) -> float:
    """RecBole's `Trainer.fit` one epoch at a time without validation data, early-stopped by `validate`;
    the model ends with the best epoch's weights. Returns the best value."""
    model, n_epochs = trained.model, trainer.epochs  # a traditional model's trainer has set its epochs to 1
    best, best_state, since_best = -np.inf, None, 0
    for epoch in range(n_epochs):
        trainer.start_epoch, trainer.epochs = epoch, epoch + 1
        trainer.fit(train_data, None, verbose=False, saved=False)
        value = float(validate(trained))
        curve.append(value)
        if value > best:
            best, since_best = value, 0
            if n_epochs > 1:  # other parameters: e.g. LightGCN's cached propagated embeddings
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(model.other_parameter()))
        else:
            since_best += 1
            if since_best >= stopping_step:
                break
    if best_state is not None:
        model.load_state_dict(best_state[0])
        model.load_other_parameter(best_state[1])
    return float(best)


@dataclass(frozen=True)
class QuickStartResult:
    """What RecBole's quick start reports: metrics at the best validation epoch and on the test split."""

    model: str
    dataset: str
    best_valid_score: float
    best_valid_result: dict[str, float]
    test_result: dict[str, float]
    epochs_trained: int
    seconds: float


def run_quick_start(
    model: str = "BPR", dataset: str = "ml-100k", overrides: Mapping[str, Any] | None = None
) -> QuickStartResult:
    """RecBole's `run_recbole` protocol, with RecBole's defaults and its own split, without its log files.

    For ml-100k (bundled with RecBole) that is: random 8:1:1 split per user, full ranking, top-10 Recall, MRR,
    NDCG, Hit and Precision, early stopping on MRR@10, seed 2020. Only the device (CPU), the progress bars and the
    checkpoint folder (temporary) differ from a plain `run_recbole(model, dataset)`; `overrides` adds settings.
    """
    patch_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    name = resolve_model_name(model)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recbole-quick-start-") as workdir:
        settings = {"use_gpu": False, "show_progress": False, "checkpoint_dir": str(Path(workdir) / "saved")}
        config = build_config(name, dataset, settings | dict(overrides or {}))
        init_seed(config["seed"], config["reproducibility"])
        data = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, data)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        recommender = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        # run_recbole also counts FLOPs here; that only logs, on a deep copy of the model, and draws no random numbers.
        trainer = make_trainer(config, recommender)
        epochs: list[int] = []
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, verbose=False, saved=True, callback_fn=lambda epoch, _score: epochs.append(epoch)
        )
        test_result = trainer.evaluate(test_data, load_best_model=True)
    return QuickStartResult(
        model=name,
        dataset=dataset,
        best_valid_score=float(best_valid_score),
        best_valid_result=_floats(best_valid_result),
        test_result=_floats(test_result),
        epochs_trained=len(epochs),
        seconds=time.perf_counter() - started,
    )


def _load_best_epoch(trainer: Any, model: Any) -> None:
    """What `Trainer.evaluate(load_best_model=True)` does first, which it skips when there is nothing to test."""
    import torch

    # The checkpoint is this run's own, in its temporary folder; it pickles RecBole's Config next to the weights.
    checkpoint = torch.load(trainer.saved_model_file, map_location=trainer.device, weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))


def _floats(result: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in result.items()}
