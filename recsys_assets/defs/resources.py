"""Dagster resources: the settings, the storage root, the Parquet IO manager on top of it (and the one that
hands step results on), and MLflow.

Blob goes through fsspec/adlfs rather than dagster-azure's ADLS2 IO manager, which needs a
Data Lake (dfs) endpoint that Azurite and plain Blob accounts do not have.
"""

import pickle
from functools import cached_property
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
from pydantic import PrivateAttr

from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.lib.tracking import MlflowTracking

# Steps that read or write storage retry transient errors (a Blob timeout, a busy disk) with backoff;
# bad input raises `dg.Failure(allow_retries=False)` and fails at once.
STORAGE_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class StorageResource(dg.ConfigurableResource):
    """Where tables and reports live: a local folder or `abfs://container/prefix`."""

    uri: str
    azure_connection_string: str | None = None
    azure_account_url: str | None = None

    _storage: Storage | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> "StorageResource":
        return cls(
            uri=settings.storage_uri,
            azure_connection_string=settings.azure_connection_string,
            azure_account_url=settings.azure_account_url,
        )

    def get(self) -> Storage:
        if self._storage is None:
            self._storage = Storage.from_uri(self.uri, self.azure_connection_string, self.azure_account_url)
        return self._storage


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores each DataFrame asset as `<root>/<asset key>.parquet`, atomically.

    The new file replaces the old one only once it is complete, so a failed materialization leaves
    the last good table in place.
    """

    storage: StorageResource

    @cached_property
    def _store(self) -> Storage:
        return self.storage.get()

    def _key(self, context: dg.OutputContext | dg.InputContext) -> str:
        return "/".join(context.asset_key.path) + ".parquet"

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, (pd.DataFrame, pa.Table)):
            raise TypeError(f"ParquetIOManager stores DataFrames (or Arrow tables), got {type(obj).__name__}")
        path = self._store.write_table(obj, self._key(context))
        # an Arrow table (the daily ingestion's union of day partitions) was written from pandas: its
        # pandas metadata gives the same DataFrame back
        dtypes = obj.dtypes if isinstance(obj, pd.DataFrame) else obj.slice(0, 0).to_pandas().dtypes
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(self._store.uri(self._key(context))),
                "rows": dg.MetadataValue.int(len(obj)),
                "columns": dg.MetadataValue.json({c: str(t) for c, t in dtypes.items()}),
            }
        )
        context.log.debug(f"wrote {len(obj)} rows to {path}")

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return self._store.read_table(self._key(context))


STEP_RESULTS = "steps"


class StepResultsIOManager(dg.ConfigurableIOManager):
    """Hands a step's result (any picklable value) to the steps after it through storage, at
    `steps/<run id>/<step>/<output>.pkl`: the steps of one run may be separate processes or pods (the
    per-model candidates), so nothing is passed in memory. `model_candidates` removes its run's files
    once the combined table is stored."""

    storage: StorageResource

    @cached_property
    def _store(self) -> Storage:
        return self.storage.get()

    @staticmethod
    def _parts(identifier: Any) -> tuple[str, ...]:
        *head, name = (str(p) for p in identifier)
        return (STEP_RESULTS, *head, f"{name}.pkl")

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        self._store.write_bytes(
            pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), *self._parts(context.get_identifier())
        )

    def load_input(self, context: dg.InputContext) -> Any:
        upstream = context.upstream_output
        if upstream is None:
            raise dg.DagsterInvariantViolationError(f"{context.name}: step results are read from an upstream step")
        return pickle.loads(self._store.read_bytes(*self._parts(upstream.get_identifier())))


class MlflowResource(dg.ConfigurableResource):
    """Training runs, the model registry and aliases in MLflow: `MlflowTracking` as the `mlflow` resource.

    A small Pythonic resource rather than dagster-mlflow's `mlflow_tracking`: that one is an
    older-style `@resource` configured through run config (and marked beta); it opens one global
    MLflow run per Dagster run and sets the process-wide tracking URI, which composes neither with
    Pythonic resources nor with `Settings` passed in, and gives one run per job rather than per
    trained model.
    """

    tracking_uri: str
    artifact_location: str | None = None
    experiment: str = "recsys"
    registered_model: str = "recsys-recommender"

    @classmethod
    def from_settings(cls, settings: Settings) -> "MlflowResource":
        store = settings.mlflow_store()
        return cls(tracking_uri=store.tracking_uri, artifact_location=store.artifact_location)

    def tracker(self) -> MlflowTracking:
        """The plain tracking object this resource configures."""
        return MlflowTracking(
            tracking_uri=self.tracking_uri,
            artifact_location=self.artifact_location,
            experiment=self.experiment,
            registered_model=self.registered_model,
        )


def build_resources(settings: Settings) -> dict[str, Any]:
    """The resources of one configuration. `settings` is the whole configuration as a plain object:
    assets, checks and sensors that read a setting take `settings: dg.ResourceParam[Settings]`."""
    storage = StorageResource.from_settings(settings)
    return {
        "settings": settings,
        "storage": storage,
        "io_manager": ParquetIOManager(storage=storage),
        "step_results": StepResultsIOManager(storage=storage),
        "mlflow": MlflowResource.from_settings(settings),
    }
