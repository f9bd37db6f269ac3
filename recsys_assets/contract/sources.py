"""Where the events come from: the generic event log (`RECSYS_EVENT_LOG`) and its side tables.

Every model here is strict: a key it does not know is an error naming the key, the closest known
one and every known key, instead of a setting silently ignored.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recsys_assets.contract.events import CANONICAL_EVENT_TYPES, EVENT_COLUMNS

# Canonical columns a constant may stand for (`defaults`): every one but the ids.
DEFAULTABLE_COLUMNS: tuple[str, ...] = tuple(c for c in EVENT_COLUMNS if c not in ("user_id", "item_id", "event_id"))
# Field separators the CSV reader recognizes when `delimiter` is not given.
SNIFFED_DELIMITERS: tuple[str, ...] = (",", "\t", ";", "|")


def _with_hint(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, 1)
    return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)


class StrictModel(BaseModel):
    """A configuration block that refuses keys it does not know, naming them and the known ones."""

    model_config = ConfigDict(extra="forbid")
    # how the block is called in the documentation and the error messages
    where: ClassVar[str] = "the configuration"

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = sorted(cls.model_fields)
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                hints = [_with_hint(key, known) for key in unknown]
                raise ValueError(f"unknown key {', '.join(hints)} in {cls.where}; known keys: {known}")
        return data


class TableSource(StrictModel):
    """An optional side table (item catalog or user table) in CSV or Parquet."""

    where: ClassVar[str] = "a side table (RECSYS_EVENT_LOG `items` or `users`)"

    path: str
    format: Literal["auto", "csv", "parquet"] = "auto"
    # field separator of a CSV file; None: recognized from the first line (`,`, tab, `;` or `|`)
    delimiter: str | None = None
    header: bool = True
    names: list[str] | None = None
    # canonical column -> column in the file, for the columns whose names differ
    columns: dict[str, str] = Field(default_factory=dict)
    # separator of multi-valued columns (categories) inside one cell
    list_separator: str = "|"


class EventLogSource(StrictModel):
    """A generic event log: one or many CSV/Parquet files or globs in the documented schema.

    Required columns: user_id, item_id, event_type, timestamp (a column of the file, or a constant in
    `defaults`). Optional: value, event_id, recommendation_id, and a category column that becomes item
    metadata when no catalog is given.
    """

    where: ClassVar[str] = "RECSYS_EVENT_LOG"

    paths: list[str]
    format: Literal["auto", "csv", "parquet"] = "auto"
    # field separator of a CSV file; None: recognized from the first line (`,`, tab, `;` or `|`)
    delimiter: str | None = None
    header: bool = True
    # column names of a file without a header, in order
    names: list[str] | None = None
    # canonical column -> column in the file, for the columns whose names differ; one column of the
    # file may feed several canonical ones (e.g. `value` and `event_type`, with `event_types`)
    columns: dict[str, str] = Field(default_factory=dict)
    # canonical column -> constant, for a column the file does not have (e.g. {"event_type": "rating"}
    # for a ratings file); it also fills the column's blank cells
    defaults: dict[str, str] = Field(default_factory=dict)
    # event-type value in the file -> canonical event type
    event_types: dict[str, str] = Field(default_factory=dict)
    timestamp_unit: Literal["auto", "s", "ms", "us", "iso"] = "auto"
    # a column of the log holding the item's category (e.g. Taobao's category_id)
    category_column: str | None = None
    items: TableSource | None = None
    users: TableSource | None = None

    @field_validator("event_types")
    @classmethod
    def _known_targets(cls, mapping: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(mapping.values()) - set(CANONICAL_EVENT_TYPES))
        if unknown:
            raise ValueError(f"event_types maps to unknown event types {unknown}; known: {list(CANONICAL_EVENT_TYPES)}")
        return mapping

    @field_validator("columns")
    @classmethod
    def _canonical_columns(cls, mapping: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(mapping) - set(EVENT_COLUMNS))
        if unknown:
            raise ValueError(
                f"columns maps unknown canonical columns {unknown} (keys are canonical names, values the file's); "
                f"known: {list(EVENT_COLUMNS)}; a category column is `category_column`"
            )
        return mapping

    @field_validator("defaults", mode="before")
    @classmethod
    def _defaultable(cls, mapping: Any) -> Any:
        if isinstance(mapping, dict):
            bad = sorted(set(mapping) - set(DEFAULTABLE_COLUMNS))
            if bad:
                raise ValueError(f"defaults cannot set {bad}; a constant may stand for {list(DEFAULTABLE_COLUMNS)}")
            return {k: str(v) for k, v in mapping.items()}
        return mapping

    @model_validator(mode="after")
    def _consistent_mapping(self) -> EventLogSource:
        both = sorted(set(self.columns) & set(self.defaults))
        if both:
            raise ValueError(f"{both} given both in `columns` and in `defaults`: keep one")
        if self.defaults.get("event_type", "rating") not in CANONICAL_EVENT_TYPES and not self.event_types:
            raise ValueError(
                f"defaults event_type {self.defaults['event_type']!r} is not an event type; "
                f"known: {list(CANONICAL_EVENT_TYPES)}"
            )
        type_column = self.columns.get("event_type")
        shared = sorted(c for c, f in self.columns.items() if f == type_column and c != "event_type")
        if type_column is not None and shared and not self.event_types:
            raise ValueError(
                f"columns maps both 'event_type' and {shared} to the file's column {type_column!r}: every event "
                f"type would be a value of {type_column!r}. For a file whose rows are all of one type, drop "
                f'\'event_type\' from `columns` and set `defaults: {{"event_type": "rating"}}`; or map each '
                f"value of {type_column!r} to an event type in `event_types`"
            )
        return self
