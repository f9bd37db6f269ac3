"""Train RecBole models on our own train/valid/test splits behind a typed interface.

RecBole is driven by a string-keyed configuration and reads "atomic" files from disk; both stay inside this module.
A caller passes a `RecBoleModelConfig` (a Dagster config) and the canonical interactions split into train, valid
and test DataFrames, and gets back a `TrainedRecBoleModel`: full-ranking scores and top-K items for our user ids,
RecBole's own test metrics, and the maps between our ids and RecBole's.

The splits are written as RecBole benchmark files (`<dataset>.train.inter`, `.valid.inter`, `.test.inter`), so
RecBole trains, early-stops and tests on exactly the rows the caller chose, the same rows every other model sees.
The test part of a general model may be empty (a refit for serving): its file then holds only the header and
nothing is tested.

`run_quick_start` is the other way in: RecBole's own quick-start protocol on its bundled ml-100k, with RecBole
splitting the data itself, to check that this stack reproduces RecBole's published figures.
"""

from __future__ import annotations

import difflib
import functools
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from unittest import mock

import dagster as dg
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from pydantic import Field, field_validator, model_validator

from recsys_assets.lib.models.recbole_compat import patch_recbole

if TYPE_CHECKING:
    import torch

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

# The canonical interactions table. RecBole models are implicit-feedback here: only user_id, item_id and timestamp
# are read (filter event types before calling; value and weight are not used).
INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event_type", "timestamp", "value", "weight")

# Never "ml-100k": RecBole silently swaps that name for its bundled copy of MovieLens.
DATASET_NAME = "recsys"
SPLITS: tuple[str, ...] = ("train", "valid", "test")
History = Literal["train", "train+valid", "all"]
_HISTORY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "train+valid": ("train", "valid"),
    "all": ("train", "valid", "test"),
}

# RecBole's field names; the sequence fields follow its defaults (ITEM_ID_FIELD + LIST_SUFFIX).
USER_FIELD, ITEM_FIELD, TIME_FIELD = "user_id", "item_id", "timestamp"
ITEM_LIST_FIELD, ITEM_LIST_LENGTH_FIELD = "item_id_list", "item_length"

# Upper bound on user x item pairs scored at once when a model only scores pairs (NeuMF).
_PAIRS_PER_BATCH = 1_000_000


@dataclass(frozen=True)
class ModelSpec:
    """What the adapter needs to know about one RecBole model."""

    name: str
    # RecBole keys that `RecBoleModelConfig.embedding_size` sets for this model (none: it has no embeddings).
    embedding_params: tuple[str, ...] = ()
    # Sequential models read an item-history list per row instead of a user id.
    sequential: bool = False
    # Non-sampling models (RecBole's docs say so per model) must train without negative sampling.
    non_sampling: bool = False


SUPPORTED_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # Memory-based: they count or correlate the training pairs, so sampled negatives would only pollute Pop.
        ModelSpec("Pop", non_sampling=True),
        ModelSpec("ItemKNN", non_sampling=True),
        ModelSpec("EASE", non_sampling=True),
        ModelSpec("BPR", embedding_params=("embedding_size",)),
        ModelSpec("NeuMF", embedding_params=("mf_embedding_size", "mlp_embedding_size")),
        ModelSpec("LightGCN", embedding_params=("embedding_size",)),
        ModelSpec("NGCF", embedding_params=("embedding_size",)),
        ModelSpec("MultiVAE", embedding_params=("latent_dimension",), non_sampling=True),
        ModelSpec("SASRec", embedding_params=("hidden_size",), sequential=True),
    )
}
_BY_LOWER_NAME = {name.lower(): name for name in SUPPORTED_MODELS}

# RecBole keys the adapter owns: data location and format, device, evaluation protocol, and the typed fields.
RESERVED_PARAMS: frozenset[str] = frozenset(
    {
        "model", "dataset", "data_path", "benchmark_filename", "checkpoint_dir", "load_col", "unload_col",
        "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "alias_of_item_id", "ITEM_LIST_LENGTH_FIELD",
        "LIST_SUFFIX", "MAX_ITEM_LIST_LENGTH", "eval_args", "repeatable", "use_gpu", "gpu_id", "device",
        "epochs", "learning_rate", "train_batch_size", "stopping_step", "seed", "reproducibility", "metrics",
        "topk", "valid_metric", "show_progress", "save_dataset", "save_dataloaders", "log_wandb", "worker",
        "nproc", "world_size", "local_rank",
    }
)  # fmt: skip


def resolve_model_name(name: str) -> str:
    """RecBole's spelling of a supported model name (any case); a clear ValueError for anything else.

    RecBole itself turns a misspelt name into an import failure deep inside `get_model`.
    """
    canonical = _BY_LOWER_NAME.get(name.strip().lower())
    if canonical is not None:
        return canonical
    close = difflib.get_close_matches(name.strip().lower(), _BY_LOWER_NAME, n=1, cutoff=0.6)
    hint = f" Did you mean {_BY_LOWER_NAME[close[0]]!r}?" if close else ""
    raise ValueError(f"Unknown RecBole model {name!r}.{hint} Supported models: {', '.join(SUPPORTED_MODELS)}.")


class RecBoleModelConfig(dg.Config):
    """How to train one RecBole model; defaults are RecBole's own (`properties/overall.yaml`)."""

    model: str = Field(default="BPR", description=f"RecBole model, one of: {', '.join(SUPPORTED_MODELS)}.")
    epochs: int = Field(default=300, ge=1, description="Maximum training epochs (early stopping may end sooner).")
    learning_rate: float = Field(default=1e-3, gt=0)
    embedding_size: int | None = Field(
        default=None,
        ge=1,
        description="Latent size (the model's own key: embedding_size, hidden_size, ...); None keeps its default.",
    )
    train_batch_size: int = Field(default=2048, ge=1)
    stopping_step: int = Field(default=10, ge=1, description="Epochs without validation improvement before stopping.")
    seed: int = 2020
    max_seq_length: int = Field(default=50, ge=1, description="Sequential models: items of history per prediction.")
    valid_metric: str = Field(default="MRR@10", description="Validation metric for early stopping and model choice.")
    metrics: list[str] = Field(default_factory=lambda: ["Recall", "MRR", "NDCG", "Hit", "Precision"])
    topk: list[int] = Field(default_factory=lambda: [10])
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Model-specific RecBole hyper-parameters: numbers, booleans, strings, or lists of numbers.",
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return resolve_model_name(value)

    @field_validator("params")
    @classmethod
    def _scalar_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Dagster's config schema cannot express `float | int | str`, so the field is `Any` and checked here.
        for key, param in value.items():
            if key in RESERVED_PARAMS:
                raise ValueError(f"params[{key!r}] is set by the adapter (or a typed field), not through params")
            is_number_list = isinstance(param, list) and all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in param
            )
            if not (isinstance(param, bool | int | float | str) or is_number_list):
                raise ValueError(f"params[{key!r}] must be a number, bool, string or list of numbers, not {param!r}")
        return value

    @model_validator(mode="after")
    def _valid_metric_is_computed(self) -> RecBoleModelConfig:
        # RecBole would only fail after the first training epoch, with a bare KeyError.
        name, _, k = self.valid_metric.partition("@")
        computed = {metric.lower() for metric in self.metrics}
        if name.lower() not in computed or (k and int(k) not in self.topk):
            raise ValueError(
                f"valid_metric {self.valid_metric!r} is not among metrics {self.metrics} at topk {self.topk}"
            )
        return self

    @property
    def spec(self) -> ModelSpec:
        return SUPPORTED_MODELS[self.model]

    def recbole_settings(self) -> dict[str, Any]:
        """The model and training part of RecBole's configuration (the data part is the adapter's)."""
        spec = self.spec
        settings: dict[str, Any] = {
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "train_batch_size": self.train_batch_size,
            "stopping_step": self.stopping_step,
            "seed": self.seed,
            "reproducibility": True,
            "metrics": list(self.metrics),
            "topk": list(self.topk),
            "valid_metric": self.valid_metric,
        }
        if self.embedding_size is not None:
            settings.update(dict.fromkeys(spec.embedding_params, self.embedding_size))
        if spec.sequential:
            settings["MAX_ITEM_LIST_LENGTH"] = self.max_seq_length
        # RecBole rejects negative sampling with a cross-entropy loss (SASRec's default) and for non-sampling models.
        if spec.non_sampling or (spec.sequential and str(self.params.get("loss_type", "CE")).upper() == "CE"):
            settings["train_neg_sample_args"] = None
        settings.update(self.params)
        return settings


@dataclass(frozen=True)
class EmbeddingExport:
    """User and item vectors whose dot products rank items; rows follow `user_ids` and `item_ids`."""

    user_ids: list[str]
    item_ids: list[str]
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    # False when the dot product leaves out part of the model (NeuMF: only its GMF path is exported).
    exact: bool


class TrainedRecBoleModel:
    """A trained RecBole model (best validation epoch) that speaks our user and item ids.

    Scores cover every item RecBole knows (every item in any of the three splits), in the order of `item_ids`.
    """

    def __init__(
        self,
        *,
        config: RecBoleModelConfig,
        model: torch.nn.Module,
        user_ids: list[str],
        item_ids: list[str],
        histories: dict[str, pd.DataFrame],
        test_metrics: dict[str, float],
        best_valid_metrics: dict[str, float],
        best_valid_score: float,
        epochs_trained: int,
        train_seconds: float,
        valid_scores: Sequence[float] = (),
    ) -> None:
        self.config = config
        self.model = model
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.test_metrics = test_metrics
        self.best_valid_metrics = best_valid_metrics
        self.best_valid_score = best_valid_score
        self.epochs_trained = epochs_trained
        self.train_seconds = train_seconds
        # `valid_metric` after each epoch; the model holds the weights of the best one
        self.valid_scores = tuple(valid_scores)
        self._histories = histories
        # RecBole's internal id 0 is its padding token, so our i-th id is internal id i + 1.
        self.user_index: dict[str, int] = {user: i + 1 for i, user in enumerate(user_ids)}
        self.item_index: dict[str, int] = {item: i + 1 for i, item in enumerate(item_ids)}

    @property
    def model_name(self) -> str:
        return self.config.model

    def history(self, history: History = "train") -> pd.DataFrame:
        """The interactions the model may condition on, as internal ids (`user`, `item`), oldest first per user."""
        frames = [self._histories[split] for split in _HISTORY_SPLITS[history]]
        return pd.concat(frames, ignore_index=True)

    def score(
        self,
        user_ids: Sequence[str],
        *,
        history: History = "train",
        exclude_history: bool = True,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """Full-ranking scores, shape (len(user_ids), len(item_ids)); items in `history` are -inf when excluded.

        `history` is also what a sequential model reads as each user's item sequence (its last `max_seq_length`).
        """
        import torch

        users = self._internal_users(user_ids)
        seen = self.history(history)
        sequences = self._sequences(seen) if self.config.spec.sequential else None
        scores = np.empty((len(users), len(self.item_ids)), dtype=np.float32)
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(users), batch_size):
                batch = users[start : start + batch_size]
                scores[start : start + len(batch)] = self._score_batch(batch, sequences)
        if exclude_history and len(seen):
            matrix = sp.csr_matrix(
                (np.ones(len(seen), dtype=np.int8), (seen["user"].to_numpy(), seen["item"].to_numpy())),
                shape=(len(self.user_ids) + 1, len(self.item_ids) + 1),
            )[users]
            rows, cols = matrix.nonzero()
            scores[rows, cols - 1] = -np.inf
        return scores

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        history: History = "train",
        exclude_history: bool = True,
    ) -> pd.DataFrame:
        """Top-`k` items per user: columns `user_id`, `rank` (1 = best), `item_id`, `score`."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        scores = self.score(user_ids, history=history, exclude_history=exclude_history)
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
        frame = pd.DataFrame(
            {
                "user_id": np.repeat(np.asarray(user_ids, dtype=object), k),
                "rank": np.tile(np.arange(1, k + 1), len(user_ids)),
                "item_id": np.asarray(self.item_ids, dtype=object)[top.ravel()],
                "score": top_scores.ravel(),
            }
        )
        # Excluded items score -inf: a user with fewer than k candidates gets fewer rows.
        return frame[np.isfinite(frame["score"])].reset_index(drop=True)

    def embeddings(self) -> EmbeddingExport | None:
        """User and item vectors for a dot-product index (BPR, LightGCN, NGCF exactly; NeuMF's GMF path), or None."""
        import torch

        model, name = self.model, self.config.model
        model.eval()
        with torch.no_grad():
            if name == "BPR":
                users, items, exact = model.user_embedding.weight, model.item_embedding.weight, True
            elif name in ("LightGCN", "NGCF"):
                # Their scores are dot products of the propagated embeddings, not of the raw tables.
                users, items = model.forward()
                exact = True
            elif name == "NeuMF" and model.mf_train:
                mf_size = model.user_mf_embedding.weight.shape[1]
                # GMF scores sum_k w_k p_k q_k: folding the output weights into the user side keeps that exact.
                weights = model.predict_layer.weight[0, :mf_size]
                users, items = model.user_mf_embedding.weight * weights, model.item_mf_embedding.weight
                exact = not model.mlp_train
            else:
                return None
        return EmbeddingExport(
            user_ids=list(self.user_ids),
            item_ids=list(self.item_ids),
            user_embeddings=users[1:].detach().cpu().numpy().copy(),
            item_embeddings=items[1:].detach().cpu().numpy().copy(),
            exact=exact,
        )

    def _internal_users(self, user_ids: Sequence[str]) -> np.ndarray:
        unknown = [user for user in user_ids if user not in self.user_index]
        if unknown:
            raise ValueError(f"{len(unknown)} user id(s) unknown to the model, e.g. {unknown[:5]}")
        return np.fromiter((self.user_index[user] for user in user_ids), dtype=np.int64, count=len(user_ids))

    def _sequences(self, seen: pd.DataFrame) -> dict[int, list[int]]:
        limit = self.config.max_seq_length
        return {int(user): items[-limit:] for user, items in seen.groupby("user", sort=False)["item"].agg(list).items()}

    def _score_batch(self, users: np.ndarray, sequences: dict[int, list[int]] | None) -> np.ndarray:
        import torch
        from recbole.data.interaction import Interaction

        fields: dict[str, torch.Tensor] = {self.model.USER_ID: torch.from_numpy(users)}
        if sequences is not None:
            width = self.config.max_seq_length
            item_lists = torch.zeros((len(users), width), dtype=torch.long)
            lengths = torch.ones(len(users), dtype=torch.long)  # no history: one padding item, not an empty list
            for row, user in enumerate(users.tolist()):
                items = sequences.get(user, [])
                if items:
                    item_lists[row, : len(items)] = torch.tensor(items)
                    lengths[row] = len(items)
            fields[self.model.ITEM_SEQ] = item_lists
            fields[self.model.ITEM_SEQ_LEN] = lengths
        interaction = Interaction(fields).to(self.model.device)
        try:
            scores = self.model.full_sort_predict(interaction)
        except NotImplementedError:
            scores = self._score_pairs(interaction, len(users))
        return scores.view(len(users), -1)[:, 1:].cpu().numpy()  # column 0 is the padding item

    def _score_pairs(self, interaction: Any, n_users: int) -> torch.Tensor:
        # What RecBole's Trainer does for models without full_sort_predict: score every (user, item) pair.
        import torch
        from recbole.data.interaction import Interaction

        n_items = len(self.item_ids) + 1
        pairs = interaction.repeat_interleave(n_items)
        pairs.update(Interaction({self.model.ITEM_ID: torch.arange(n_items, device=self.model.device).repeat(n_users)}))
        step = max(n_items, _PAIRS_PER_BATCH // n_items * n_items)
        return torch.cat([self.model.predict(pairs[start : start + step]) for start in range(0, len(pairs), step)])


def train_recbole_model(
    config: RecBoleModelConfig,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
) -> TrainedRecBoleModel:
    """Train `config.model` on `train`, early-stop on `valid`, report RecBole's metrics on `test`.

    The frames follow the canonical interactions schema (`INTERACTION_COLUMNS`); the caller filters event types.
    General models see each (user, item) pair once per split; sequential models see every event, oldest first,
    each valid/test event predicted from all earlier events of its user (train, then valid, then test).
    `test` may be empty for general models: the best validation epoch is still loaded, and `test_metrics` is empty.
    """
    patch_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    spec = config.spec
    frames = {name: _check_frame(name, frame) for name, frame in zip(SPLITS, (train, valid, test), strict=True)}
    if spec.sequential and test.empty:
        # RecBole cannot read an item-list column from a file without rows.
        raise ValueError(f"{config.model} is sequential and needs rows in the test split")
    user_universe = _universe(frames, "user_id")
    item_universe = _universe(frames, "item_id")
    coded = {name: _encode(frame, user_universe, item_universe, spec) for name, frame in frames.items()}

    with tempfile.TemporaryDirectory(prefix="recbole-") as workdir:
        root = Path(workdir)
        _write_atomic_files(root / DATASET_NAME, coded, spec, config.max_seq_length)
        settings = _data_settings(root, spec) | config.recbole_settings()
        recbole_config = _build_config(config.model, DATASET_NAME, settings)
        init_seed(recbole_config["seed"], recbole_config["reproducibility"])
        dataset = create_dataset(recbole_config)
        train_data, valid_data, test_data = data_preparation(recbole_config, dataset)
        init_seed(recbole_config["seed"], recbole_config["reproducibility"])
        model = get_model(recbole_config["model"])(recbole_config, train_data._dataset).to(recbole_config["device"])
        trainer = _make_trainer(recbole_config, model)

        curve: list[float] = []
        started = time.perf_counter()
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, verbose=False, saved=True, callback_fn=lambda _epoch, score: curve.append(score)
        )
        train_seconds = time.perf_counter() - started
        if coded["test"].empty:
            _load_best_epoch(trainer, model)
            test_result: Mapping[str, Any] = {}
        else:
            # Loads the best epoch's weights back into `model` before testing.
            test_result = trainer.evaluate(test_data, load_best_model=True)

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
    trained = TrainedRecBoleModel(
        config=config,
        model=model,
        user_ids=[user_universe[int(token)] for token in user_tokens],
        item_ids=[item_universe[int(token)] for token in item_tokens],
        histories=histories,
        test_metrics=_floats(test_result),
        best_valid_metrics=_floats(best_valid_result),
        best_valid_score=float(best_valid_score),
        epochs_trained=len(curve),
        train_seconds=train_seconds,
        valid_scores=[float(score) for score in curve],
    )
    logger.info(
        "%s trained %d epoch(s) in %.1fs; test %s", config.model, trained.epochs_trained, train_seconds, test_result
    )
    return trained


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
        config = _build_config(name, dataset, settings | dict(overrides or {}))
        init_seed(config["seed"], config["reproducibility"])
        data = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, data)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        recommender = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        # run_recbole also counts FLOPs here; that only logs, on a deep copy of the model, and draws no random numbers.
        trainer = _make_trainer(config, recommender)
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


# Data: checks, id coding, atomic files -----------------------------------------------------------------------------


def _check_frame(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    missing = [column for column in ("user_id", "item_id", "timestamp") if column not in frame.columns]
    if missing:
        raise ValueError(f"the {name} split lacks column(s) {missing}; expected {list(INTERACTION_COLUMNS)}")
    if frame.empty and name != "test":
        raise ValueError(f"the {name} split is empty: RecBole needs rows in train and valid")
    if frame[["user_id", "item_id", "timestamp"]].isna().any().any():
        raise ValueError(f"the {name} split has missing user_id, item_id or timestamp values")
    return frame


def _universe(frames: Mapping[str, pd.DataFrame], column: str) -> np.ndarray:
    return np.unique(np.concatenate([frame[column].astype(str).to_numpy() for frame in frames.values()]))


def _encode(frame: pd.DataFrame, users: np.ndarray, items: np.ndarray, spec: ModelSpec) -> pd.DataFrame:
    # Our ids may hold tabs or spaces, which RecBole's file format cannot; it sees their positions instead.
    timestamps = pd.to_datetime(frame["timestamp"], utc=True)
    coded = pd.DataFrame(
        {
            "user": np.searchsorted(users, frame["user_id"].astype(str).to_numpy()).astype(str),
            "item": np.searchsorted(items, frame["item_id"].astype(str).to_numpy()).astype(str),
            "timestamp": (timestamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1),
        }
    )
    coded = coded.sort_values(["user", "timestamp"], kind="stable")
    if not spec.sequential:
        # Implicit feedback: a pair is one positive however many events it had (the first one is kept).
        coded = coded.drop_duplicates(["user", "item"], keep="first")
    return coded.reset_index(drop=True)


def _write_atomic_files(folder: Path, coded: Mapping[str, pd.DataFrame], spec: ModelSpec, max_length: int) -> None:
    folder.mkdir(parents=True)
    if spec.sequential:
        rows = _sequence_rows(coded, max_length)
        header = f"{USER_FIELD}:token\t{ITEM_FIELD}:token\t{TIME_FIELD}:float\t{ITEM_LIST_FIELD}:token_seq\n"
    else:
        rows = dict(coded)
        header = f"{USER_FIELD}:token\t{ITEM_FIELD}:token\t{TIME_FIELD}:float\n"
    for name, frame in rows.items():
        if frame.empty and not (name == "test" and coded[name].empty):
            raise ValueError(f"the {name} split has no rows RecBole can use (sequential: no event with history)")
        path = folder / f"{DATASET_NAME}.{name}.inter"
        with path.open("w", encoding="utf-8") as handle:
            handle.write(header)
            frame.to_csv(handle, sep="\t", header=False, index=False, float_format="%.6f")


def _sequence_rows(coded: Mapping[str, pd.DataFrame], max_length: int) -> dict[str, pd.DataFrame]:
    """RecBole's pre-augmented sequential format: one row per event with the user's earlier items as a list.

    RecBole does this augmentation itself only when it splits the data; with benchmark files it must be given.
    """
    earlier: dict[str, list[str]] = defaultdict(list)
    rows: dict[str, pd.DataFrame] = {}
    for name in SPLITS:
        records = []
        for user, item, timestamp in coded[name][["user", "item", "timestamp"]].itertuples(index=False):
            history = earlier[user]
            if history:  # an event with no earlier item has nothing to predict it from
                records.append((user, item, timestamp, " ".join(history[-max_length:])))
            history.append(item)
        rows[name] = pd.DataFrame(records, columns=["user", "item", "timestamp", "items"])
    return rows


# RecBole configuration, trainer ------------------------------------------------------------------------------------


def _data_settings(root: Path, spec: ModelSpec) -> dict[str, Any]:
    columns = [USER_FIELD, ITEM_FIELD, TIME_FIELD] + ([ITEM_LIST_FIELD] if spec.sequential else [])
    settings: dict[str, Any] = {
        "data_path": str(root),
        "benchmark_filename": list(SPLITS),
        "checkpoint_dir": str(root / "checkpoints"),
        "USER_ID_FIELD": USER_FIELD,
        "ITEM_ID_FIELD": ITEM_FIELD,
        "TIME_FIELD": TIME_FIELD,
        "load_col": {"inter": columns},
        "normalize_all": False,
        "use_gpu": False,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        # With benchmark files RecBole ignores the split and order; the mode is what matters: full ranking.
        "eval_args": {"group_by": "user", "order": "TO", "mode": "full"},
    }
    if spec.sequential:
        settings |= {
            "ITEM_LIST_LENGTH_FIELD": ITEM_LIST_LENGTH_FIELD,
            "LIST_SUFFIX": "_list",
            # Without the alias RecBole numbers the tokens of the history lists separately from item_id.
            "alias_of_item_id": [ITEM_LIST_FIELD],
            "repeatable": True,
        }
    return settings


def _build_config(model: str, dataset: str, settings: Mapping[str, Any]) -> Any:
    """RecBole's Config from `settings`, passed as a YAML file and never read from the command line.

    RecBole `eval`s every string of a `config_dict` (so a parameter could run code) and reads any `--key=value`
    argument of the current process (pytest's, Dagster's) into the config; a YAML file avoids both.
    """
    config_class = _hermetic_config_class()
    with tempfile.TemporaryDirectory(prefix="recbole-config-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(dict(settings), sort_keys=False), encoding="utf-8")
        return config_class(model=model, dataset=dataset, config_file_list=[str(path)])


@functools.cache
def _hermetic_config_class() -> type:
    patch_recbole()
    from recbole.config import Config

    class _HermeticConfig(Config):
        """RecBole's Config, minus the command-line arguments of whatever process runs it."""

        def _load_cmd_line(self) -> dict[str, Any]:
            return {}

    # Checkpoints pickle the config, so the class must be reachable by name in this module.
    _HermeticConfig.__module__, _HermeticConfig.__qualname__ = __name__, "_HermeticConfig"
    return _HermeticConfig


def __getattr__(name: str) -> Any:
    # Lets pickle find `_HermeticConfig` without importing RecBole when this module is imported.
    if name == "_HermeticConfig":
        return _hermetic_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _NoTensorBoard:
    """Accepts and drops every TensorBoard call the Trainer makes."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _make_trainer(config: Any, model: Any) -> Any:
    from recbole.trainer import trainer as trainer_module
    from recbole.utils import get_trainer

    # The Trainer opens a TensorBoard writer under ./log_tensorboard of the working directory; nothing reads it.
    with mock.patch.object(trainer_module, "get_tensorboard", lambda _logger: _NoTensorBoard()):
        return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


def _load_best_epoch(trainer: Any, model: Any) -> None:
    """What `Trainer.evaluate(load_best_model=True)` does first, which it skips when there is nothing to test."""
    import torch

    # The checkpoint is this run's own, in its temporary folder; it pickles RecBole's Config next to the weights.
    checkpoint = torch.load(trainer.saved_model_file, map_location=trainer.device, weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))


def _floats(result: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in result.items()}
