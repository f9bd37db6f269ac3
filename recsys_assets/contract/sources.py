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

# How a log orders its events: real timestamps, a per-user sequence, or not at all.
TimeMode = Literal["timestamp", "sequence", "none"]
TIME_MODES: tuple[str, ...] = ("timestamp", "sequence", "none")


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


class LogFiles(StrictModel):
    """One source of the event log: CSV/Parquet files or globs of one shape, with its own mapping.

    Required columns: user_id, item_id, event_type, timestamp (a column of the file, or a constant in
    `defaults`; no timestamp with `time: "none"` or a `sequence_column`). Optional: value, event_id,
    recommendation_id, and a category column that becomes item metadata when no catalog is given.
    """

    where: ClassVar[str] = "a source of RECSYS_EVENT_LOG (`sources`)"

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
    # "none": the log has no time at all (only the random protocol runs)
    time: Literal["timestamp", "none"] = "timestamp"
    # a column giving each event's position in its user's sequence (e.g. a basket log's order_number):
    # order within a user is kept, and the temporal protocol becomes a per-user "last events" split
    sequence_column: str | None = None

    @property
    def time_mode(self) -> TimeMode:
        """`timestamp` (real times), `sequence` (a per-user order) or `none` (no time at all)."""
        return "sequence" if self.sequence_column else "none" if self.time == "none" else "timestamp"

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
                f"known: {list(EVENT_COLUMNS)}; a category column is `category_column`, an order column "
                "`sequence_column`"
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
    def _consistent_mapping(self) -> LogFiles:
        both = sorted(set(self.columns) & set(self.defaults))
        if both:
            raise ValueError(f"{both} given both in `columns` and in `defaults`: keep one")
        if self.defaults.get("event_type", "rating") not in CANONICAL_EVENT_TYPES and not self.event_types:
            raise ValueError(
                f"defaults event_type {self.defaults['event_type']!r} is not an event type; "
                f"known: {list(CANONICAL_EVENT_TYPES)}"
            )
        if self.time == "none" and ("timestamp" in self.columns or "timestamp" in self.defaults):
            raise ValueError(
                '`time: "none"` says the log has no time, but `columns`/`defaults` give a timestamp: drop one'
            )
        if self.time == "none" and self.sequence_column:
            raise ValueError(
                '`time: "none"` and `sequence_column` both given: a log with a per-user order only needs '
                "`sequence_column`; drop `time`"
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


# The keys of one source, which with `sources` go inside each source rather than at the top.
PER_SOURCE_KEYS: tuple[str, ...] = tuple(k for k in LogFiles.model_fields if k != "paths")


class EventLogSource(LogFiles):
    """A generic event log: one source (`paths` and its mapping at the top level) or several
    (`sources: [...]`, each with its own paths, format, delimiter, columns, event types and defaults),
    all ingested into the one `interactions` table; optional item catalog and user table."""

    where: ClassVar[str] = "RECSYS_EVENT_LOG"

    paths: list[str] = Field(default_factory=list)
    sources: list[LogFiles] = Field(default_factory=list)
    items: TableSource | None = None
    users: TableSource | None = None

    @model_validator(mode="after")
    def _one_way_to_give_files(self) -> EventLogSource:
        if self.paths and self.sources:
            raise ValueError(
                "RECSYS_EVENT_LOG gives both `paths` and `sources`: put every file's `paths` inside its source"
            )
        if not self.paths and not self.sources:
            raise ValueError(
                'RECSYS_EVENT_LOG has no files: give `paths` (one source) or `sources: [{"paths": [...]}, ...]`'
            )
        if self.sources:
            # a key left at its default is no mistake (a dumped configuration has every key)
            top = sorted(
                k
                for k in self.model_fields_set
                if k in PER_SOURCE_KEYS
                and getattr(self, k) != LogFiles.model_fields[k].get_default(call_default_factory=True)
            )
            if top:
                raise ValueError(
                    f"with `sources`, {top} go inside each source (each has its own), not at the top level"
                )
            modes = sorted({s.time_mode for s in self.sources})
            if len(modes) > 1:
                raise ValueError(
                    f"the sources disagree on time ({modes}): every source needs timestamps, or every one a "
                    '`sequence_column`, or every one `time: "none"`'
                )
        return self

    def files(self) -> list[LogFiles]:
        """Every source of the log (the top level itself when there is no `sources`)."""
        if self.sources:
            return list(self.sources)
        return [LogFiles(**self.model_dump(include={"paths", *PER_SOURCE_KEYS}))]

    @property
    def time_mode(self) -> TimeMode:
        """The log's time mode (every source has the same one)."""
        return self.sources[0].time_mode if self.sources else super().time_mode

    def all_paths(self) -> list[str]:
        """Every path or glob of every source."""
        return [p for s in self.files() for p in s.paths]
