"""`POST /v1/events`."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import Provide
from litestar.status_codes import HTTP_202_ACCEPTED

from recsys_assets.contract.settings import Settings
from serving.bodies import EventsOperation, read_events
from serving.controllers.responses import WORKER_HEADERS, errors, worker_header
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
        # the body is read strictly by `read_events` (after the guard), and documented by EventsOperation
        dependencies={"events": Provide(read_events)},
        operation_class=EventsOperation,
        responses=errors(400, 401, 403, 413, 415, 429, 503),
        after_request=worker_header,
        response_headers=WORKER_HEADERS,
    )
    async def post_events(
        self, events: EventsIn, live: LiveState, event_log: EventLog, settings: Settings
    ) -> EventsAccepted:
        """Store one event or a batch (a JSON array of 1 to 1,000); 202 once they are durably in the event log.

        A resent `event_id` is answered as a duplicate and not stored again. Ids follow the id rule of
        the schema. Ratings need a `value` within the configured range; a `timestamp` must lie between
        `time_min` and one day from now.
        """
        return await accept_events(events, live, event_log, settings)
