"""Request and response bodies of the API, as msgspec structs (they are also its OpenAPI schema)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from recsys_assets.contract.events import CANONICAL_EVENT_TYPES

# Ids (users, items, events, recommendations; in bodies and in paths alike): 1 to 256 of the
# characters an URL path segment holds unencoded, `A-Z a-z 0-9 _ . : ~ @ + = -`, the first a letter, a
# digit or `_`. So an id written into the event log is read back by the pipeline unchanged: no CSV
# cell starts a spreadsheet formula (`=`, `+`, `-`, `@`), none holds a separator, quote, space or
# line break, and none is a spelling its CSV reader takes for a missing value (`NA`, `NULL`, `NaN`,
# `nan`, `null`). The same id works in `/v1/users/{user_id}/...` without escaping.
ID_MAX_LENGTH = 256
ID_PATTERN = r"^(?!(?:NA|NULL|NaN|nan|null)$)[A-Za-z0-9_][A-Za-z0-9_.:~@+=-]*$"
# Python's `$` also matches before a final line break; this one does not (checked in code too)
ID_RE = re.compile(ID_PATTERN.replace("$)", r"\Z)").removesuffix("$") + r"\Z")
ID_RULE = (
    f"1 to {ID_MAX_LENGTH} characters from A-Z a-z 0-9 _ . : ~ @ + = -, starting with a letter, a digit or _ "
    "(not NA, NULL, NaN, nan or null)"
)
Id = Annotated[str, Meta(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description=ID_RULE)]
# a numeric id is stored as its decimal text. JSON Schema's "integer" includes 8482.0, so a float is
# decoded too and taken when it is whole (`service.normalise`); the schema shows "integer" only
NumericId = Annotated[int, Meta(ge=0, description="A numeric id, stored as its decimal text.")]
# mypy reads no Literal unpacked from a tuple (it types EventType as Any); msgspec and the schema do
EventType = Literal[*CANONICAL_EVENT_TYPES]  # type: ignore[valid-type]
Arm = Literal["champion", "challenger"]
# history: evidence from the user's live events; similar: from their training history;
# popular: popularity decided
ReasonKind = Literal["history", "similar", "popular"]
MAX_BATCH = 1000


def valid_id(text: str) -> bool:
    """The id rule above, exactly (the schema's pattern lets a final line break through in Python)."""
    return len(text) <= ID_MAX_LENGTH and ID_RE.match(text) is not None


class EventIn(Struct, forbid_unknown_fields=True):
    """One interaction, in the event-log schema (`recsys_assets.contract.events`)."""

    user_id: Id | NumericId | float
    item_id: Id | NumericId | float
    event_type: EventType
    value: float | None = None
    # unix seconds or ISO 8601 (UTC unless it says otherwise); default: when the API receives it
    timestamp: dt.datetime | float | None = None
    event_id: Id | None = None
    recommendation_id: Id | None = None


EventBatch = Annotated[list[EventIn], Meta(min_length=1, max_length=MAX_BATCH)]
EventsIn = EventIn | EventBatch


class ErrorDetail(Struct):
    key: str
    message: str
    source: str | None = None


class ErrorBody(Struct):
    """Every error answer: its status code, what went wrong, and for a 400 the fields at fault."""

    status_code: int
    detail: str
    extra: list[ErrorDetail] | dict[str, str] | None = None


class EventsAccepted(Struct):
    accepted: int
    duplicates: int
    duplicate_event_ids: list[str]


class RecommendedItem(Struct):
    item_id: str
    rank: int
    score: float
    title: str
    categories: list[str]
    reason: str
    reason_kind: ReasonKind
    evidence_item_id: str | None = None
    # the probability with which the serving policy shows this item at this rank (1 without exploration)
    propensity: float = 1.0


class Recommendations(Struct):
    recommendation_id: str
    user_id: str
    model_version: str
    arm: Arm
    cold_start: bool
    items: list[RecommendedItem]
    # `<arm>:<model version>:<exploration>` (`recsys_assets.contract.exploration.policy_id`)
    policy: str = ""


class SimilarItem(Struct):
    item_id: str
    rank: int
    score: float
    title: str
    categories: list[str]
    reason: str


class SimilarItems(Struct):
    item_id: str
    model_version: str
    source: Literal["item_item", "content", "embedding", "popularity"]
    items: list[SimilarItem]


class ArtifactInfo(Struct):
    model_name: str
    model_version: str
    path: str
    created_at: str
    loaded_at: str
    checksum: str
    n_users: int
    n_items: int
    components: dict[str, str]
    weights: dict[str, float]
    metrics: dict[str, float]


class RejectedArtifact(Struct):
    path: str
    error: str
    at: str


class ModelInfo(Struct):
    champion: ArtifactInfo | None
    challenger: ArtifactInfo | None
    challenger_share: float
    last_rejected: RejectedArtifact | None
    # `canary` or `holdout` when the pipeline's canary gate opened the split, `ab` for an operator's A/B test
    challenger_role: str | None = None


class Health(Struct):
    status: str


class Readiness(Struct):
    status: Literal["ready", "not ready"]
    model_version: str | None
    redis: Literal["up", "down", "disabled"]


class LiveEvent(Struct, array_like=True):
    """A user's event as kept in live state (Redis list entries, msgpack)."""

    item_id: str
    event_type: str
    value: float | None
    ts: float


LIVE_ENCODER = msgspec.msgpack.Encoder()
LIVE_DECODER = msgspec.msgpack.Decoder(LiveEvent)
CACHED_DECODER = msgspec.msgpack.Decoder(tuple[bool, list[RecommendedItem]])
