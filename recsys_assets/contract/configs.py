"""The small configs that `Settings` hands to library code (`Settings.cleaning()`, `.drift()`,
`.mlflow_store()`): each holds only what its user needs, so library functions never take `Settings`."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "favorite": 3.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
}


def latest_valid_time(time_max: dt.datetime | None) -> dt.datetime:
    """The latest valid event time: `time_max`, else one day from now."""
    return time_max or (dt.datetime.now(dt.UTC) + dt.timedelta(days=1))


class CleaningConfig(BaseModel):
    """The rules that turn raw events into interactions (`Settings.cleaning()`; fields as in `Settings`)."""

    model_config = ConfigDict(frozen=True)

    event_weights: dict[str, float]
    rating_min: float
    rating_max: float
    time_min: dt.datetime
    time_max: dt.datetime | None
    kcore_user: int = Field(ge=0)
    kcore_item: int = Field(ge=0)

    @property
    def time_upper(self) -> dt.datetime:
        return latest_valid_time(self.time_max)


class DriftConfig(BaseModel):
    """The rules of a window's drift verdict (`Settings.drift()`; `Settings.drift_*`, `min_ctr`, `min_ndcg`),
    and the cleaning rules its windows are cleaned with."""

    model_config = ConfigDict(frozen=True)

    threshold: float = Field(gt=0)
    share: float = Field(gt=0, le=1)
    min_rows: int = Field(ge=1)
    features: list[str]
    min_ctr: float | None
    min_ndcg: float | None
    cleaning: CleaningConfig


class MlflowStore(BaseModel):
    """Where MLflow keeps runs and the model registry (`Settings.mlflow_store()`)."""

    model_config = ConfigDict(frozen=True)

    tracking_uri: str
    # artifact root of new experiments; None lets a tracking server decide
    artifact_location: str | None = None
