"""`POST /v1/events`."""

from __future__ import annotations

from litestar import Controller, post
from litestar.status_codes import HTTP_202_ACCEPTED

from recsys_assets.contract.settings import Settings
from serving.eventlog import EventLog
from serving.live import LiveState
from serving.schemas import EventsAccepted, EventsIn
from serving.security import SECURITY_SCHEME, requires
from serving.service import accept_events


class EventController(Controller):
    path = "/v1/events"
    tags = ("events",)

    @post(
        "/",
        operation_id="postEvents",
        summary="Post events",
        status_code=HTTP_202_ACCEPTED,
        guards=[requires("events")],
        security=[{SECURITY_SCHEME: []}],
    )
    async def post_events(
        self, data: EventsIn, live: LiveState, event_log: EventLog, settings: Settings
    ) -> EventsAccepted:
        """Store one event or a batch (a JSON array); 202 once they are durably in the event log."""
        return await accept_events(data, live, event_log, settings)
