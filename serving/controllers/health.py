"""`GET /health`, `GET /ready` and `GET /metrics`."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from serving.controllers.responses import WORKER_HEADERS, worker_header
from serving.live import LiveState
from serving.model import ModelHolder
from serving.schemas import Health, Readiness
from serving.telemetry import exposition


class HealthController(Controller):
    path = "/"
    tags = ("operations",)

    @get(
        "/health",
        operation_id="getHealth",
        summary="Liveness",
        after_request=worker_header,
        response_headers=WORKER_HEADERS,
    )
    async def health(self) -> Health:
        """The process is alive."""
        return Health(status="ok")

    @get(
        "/ready",
        operation_id="getReady",
        summary="Readiness",
        responses={HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(Readiness, description="No model loaded yet")},
    )
    async def ready(self, holder: ModelHolder, live: LiveState) -> Response[Readiness]:
        """200 once a model is loaded (Redis being down does not make the API unready: it falls back)."""
        champion = holder.champion
        body = Readiness(
            status="ready" if champion is not None else "not ready",
            model_version=champion.version if champion is not None else None,
            redis=live.link.state,  # type: ignore[arg-type]
        )
        return Response(body, status_code=HTTP_200_OK if champion is not None else HTTP_503_SERVICE_UNAVAILABLE)

    @get("/metrics", operation_id="getMetrics", summary="Prometheus metrics", media_type="text/plain")
    async def metrics(self) -> Response[bytes]:
        """Prometheus metrics (every worker's, summed, when several run)."""
        payload, content_type = exposition()
        return Response(payload, media_type=content_type)
