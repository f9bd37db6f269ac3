"""Request and response bodies of the API, as msgspec structs (they are also its OpenAPI schema)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from recsys_assets.contract.events import CANONICAL_EVENT_TYPES

# Ids are free text as in the event log, but one line of printable characters: they go into CSV
# segments, Redis keys and log lines.
Id = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
# mypy reads no Literal unpacked from a tuple (it types EventType as Any); msgspec and the schema do
EventType = Literal[*CANONICAL_EVENT_TYPES]  # type: ignore[valid-type]
Arm = Literal["champion", "challenger"]
# history: evidence from the user's live events; similar: from their training history;
# popular: popularity decided
ReasonKind = Literal["history", "similar", "popular"]
MAX_BATCH = 1000


class EventIn(Struct, forbid_unknown_fields=True):
    """One interaction, in the event-log schema (`recsys_assets.contract.events`)."""

    user_id: Id | int
    item_id: Id | int
    event_type: EventType
    value: float | None = None
    # unix seconds or ISO 8601 (UTC unless it says otherwise); default: when the API receives it
    timestamp: dt.datetime | float | None = None
    event_id: Id | None = None
    recommendation_id: Id | None = None


EventBatch = Annotated[list[EventIn], Meta(min_length=1, max_length=MAX_BATCH)]
EventsIn = EventIn | EventBatch


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


class Recommendations(Struct):
    recommendation_id: str
    user_id: str
    model_version: str
    arm: Arm
    cold_start: bool
    items: list[RecommendedItem]


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
