"""Experiment tracking and the model registry: training runs, metrics and serving artifacts in MLflow.

One MLflow run per trained model holds its parameters, the dataset fingerprint and every offline
metric (one MLflow metric per row of the evaluation table, e.g. `ndcg_at_10.temporal.all`), plus
files such as the evaluation report. `register_artifact` logs the numpy-only serving artifact as a
pyfunc model under that run (portable: `lib/pyfunc.py`), registers it and points an alias at it
(`champion`, `challenger`); `lib/champion.py` follows the `champion` alias into the pointer file the API
hot-reloads from.

Where MLflow keeps its data is a `MlflowStore` (`Settings.mlflow_store()`): `RECSYS_MLFLOW_TRACKING_URI`
when set (a server), otherwise a SQLite store and an artifact folder under the data folder, so nothing
ever lands in the working directory. No Dagster here: `recsys_assets.defs.resources` wraps
`MlflowTracking` as the pipeline's `mlflow` resource.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from pydantic import BaseModel, ConfigDict

from recsys_assets.contract import registry_alias
from recsys_assets.contract.artifact import load_artifact
from recsys_assets.contract.settings import MlflowStore
from recsys_assets.lib.pyfunc import (
    INPUT_SCHEMA,
    OUTPUT_SCHEMA,
    PYFUNC_CODE,
    SERVING_KEY,
    ServingPyfunc,
    pip_requirements,
    stage_code,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)

# Run and model-version tags written here (and read back by the console).
TAG_MODEL = "recsys.model"
TAG_FINGERPRINT = "recsys.dataset_fingerprint"
TAG_MODEL_VERSION = registry_alias.TAG_MODEL_VERSION
TAG_SHA256 = "recsys.artifact_sha256"
PROTOCOL_TAG_PREFIX = "protocol."

# Name of the pyfunc model inside its run (the serving folder inside it is `pyfunc.SERVING_KEY`).
PYFUNC_NAME = "serving_model"

# MLflow's limit on a parameter value (longer values are rejected, not truncated).
_MAX_PARAM_VALUE = 6000
# Portable metric/param names: MLflow also allows spaces, slashes and (off Windows) colons, but
# slashes become artifact paths and spaces make names awkward to query, so we keep to these.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")

# The fluent calls that log a model read the global tracking URI and active-run stack, so they are
# serialised and the previous global state is put back afterwards.
_GLOBAL_LOCK = threading.RLock()
_NOT_FOUND = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}


# ---------------------------------------------------------------------------------------------
# Metric and parameter names
# ---------------------------------------------------------------------------------------------


def metric_key(metric: str, k: float | int | None, protocol: str, slice_: str) -> str:
    """MLflow name of one evaluation row: `<metric>_at_<k>.<protocol>.<slice>`, sanitized.

    `k` is None or NaN for metrics without a cutoff. `@` in a name becomes `_at_` (RecBole style
    `ndcg@10`), anything else outside `[A-Za-z0-9_.-]` becomes `_`.
    """
    name = str(metric)
    if k is not None and not (isinstance(k, float) and math.isnan(k)):
        name = f"{name}_at_{int(k)}"
    return ".".join(sanitize_name(part) for part in (name, str(protocol), str(slice_)))


def sanitize_name(name: str) -> str:
    """A name MLflow accepts as a metric or parameter key on every platform."""
    cleaned = _UNSAFE.sub("_", str(name).replace("@", "_at_")).strip("_")
    return cleaned or "_"


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_PARAM_VALUE else text[: _MAX_PARAM_VALUE - 3] + "..."


def _metrics_from_table(model_name: str, metrics: pd.DataFrame) -> dict[str, float]:
    required = {"metric", "k", "protocol", "slice", "value"}
    missing = required - set(metrics.columns)
    if missing:
        raise ValueError(f"metrics table lacks columns {sorted(missing)}; has {list(metrics.columns)}")
    table = metrics
    if "model" in table.columns:
        models = sorted(table["model"].astype(str).unique())
        if model_name in models:
            table = table[table["model"].astype(str) == model_name]
        elif len(models) > 1:
            raise ValueError(f"metrics table holds models {models} but not {model_name!r}")
    out: dict[str, float] = {}
    for row in table.itertuples(index=False):
        value = float(row.value)
        # an empty slice evaluates to NaN: nothing was measured, so nothing is logged
        if math.isnan(value):
            continue
        key = metric_key(row.metric, row.k, row.protocol, row.slice)
        setting = getattr(row, "setting", None)
        if isinstance(setting, str) and setting != "discovery":  # e.g. `ndcg_at_10.temporal.all.repeat`
            key = f"{key}.{sanitize_name(setting)}"
        if key in out:
            raise ValueError(f"metrics table has several rows for {key!r}")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Runs and the registry
# ---------------------------------------------------------------------------------------------


class MlflowTracking(BaseModel):
    """Training runs, the model registry and aliases in MLflow, for the pipeline and the console.

    Every call names its run explicitly through an `MlflowClient`; only model logging, which MLflow
    offers solely through its fluent API, touches global state, briefly and under a lock (see
    `activated`).
    """

    model_config = ConfigDict(frozen=True)

    tracking_uri: str
    artifact_location: str | None = None
    experiment: str = "recsys"
    registered_model: str = registry_alias.REGISTERED_MODEL

    @classmethod
    def for_store(cls, store: MlflowStore) -> MlflowTracking:
        """Runs and models in `store` (`Settings.mlflow_store()`), under the default experiment and model."""
        return cls(tracking_uri=store.tracking_uri, artifact_location=store.artifact_location)

    # -- plumbing ------------------------------------------------------------------------------

    def _prepare_local_store(self) -> None:
        # SQLite does not create the folder of its file, nor MLflow that of a file artifact root
        if self.tracking_uri.startswith("sqlite:///"):
            path = self.tracking_uri.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        if self.artifact_location and self.artifact_location.startswith("file:"):
            Path(url2pathname(urlparse(self.artifact_location).path)).mkdir(parents=True, exist_ok=True)

    def client(self) -> MlflowClient:
        """A client bound to this store (tracking and registry)."""
        self._prepare_local_store()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @contextmanager
    def activated(self) -> Iterator[None]:
        """Point MLflow's global (fluent) API at this store for the block, then restore it.

        Needed for `mlflow.pyfunc.log_model` and `mlflow.pyfunc.load_model("models:/...")`,
        which take no tracking URI.
        """
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        self._prepare_local_store()
        with _GLOBAL_LOCK:
            saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
            saved_tracking, saved_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
            try:
                mlflow.set_tracking_uri(self.tracking_uri)
                mlflow.set_registry_uri(self.tracking_uri)
                yield
            finally:
                mlflow.set_tracking_uri(saved_tracking)
                registry_utils._registry_uri = saved_registry
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

    def experiment_id(self, client: MlflowClient | None = None) -> str:
        """Id of the experiment, created (with `artifact_location`) on first use."""
        client = client or self.client()
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return client.create_experiment(self.experiment, artifact_location=self.artifact_location)
            except MlflowException as exc:
                # another process created it between our lookup and our create
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                exp = client.get_experiment_by_name(self.experiment)
                assert exp is not None
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    # -- runs ----------------------------------------------------------------------------------

    def log_training_run(
        self,
        model_name: str,
        params: dict,
        metrics: pd.DataFrame,
        dataset_fingerprint: str,
        protocol_tags: dict | None = None,
        artifacts: dict[str, str] | None = None,
        duration_s: float | None = None,
    ) -> str:
        """Record one trained model; returns the run id.

        Args:
            model_name: the model's name (run name and `recsys.model` tag).
            params: hyperparameters; non-string values are stored as JSON.
            metrics: long table `model, metric, k, protocol, slice, value` (`k` NaN for metrics
                without a cutoff; `model` optional): each non-NaN row becomes one metric named by
                `metric_key`. Rows of other models are ignored when the table holds several.
            dataset_fingerprint: tag `recsys.dataset_fingerprint` and param `dataset_fingerprint`.
            protocol_tags: evaluation protocol (split, cutoff, ...), as tags `protocol.<key>` (a key
                `protocol` stays `protocol`).
            artifacts: name -> local file or folder, logged under the run at `<name>/`.
            duration_s: training time, logged as metric `train_duration_s`.
        """
        values = _metrics_from_table(model_name, metrics)
        if duration_s is not None:
            values["train_duration_s"] = float(duration_s)
        tags = {TAG_MODEL: model_name, TAG_FINGERPRINT: dataset_fingerprint}
        for key, value in (protocol_tags or {}).items():
            key = str(key)
            # grouped under `protocol.` so they never collide with MLflow's own tags (`mlflow.*`)
            named = key == "protocol" or key.startswith(PROTOCOL_TAG_PREFIX)
            tags[key if named else PROTOCOL_TAG_PREFIX + key] = _param_value(value)
        param_values = {sanitize_name(k): _param_value(v) for k, v in params.items()}
        param_values["dataset_fingerprint"] = dataset_fingerprint

        client = self.client()
        run = client.create_run(self.experiment_id(client), tags=tags, run_name=model_name)
        run_id = run.info.run_id
        try:
            now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(key, value, now, 0) for key, value in sorted(values.items())],
                params=[Param(key, value) for key, value in sorted(param_values.items())],
            )
            for name, path in (artifacts or {}).items():
                if os.path.isdir(path):
                    client.log_artifacts(run_id, path, artifact_path=name)
                else:
                    client.log_artifact(run_id, path, artifact_path=name)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        return run_id

    # -- registry ------------------------------------------------------------------------------

    def register_artifact(self, artifact_dir: str, run_id: str, alias: str) -> str:
        """Log the serving artifact folder as a pyfunc model of `run_id`, register it, set `alias`.

        The artifact is loaded (schema and checksum checked) first, so a corrupt folder is never
        registered. Returns the new model version.
        """
        if alias not in ALIASES:
            raise ValueError(f"alias {alias!r}: use one of {ALIASES}")
        art = load_artifact(artifact_dir)
        client = self.client()
        example = pd.DataFrame({"user_id": [str(art.user_ids[0])], "k": [min(10, len(art.item_ids))]})
        # MLflow only warns when the model fails on its input example; a model that cannot predict
        # must not be registered, so try it here first
        probe = ServingPyfunc()
        probe.load_context(mlflow.pyfunc.PythonModelContext({SERVING_KEY: artifact_dir}, None))
        probe.predict(None, example)
        # resuming the (finished) training run attaches the model to it; ending it again leaves it FINISHED
        with tempfile.TemporaryDirectory() as tmp, self.activated(), mlflow.start_run(run_id=run_id):
            # models-from-code rather than a pickled instance: the model holds this small script,
            # which imports `ServingPyfunc` by name when the model is loaded
            code = Path(tmp, "recsys_pyfunc.py")
            code.write_text(PYFUNC_CODE)
            info = mlflow.pyfunc.log_model(
                name=PYFUNC_NAME,
                python_model=str(code),
                artifacts={SERVING_KEY: str(Path(artifact_dir).resolve())},
                signature=ModelSignature(inputs=INPUT_SCHEMA, outputs=OUTPUT_SCHEMA),
                # MLflow predicts on the example once the model is saved, so a broken model warns here
                input_example=example,
                pip_requirements=pip_requirements(),
                # the modules `PYFUNC_CODE` imports travel with the model: it loads without this project
                code_paths=[stage_code(Path(tmp, "code"))],
                registered_model_name=self.registered_model,
                metadata={"recsys_model": art.model_name, "artifact_sha256": art.checksum},
            )
        version = str(info.registered_model_version)
        for key, value in {
            TAG_MODEL: art.model_name,
            TAG_MODEL_VERSION: art.model_version,
            TAG_FINGERPRINT: art.dataset_fingerprint,
            TAG_SHA256: art.checksum,
        }.items():
            client.set_model_version_tag(self.registered_model, version, key, value)
        client.set_registered_model_alias(self.registered_model, alias, version)
        return version

    def alias_version(self, alias: str) -> dict | None:
        """The version an alias points at (version, run_id, source, created_at, tags, aliases), or None."""
        try:
            mv = self.client().get_model_version_by_alias(self.registered_model, alias)
        except MlflowException as exc:
            # no registered model: RESOURCE_DOES_NOT_EXIST; no such alias: INVALID_PARAMETER_VALUE
            if exc.error_code in _NOT_FOUND:
                return None
            raise
        return _version_dict(mv)

    def version_info(self, version: str) -> dict | None:
        """One registered version (as `alias_version`), or None when it does not exist."""
        try:
            mv = self.client().get_model_version(self.registered_model, str(version))
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND:
                return None
            raise
        return _version_dict(mv)

    def set_alias(self, alias: str, version: str) -> None:
        """Point `alias` at `version` (what the MLflow UI's alias editor does)."""
        self.client().set_registered_model_alias(self.registered_model, alias, str(version))

    def set_version_tag(self, version: str, key: str, value: str) -> None:
        self.client().set_model_version_tag(self.registered_model, str(version), key, value)

    def download_version(self, version: str, dst_dir: str) -> str:
        """Download the serving artifact of `version` into `dst_dir`; returns the folder to `load_artifact`."""
        # the version's own artifact location, resolved with our client: `models:/` URIs would be
        # resolved through MLflow's global registry URI instead
        location = self.client().get_model_version_download_uri(self.registered_model, str(version))
        os.makedirs(dst_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            # the serving folder keeps its original name inside the model; MLmodel says where it is
            mlmodel = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/MLmodel", dst_path=tmp, tracking_uri=self.tracking_uri
            )
            subpath = mlflow.models.Model.load(mlmodel).flavors["python_function"]["artifacts"][SERVING_KEY]["path"]
        return mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/{subpath}", dst_path=dst_dir, tracking_uri=self.tracking_uri
        )

    def download_artifact(self, alias: str, dst_dir: str) -> str:
        """Download the serving artifact of `alias` into `dst_dir`; returns the folder to `load_artifact`."""
        info = self.alias_version(alias)
        if info is None:
            raise LookupError(f"registered model {self.registered_model!r} has no alias {alias!r}")
        return self.download_version(info["version"], dst_dir)

    def champion_history(self) -> pd.DataFrame:
        """Every registered version, oldest first: version, aliases, run, tags and the run's metrics.

        Columns: `version` (int), `aliases` (comma-separated), `created_at` (UTC), `run_id`,
        `model`, `model_version`, `dataset_fingerprint`, `sha256`, then one column per run metric.
        """
        base = ["version", "aliases", "created_at", "run_id", "model", "model_version", "dataset_fingerprint", "sha256"]
        client = self.client()
        versions = []
        token = None
        while True:
            try:
                page = client.search_model_versions(f"name = '{self.registered_model}'", page_token=token)
            except MlflowException as exc:
                if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    break
                raise
            versions.extend(page)
            token = page.token
            if not token:
                break
        # search results do not carry aliases (SQLite store); the registered model has them all
        aliases: dict[str, list[str]] = {}
        if versions:
            for alias, version in client.get_registered_model(self.registered_model).aliases.items():
                aliases.setdefault(str(version), []).append(alias)
        rows = []
        for mv in versions:
            row: dict[str, Any] = {
                "version": int(mv.version),
                "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                "created_at": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
                "run_id": mv.run_id,
                "model": mv.tags.get(TAG_MODEL),
                "model_version": mv.tags.get(TAG_MODEL_VERSION),
                "dataset_fingerprint": mv.tags.get(TAG_FINGERPRINT),
                "sha256": mv.tags.get(TAG_SHA256),
            }
            if mv.run_id:
                # a deleted run leaves the version listed without metrics
                with suppress(MlflowException):
                    row.update(client.get_run(mv.run_id).data.metrics)
            rows.append(row)
        if not rows:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in base})
        frame = pd.DataFrame(rows)
        metric_cols = sorted(c for c in frame.columns if c not in base)
        return frame[base + metric_cols].sort_values("version").reset_index(drop=True)


def _version_dict(mv: Any) -> dict:
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "model_id": getattr(mv, "model_id", None),
        "created_at": dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=dt.UTC),
        "tags": dict(mv.tags),
        "aliases": list(mv.aliases),
    }
