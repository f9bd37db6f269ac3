"""What the endpoints do, apart from HTTP: serve a list (with cache and impressions) and accept events."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import signal
import time
import uuid
from dataclasses import dataclass

import anyio

from recsys_assets.contract.settings import Settings
from serving import exploration
from serving.errors import EventLogUnavailableError, InvalidEventError
from serving.eventlog import IMPRESSION, EventLog, iso
from serving.live import LiveState
from serving.model import ModelHolder
from serving.recommend import build_history, recommend
from serving.schemas import (
    CACHED_DECODER,
    ID_RULE,
    LIVE_ENCODER,
    MAX_BATCH,
    EventIn,
    EventsAccepted,
    EventsIn,
    LiveEvent,
    Recommendations,
    valid_id,
)
from serving.telemetry import get_metrics

log = logging.getLogger(__name__)


async def serve_recommendations(
    holder: ModelHolder,
    live: LiveState,
    event_log: EventLog,
    settings: Settings,
    user_id: str,
    k: int,
    category: str | None,
    exclude_seen: bool | None,
) -> Recommendations:
    if exclude_seen is None:  # the list the champion was chosen for: repeats allowed unless it was discovery
        exclude_seen = settings.evaluation_target == "discovery"
    model, arm = holder.pick(user_id)
    category = category or None
    # an exploring list draws its last slot from deeper in the same ranking (cached like any list)
    ranked_k = exploration.depth(settings.exploration, arm, k)
    view = await live.fetch(user_id, model.version, ranked_k, category, exclude_seen)
    metrics = get_metrics()
    if view.cached is not None:
        cold, items = CACHED_DECODER.decode(view.cached)
        metrics.cache.labels("hit").inc()
    else:
        history = build_history(model, user_id, view.events, settings.event_weights)
        items = recommend(model, history, ranked_k, category, exclude_seen)
        cold = history.cold
        if view.cache_key is not None:
            metrics.cache.labels("miss").inc()
            await live.store(view.cache_key, LIVE_ENCODER.encode((cold, items)))
        else:
            metrics.cache.labels("bypass").inc()
    items, policy = exploration.explore(items, k, arm, model.version, settings.exploration)
    rec_id = uuid.uuid4().hex
    served_at = iso(time.time())
    serving = (model.version, arm, policy)
    event_log.add_impressions(
        [
            (
                user_id,
                it.item_id,
                IMPRESSION,
                served_at,
                it.rank,
                f"{rec_id}:{it.rank}",
                rec_id,
                *serving,
                it.propensity,
            )
            for it in items
        ]
    )
    metrics.impressions.inc(len(items))
    metrics.recommendations.labels(arm, "cold_start" if cold else "personal").inc()
    return Recommendations(
        recommendation_id=rec_id,
        user_id=user_id,
        model_version=model.version,
        arm=arm,  # type: ignore[arg-type]
        cold_start=cold,
        items=items,
        policy=policy,
    )


@dataclass
class _Event:
    user_id: str
    item_id: str
    event_type: str
    value: float | None
    ts: float
    event_id: str | None
    recommendation_id: str | None

    def live(self) -> LiveEvent:
        return LiveEvent(item_id=self.item_id, event_type=self.event_type, value=self.value, ts=self.ts)

    def row(self, now: float, now_iso: str) -> tuple[object, ...]:
        """The event-log row; `now_iso` is `iso(now)`, the time of the many events that give none."""
        return (
            self.user_id,
            self.item_id,
            self.event_type,
            now_iso if self.ts == now else iso(self.ts),
            self.value,
            self.event_id,
            self.recommendation_id,
            None,
            None,
            None,
            None,
        )


def _unix_seconds(value: dt.datetime | float) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    # the magnitudes the pipeline's `timestamp_unit=auto` tells apart: s, ms, us
    magnitude = abs(value)
    return value / 1e6 if magnitude > 1e14 else value / 1e3 if magnitude > 1e11 else float(value)


# A test hook, never set in a deployment: `<step>` or `<step>:<event_id>` makes the process kill itself
# (SIGKILL) at that step of storing events, so a test can crash it exactly between two steps.
FAULT_ENV = "SERVING_TEST_KILL_AT"
STEPS = ("before_append", "after_append")


def _fault_point(step: str, event_ids: list[str]) -> None:
    target = os.environ.get(FAULT_ENV)
    if target and (target == step or any(target == f"{step}:{e}" for e in event_ids)):
        os.kill(os.getpid(), signal.SIGKILL)


def _id_text(value: str | int | float, key: str) -> str:
    """An id as the event log stores it: a string as is, a whole number as its decimal text."""
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer() and value >= 0):
            raise InvalidEventError(key, f"must be an id string or a whole number >= 0, got {value!r}")
        value = int(value)
    return str(value)


@dataclass(frozen=True)
class _Bounds:
    """The settings an event is checked against, read once per request rather than once per event."""

    rating_min: float
    rating_max: float
    lower: float
    upper: float

    @classmethod
    def of(cls, settings: Settings) -> _Bounds:
        return cls(
            settings.rating_min, settings.rating_max, settings.time_min.timestamp(), settings.time_upper.timestamp()
        )


def _where(index: int | None) -> str:
    return "" if index is None else f"[{index}]."


def normalise(ev: EventIn, index: int | None, bounds: _Bounds, now: float) -> _Event:
    """Apply the event-log contract's rules that types alone do not express (as the pipeline's cleaning does).

    `index`: the event's place in a batch, None for a single event (errors name the field by its path).
    """
    value = ev.value
    if value is not None and not math.isfinite(value):
        raise InvalidEventError(f"{_where(index)}value", "must be a finite number")
    if ev.event_type == "rating":
        if value is None:
            raise InvalidEventError(f"{_where(index)}value", "a rating needs a value")
        if not bounds.rating_min <= value <= bounds.rating_max:
            raise InvalidEventError(
                f"{_where(index)}value", f"rating {value} outside [{bounds.rating_min}, {bounds.rating_max}]"
            )
    elif value is not None and value < 0:
        raise InvalidEventError(f"{_where(index)}value", "must be >= 0")
    user_id = ev.user_id if isinstance(ev.user_id, str) else _id_text(ev.user_id, f"{_where(index)}user_id")
    item_id = ev.item_id if isinstance(ev.item_id, str) else _id_text(ev.item_id, f"{_where(index)}item_id")
    for name, text in (
        ("user_id", user_id),
        ("item_id", item_id),
        ("event_id", ev.event_id),
        ("recommendation_id", ev.recommendation_id),
    ):
        # the schema's pattern, exactly (msgspec's `$` lets a final line break through)
        if text is not None and not valid_id(text):
            raise InvalidEventError(f"{_where(index)}{name}", f"must be {ID_RULE}")
    ts = now if ev.timestamp is None else _unix_seconds(ev.timestamp)
    if not (math.isfinite(ts) and bounds.lower <= ts <= bounds.upper):
        # only instants inside the valid range are printed as dates: others may not be representable
        raise InvalidEventError(
            f"{_where(index)}timestamp", f"{ts} (unix seconds) outside [{iso(bounds.lower)}, {iso(bounds.upper)}]"
        )
    return _Event(
        user_id=user_id,
        item_id=item_id,
        event_type=ev.event_type,
        value=value,
        ts=ts,
        event_id=ev.event_id,
        recommendation_id=ev.recommendation_id,
    )


async def accept_events(data: EventsIn, live: LiveState, event_log: EventLog, settings: Settings) -> EventsAccepted:
    """Validate all, drop resent ids, append durably, then mark the ids stored and update live state.

    Write first, mark after: an id is marked stored only once its event is fsync'd, so a crash
    between any two steps never makes a retry look like a duplicate of an event that was lost.
    """
    now = time.time()
    if isinstance(data, EventIn):
        events = [normalise(data, None, _Bounds.of(settings), now)]
    else:
        if not 1 <= len(data) <= MAX_BATCH:
            raise InvalidEventError("body", f"a batch holds 1 to {MAX_BATCH} events, got {len(data)}")
        bounds = _Bounds.of(settings)
        events = [normalise(ev, i, bounds, now) for i, ev in enumerate(data)]

    # ids repeated inside the batch count once, like ids already stored
    first: dict[str, int] = {}
    for i, ev in enumerate(events):
        if ev.event_id is not None:
            first.setdefault(ev.event_id, i)
    ids = list(first)
    already = {e for e, seen in zip(ids, await live.stored(ids), strict=True) if seen}
    keep: list[_Event] = []
    duplicates: list[str] = []
    for i, ev in enumerate(events):
        if ev.event_id is None or (ev.event_id not in already and first[ev.event_id] == i):
            keep.append(ev)
        else:
            duplicates.append(ev.event_id)
    new_ids = [ev.event_id for ev in keep if ev.event_id is not None]

    # once the write starts, finish the bookkeeping even if the client goes away
    with anyio.CancelScope(shield=True):
        if keep:
            _fault_point("before_append", new_ids)
            now_iso = iso(now)
            rows = [ev.row(now, now_iso) for ev in keep]
            try:
                await anyio.to_thread.run_sync(event_log.append, rows)
            except OSError as exc:
                log.error("event log append failed (%s); %d events refused", exc, len(keep))
                raise EventLogUnavailableError("the event log could not be written; nothing was stored") from exc
            _fault_point("after_append", new_ids)
        # a request racing this one with the same id may have stored it too: it is in the log
        # (twice; ingestion keeps one), and only the first to mark it counts it as accepted
        lost = await live.commit([(ev.user_id, ev.event_id, ev.live()) for ev in keep])
        if lost:
            duplicates.extend(sorted(lost))
            keep = [ev for ev in keep if ev.event_id not in lost]
    metrics = get_metrics()
    metrics.events.labels("accepted").inc(len(keep))
    if duplicates:
        metrics.events.labels("duplicate").inc(len(duplicates))
    return EventsAccepted(accepted=len(keep), duplicates=len(duplicates), duplicate_event_ids=duplicates)
