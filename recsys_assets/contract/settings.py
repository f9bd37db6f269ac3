"""Typed project settings: one object, read from `RECSYS_*` variables by `get_settings()` and passed in.

Nothing in the project reads the environment at import time; the pipeline, the API and the console
each call `get_settings()` once at start-up and hand the object down.
"""

from __future__ import annotations

import datetime as dt
import os
import typing
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, PositiveFloat, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys_assets.contract.canary import CanaryConfig
from recsys_assets.contract.configs import (  # re-exported: callers import the small configs from here
    DEFAULT_EVENT_WEIGHTS,
    CleaningConfig,
    DriftConfig,
    MlflowStore,
    latest_valid_time,
)
from recsys_assets.contract.exploration import ExplorationConfig
from recsys_assets.contract.ingestion import IngestionConfig
from recsys_assets.contract.limits import TrainingLimits
from recsys_assets.contract.sources import EventLogSource, TableSource  # noqa: F401 (re-exported)

# `RECSYS_*` names that are not settings: the env file's own variable, and deployment parameters
# (compose and Azure) that never reach `Settings`
NOT_SETTINGS: frozenset[str] = frozenset(
    {
        "RECSYS_ENV_FILE",
        "RECSYS_POSTGRES_ADMIN_PASSWORD",
        "RECSYS_PG_PASSWORD",
        "RECSYS_REGISTRY_NAME",
        "RECSYS_REGISTRY_RESOURCE_GROUP",
        "RECSYS_IMAGE_TAG",
        "RECSYS_API_STABLE_REVISION",
        "RECSYS_API_REVISION_SUFFIX",
        "RECSYS_API_NEW_REVISION_WEIGHT",
        "RECSYS_ADMIN_IP_RANGES",
    }
)


class UnknownSettingWarning(UserWarning):
    """A `RECSYS_*` variable that is no setting (a typo would otherwise fall back to the default)."""


class Settings(BaseSettings):
    """Every setting of the project. Environment variables: `RECSYS_<NAME>`, nested with `__`."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    # --- storage ---
    storage_uri: str = Field(
        default="data",
        description="Where every table and report lives: a local folder (default `data`) "
        "or `abfs://container/prefix` for Azure Blob.",
    )
    azure_connection_string: str | None = Field(
        default=None, description="Azure Storage connection string (Blob), used for abfs:// URIs."
    )
    azure_account_url: str | None = Field(
        default=None,
        description="Azure Blob account URL (e.g. https://acct.blob.core.windows.net), "
        "used with DefaultAzureCredential when no connection string is set.",
    )

    # --- sources ---
    source: Literal["movielens", "event_log"] = Field(
        default="movielens",
        description="`movielens`: MovieLens-100k from the recbole wheel; `event_log`: the files in `event_log`.",
    )
    event_log: EventLogSource | None = Field(
        default=None, description="The generic event log source (JSON in `RECSYS_EVENT_LOG`)."
    )

    # --- cleaning ---
    event_weights: dict[str, PositiveFloat] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight (> 0) of each event type in the interaction matrix; ratings weigh their value.",
    )
    rating_min: float = Field(default=0.5, description="Smallest valid rating value.")
    rating_max: float = Field(default=5.0, description="Largest valid rating value.")
    time_min: dt.datetime = Field(
        default=dt.datetime(1990, 1, 1, tzinfo=dt.UTC),
        description="Events before this instant are rejected as out of range.",
    )
    time_max: dt.datetime | None = Field(
        default=None,
        description="Events after this instant are rejected as out of range (default: now + 1 day).",
    )
    kcore_user: int = Field(default=0, ge=0, description="Keep users with at least this many events (0: off).")
    kcore_item: int = Field(default=0, ge=0, description="Keep items with at least this many events (0: off).")
    reject_sample_size: int = Field(default=200, ge=0, description="Rejected rows kept per reason for inspection.")
    ingestion: IngestionConfig = Field(default_factory=IngestionConfig, description=IngestionConfig.__doc__)

    # --- dagster ---
    dagster_home: str = Field(
        default=".dagster_home", description="Dagster instance folder used by `make pipeline`/`make demo`."
    )
    dagster_port: int = Field(default=3000, description="Port of the Dagster UI in `make demo`.")
    mlflow_ui_port: int = Field(default=5000, description="Port of the MLflow UI in `make demo`.")

    # --- tracking ---
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server or store (e.g. http://127.0.0.1:5000); default: a SQLite store "
        "with its artifacts under `<storage>/mlflow` (under `<dagster_home>/mlflow` for Azure storage).",
    )
    registry_url: str | None = Field(None, description="MLflow server the API asks for the champion alias each poll.")

    # --- serving ---
    api_host: str = Field(default="127.0.0.1", description="Address the API listens on (`make serve`).")
    api_port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on (`make serve`).")
    api_workers: int = Field(
        default=1, ge=1, description="API worker processes (uvicorn `--workers`); they share live state through Redis."
    )
    api_keys: str = Field(
        default="",
        description="Keys accepted in `X-API-Key` by `POST /v1/events` and the admin endpoints, comma-separated; "
        "each `key` (every scope) or `key:scope` with scope `events` or `admin`. Empty: those endpoints refuse all.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis holding live user state, cached lists, idempotency keys and rate limits; empty: "
        "in-process only (right for one worker). While Redis is unreachable the API serves from in-process state.",
    )
    cache_ttl_seconds: int = Field(
        default=300,
        ge=0,
        description="Lifetime of a cached recommendation list (0: no cache); a user's event "
        "invalidates that user's lists at once.",
    )
    rate_limit_per_minute: int = Field(
        default=1200,
        ge=0,
        description="Requests per client and minute (0: no limit), counted in Redis across workers; a client "
        "is its API key when it sends a valid one, else its address; 429 with `Retry-After` beyond.",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Proxies whose `X-Forwarded-For`/`X-Forwarded-Proto` the API believes (comma-separated "
        "addresses or networks, `*` for any); empty: none, the client address is the connection's peer.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json`: log lines as JSON objects with the `request_id` (API: `X-Request-ID`)."
    )
    cors_allow_origins: str = Field(
        default="", description="Origins (comma-separated, or `*`) whose pages may call the API; empty: CORS off."
    )
    cors_allow_credentials: bool = Field(default=False, description="CORS: allow credentials (never with `*`).")
    cors_max_age_seconds: int = Field(default=600, ge=0, description="CORS: how long a preflight may be cached.")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body accepted; 413 beyond.")
    max_json_depth: int = Field(
        default=8, ge=2, le=64, description="Deepest nesting of arrays and objects in a JSON body; 400 beyond."
    )
    ab_challenger_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of users (a stable hash of the user id) the challenger serves "
        "when its pointer sets no share of its own (a canary or holdout does: `contract/canary.py`).",
    )
    ab_challenger_path: str | None = Field(
        default=None,
        description="Challenger artifact folder under the storage root (e.g. `candidates/EASE`); default: the one "
        "named by `artifacts/CHALLENGER.json` when that pointer exists.",
    )
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)  # contract/exploration.py
    canary: CanaryConfig = Field(default_factory=CanaryConfig)  # contract/canary.py
    candidate_threshold_items: int = Field(
        default=20_000,
        ge=0,
        description="Catalogs with more items than this are served by the candidate path (ANN and neighbour "
        "candidates, then the exact blend on them); smaller ones score every item. 0: always candidates.",
    )
    model_poll_seconds: float = Field(
        default=5.0, gt=0, description="How often the API checks `artifacts/CHAMPION.json` for a new champion."
    )
    events_dir: str | None = Field(
        default=None,
        description="Local folder of the API's event-log segments (default `<storage>/events`; required when "
        "storage is Azure Blob, since segments are appended and fsync'd locally).",
    )
    events_segment_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="An event-log segment is closed past this size."
    )
    events_segment_max_seconds: int = Field(
        default=3600, ge=1, description="An event-log segment is closed after this many seconds."
    )
    idempotency_ttl_seconds: int = Field(
        default=7 * 86400, ge=60, description="How long an `event_id` is remembered to drop a resent event."
    )
    live_state_ttl_seconds: int = Field(
        default=7 * 86400,
        ge=60,
        description="How long a user's live events stay in Redis after their last one (the next training run "
        "folds them into the artifact).",
    )

    # --- evaluation at scale (`lib.evaluation.batched.EvaluationConfig`) ---
    eval_users: int = Field(
        default=10_000, ge=1, description="Users an evaluation scores: all up to this many, else a fixed sample."
    )
    eval_batch_memory_mb: int = Field(
        default=256, ge=1, description="Scores held at once while ranking (users x items x 4 bytes per batch)."
    )
    eval_recbole_collector_cells: int = Field(
        default=25_000_000,
        ge=0,
        description="Above this many validation users x items, RecBole models are validated by the batched evaluation.",
    )

    # --- how a run's steps execute (`defs/executors.py`) ---
    executor: Literal["in_process", "multiprocess", "k8s"] = Field(
        default="multiprocess",
        description="Launched runs' executor: `multiprocess` (steps in subprocesses, candidates trained side by side), "
        "`in_process` (one process, one step at a time) or `k8s` (each step its own pod; needs dagster-k8s).",
    )
    executor_max_concurrent: int = Field(
        default=1,
        ge=0,
        description="Steps at once (0: one per CPU core for multiprocess, no limit for k8s); a multiprocess "
        "training step gets cores / this OMP, MKL and torch threads. Default 1: `limits.max_memory_gb` holds "
        "per step, and two steps side by side on 2 cores were not faster (docs/benchmarks.md).",
    )

    # --- the feedback loop: live windows, drift, retraining ---
    drift_window_minutes: int = Field(
        default=60,
        ge=1,
        description="Length of a live-event window: each becomes a `live_events` partition and gets a drift report.",
    )
    drift_window_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description="A window is ingested this long after its end, so the API's buffered impressions are in.",
    )
    drift_sensor_seconds: int = Field(
        default=30, ge=5, description="How often the sensors look for new event segments and drift verdicts."
    )
    drift_reference_windows: int = Field(
        default=1, ge=1, description="How many earlier windows (with data) form a window's drift reference."
    )
    drift_min_rows: int = Field(
        default=200, ge=1, description="Fewest events in a window and in its reference for a drift verdict."
    )
    drift_threshold: float = Field(
        default=0.1,
        gt=0,
        description="Distance above which a feature has drifted (Wasserstein, normed, for numbers; "
        "Jensen-Shannon for categories).",
    )
    drift_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="A window has drifted when at least this share of its data features drifted.",
    )
    drift_features: list[str] = Field(
        default_factory=lambda: ["event_type", "rating", "user_history", "item_popularity", "new_user", "new_item"],
        description="The data features whose drift decides (`drift_share` of them); the others are reported only.",
    )
    min_ctr: float | None = Field(
        default=None, ge=0, le=1, description="Online CTR floor of a window; below it, retrain (None: off)."
    )
    min_ndcg: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Floor of the champion's NDCG@10 on a window's events; below it, retrain (None: off).",
    )
    retrain_models: list[str] = Field(
        default_factory=lambda: [
            *("Pop", "ItemKNN", "EASE", "BPR", "MultiVAE"),
            *("ALS", "ImplicitBPR", "ItemItemCosine", "ItemItemBM25"),
        ],
        description="Collaborative models a retrain compares (with the native ones): RecBole's, and implicit's, which "
        "add seconds on ml-100k and are the ones that fit a large catalog.",
    )
    retrain_protocols: list[str] = Field(
        default_factory=lambda: ["temporal"], description="Protocols a retrain evaluates on (`temporal` decides)."
    )
    retrain_budget: Literal["standard", "smoke"] = Field(
        default="standard", description="Training budget of a retrain (`smoke`: one epoch, for tests)."
    )
    limits: TrainingLimits = Field(
        default_factory=TrainingLimits, description="Memory, time and threads of each candidate (`RECSYS_LIMITS__*`)."
    )
    retrain_cron: str = Field(
        default="0 3 * * 1", description="The weekly retrain regardless of drift (cron, UTC; Monday 03:00)."
    )
    promotion_margin: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="A challenger is promoted when its NDCG@10 is at least (1 - margin) x the champion's.",
    )
    evaluation_target: Literal["discovery", "repeat", "blended"] = Field(
        default="discovery",
        description="The setting the champion is chosen on, and the API's `exclude_seen` default: `discovery` (seen "
        "items hidden, not positives; exclude_seen true), `repeat` (buy again: seen items allowed and counted; "
        "false) or `blended` (their mean; false). Data without repeats: discovery.",
    )

    # --- console ---
    api_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL of the recommendation API the console reads (`/metrics`, `/v1/users/...`).",
    )
    console_port: int = Field(default=8501, description="Port of the Streamlit console.")

    @field_validator("time_min", "time_max")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value

    @field_validator("drift_features")
    @classmethod
    def _known_features(cls, value: list[str]) -> list[str]:
        known = ("event_type", "rating", "user_history", "item_popularity", "new_user", "new_item")
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"drift_features names unknown features {unknown}; known: {list(known)}")
        return value

    @field_validator("storage_uri")
    @classmethod
    def _storage_uri(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme not in ("", "file", "abfs", "az") and not (len(scheme) == 1 and os.name == "nt"):
            raise ValueError(
                f"storage_uri {value!r}: unsupported scheme {scheme!r}; "
                "use a local folder, file://..., or abfs://container/prefix"
            )
        if scheme in ("abfs", "az") and not urlparse(value).netloc:
            raise ValueError(f"storage_uri {value!r}: abfs:// needs a container, e.g. abfs://recsys/data")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.source == "event_log" and self.event_log is None:
            raise ValueError("source is 'event_log' but RECSYS_EVENT_LOG is not set")
        if self.is_azure and not (self.azure_connection_string or self.azure_account_url):
            raise ValueError(
                "storage_uri is abfs:// but neither RECSYS_AZURE_CONNECTION_STRING nor RECSYS_AZURE_ACCOUNT_URL is set"
            )
        if self.rating_min >= self.rating_max:
            raise ValueError("rating_min must be below rating_max")
        if self.cors_allow_credentials and "*" in self.cors_origins():
            raise ValueError("RECSYS_CORS_ALLOW_CREDENTIALS with RECSYS_CORS_ALLOW_ORIGINS '*': name the origins")
        return self

    def cors_origins(self) -> list[str]:
        """The allowed CORS origins, parsed (empty: CORS off)."""
        return [o.strip().rstrip("/") for o in self.cors_allow_origins.split(",") if o.strip()]

    @property
    def is_azure(self) -> bool:
        return urlparse(self.storage_uri).scheme in ("abfs", "az")

    @property
    def time_upper(self) -> dt.datetime:
        return latest_valid_time(self.time_max)

    def cleaning(self) -> CleaningConfig:
        """The cleaning rules, for `recsys_assets.lib.ingest.cleaning.clean_events`."""
        return CleaningConfig(
            event_weights=self.event_weights,
            rating_min=self.rating_min,
            rating_max=self.rating_max,
            time_min=self.time_min,
            time_max=self.time_max,
            kcore_user=self.kcore_user,
            kcore_item=self.kcore_item,
        )

    def drift(self) -> DriftConfig:
        """The drift verdict's rules, for `recsys_assets.lib.drift.detect_drift`."""
        return DriftConfig(
            threshold=self.drift_threshold,
            share=self.drift_share,
            min_rows=self.drift_min_rows,
            features=self.drift_features,
            min_ctr=self.min_ctr,
            min_ndcg=self.min_ndcg,
            cleaning=self.cleaning(),
        )

    def mlflow_root(self) -> Path:
        """Local folder of the default MLflow store: `<local_root>/mlflow`, or `<dagster_home>/mlflow` on Azure
        (no local data folder, and Blob is no SQLite backend); `RECSYS_MLFLOW_TRACKING_URI` shares a server."""
        base = Path(self.dagster_home).resolve() if self.is_azure else self.local_root()
        return base / "mlflow"

    def mlflow_store(self) -> MlflowStore:
        """The tracking (and registry) URI and the artifact root of new experiments.

        `mlflow_tracking_uri` when set (its server decides where artifacts go); otherwise a SQLite file
        `<mlflow_root>/mlflow.db` with artifacts in `<mlflow_root>/artifacts`, never MLflow's own default
        (`sqlite:///mlflow.db`, artifacts in `./mlruns`) in the working folder.
        """
        if self.mlflow_tracking_uri:
            return MlflowStore(tracking_uri=self.mlflow_tracking_uri)
        root = self.mlflow_root()
        return MlflowStore(
            tracking_uri=f"sqlite:///{(root / 'mlflow.db').as_posix()}", artifact_location=(root / "artifacts").as_uri()
        )

    def events_path(self) -> Path:
        """The local folder of the API's event-log segments: `events_dir`, else `<storage>/events`."""
        if self.events_dir:
            return Path(self.events_dir)
        if self.is_azure:
            raise RuntimeError(
                "storage is Azure Blob: set RECSYS_EVENTS_DIR to a local folder for the API's event-log segments "
                "(they are appended and fsync'd locally; the pipeline copies each live window to Blob)"
            )
        return self.local_root() / "events"

    def events_api_key(self) -> str | None:
        """The first key of `api_keys` allowed to post events."""
        for entry in self.api_keys.split(","):
            key, _, scope = entry.strip().partition(":")
            if key and scope in ("", "events"):
                return key
        return None

    def local_root(self) -> Path:
        """The storage folder when storage is local (raises for Azure)."""
        if self.is_azure:
            raise ValueError("storage is Azure Blob; there is no local root")
        parsed = urlparse(self.storage_uri)
        return Path(parsed.path if parsed.scheme == "file" else self.storage_uri).resolve()


def _is_setting(parts: list[str], model: type[BaseModel]) -> bool:
    """Whether `RECSYS_A__B` (as ["a", "b"]) names a field of `model`, nested models unfolded."""
    info = model.model_fields.get(parts[0])
    if info is None:
        return False
    if len(parts) == 1:
        return True
    annotation = info.annotation
    args = (annotation,) if typing.get_origin(annotation) is dict else typing.get_args(annotation) or (annotation,)
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return _is_setting(parts[1:], arg)
        if typing.get_origin(arg) is dict:
            return True  # a key of a mapping (e.g. RECSYS_EVENT_WEIGHTS__VIEW)
    return False


def unknown_variables(names: Any) -> list[str]:
    """The `RECSYS_*` names among `names` that are no setting (nor a known deployment parameter)."""
    return sorted(
        name
        for name in names
        if name.upper().startswith("RECSYS_")
        and name.upper() not in NOT_SETTINGS
        and not _is_setting(name[len("RECSYS_") :].lower().split("__"), Settings)
    )


def get_settings(env_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from the environment (and an optional env file, or `RECSYS_ENV_FILE`).

    `RECSYS_*` variables (in the environment or the env file) that are no setting are named in an
    `UnknownSettingWarning`: a misspelt name would otherwise leave its setting at the default.
    """
    env_file = env_file or os.environ.get("RECSYS_ENV_FILE")
    names = set(os.environ)
    if env_file and Path(env_file).is_file():
        from dotenv import dotenv_values

        names |= {k for k in dotenv_values(env_file) if k}
    unknown = unknown_variables(names)
    if unknown:
        warnings.warn(
            f"ignored: {unknown} {'is' if len(unknown) == 1 else 'are'} no setting (see `Settings` or the README "
            "for the RECSYS_* names)",
            UnknownSettingWarning,
            stacklevel=2,
        )
    return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
