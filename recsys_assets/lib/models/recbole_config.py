"""Which RecBole models the adapter trains, the typed configuration of one, and RecBole's own `Config` and
`Trainer` built from it without side effects.

`RecBoleModelConfig` is a plain pydantic model (a Dagster config may wrap it); `build_config` turns settings into
RecBole's string-keyed `Config` through a YAML file, and `make_trainer` builds RecBole's trainer for a model without
its TensorBoard writer.
"""

from __future__ import annotations

import difflib
import functools
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recsys_assets.lib.models.recbole_compat import patch_recbole

__all__ = [
    "RESERVED_PARAMS",
    "SUPPORTED_MODELS",
    "ModelSpec",
    "RecBoleModelConfig",
    "build_config",
    "make_trainer",
    "resolve_model_name",
]


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


class RecBoleModelConfig(BaseModel):
    """How to train one RecBole model; defaults are RecBole's own (`properties/overall.yaml`)."""

    # Immutable, like the Dagster config it used to be; a misspelt keyword is an error, not silently dropped.
    model_config = ConfigDict(frozen=True, extra="forbid")

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
        # `Any`, checked here: a Dagster config wrapping this one cannot express `float | int | str` in its schema.
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


def build_config(model: str, dataset: str, settings: Mapping[str, Any]) -> Any:
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


def make_trainer(config: Any, model: Any) -> Any:
    """RecBole's trainer for `config`'s model type and model, as `get_trainer` picks it."""
    from recbole.trainer import trainer as trainer_module
    from recbole.utils import get_trainer

    # The Trainer opens a TensorBoard writer under ./log_tensorboard of the working directory; nothing reads it.
    with mock.patch.object(trainer_module, "get_tensorboard", lambda _logger: _NoTensorBoard()):
        return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
