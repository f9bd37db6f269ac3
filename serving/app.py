"""The Litestar application: `create_app(settings)` assembles it; `create_app_from_env()` is uvicorn's factory.

Long-lived things (model holder, Redis link, live state, event log) are opened in `lifespan`, kept
on `app.state` and injected into handlers with `Provide`. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.logging.config import LoggingConfig
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig
from litestar.static_files import create_static_files_router
from litestar.types import Scope

from recsys_assets.contract import registry_alias
from recsys_assets.contract.artifact import CHAMPION_POINTER
from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from serving import errors
from serving.controllers import (
    EventController,
    HealthController,
    ItemController,
    ModelController,
    RecommendationController,
)
from serving.errors import ServingError, domain_error_handler, validation_error_handler
from serving.eventlog import FLUSH_SECONDS, EventLog
from serving.live import LiveState, RedisLink
from serving.model import ModelHolder
from serving.ops_metrics import OpsObserver
from serving.ratelimit import RateLimiter, RateLimitMiddleware
from serving.requestid import RequestIdMiddleware
from serving.security import HEADER, SECURITY_SCHEME, ApiKeys
from serving.telemetry import LATENCY_BUCKETS, get_metrics, mark_dead_workers, mark_process_dead

log = logging.getLogger("serving")

API_VERSION = "1.0.0"
DOCS_PATH = "/docs"
STATIC_PATH = "/static/swagger-ui"
# probes, scrapes and documentation are never throttled
UNTHROTTLED = ["^/health$", "^/ready$", "^/metrics$", f"^{DOCS_PATH}", "^/static/"]


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    link: RedisLink = app.state.redis_link
    storage = Storage.from_settings(settings)
    event_log = EventLog(settings.events_path(), settings.events_segment_max_bytes, settings.events_segment_max_seconds)
    holder = ModelHolder(
        storage,
        settings.ab_challenger_share,
        settings.ab_challenger_path,
        candidate_threshold=settings.candidate_threshold_items,
        registry_url=registry_alias.registry_url(settings.registry_url, settings.mlflow_tracking_uri),
    )
    live = LiveState(
        link, settings.cache_ttl_seconds, settings.idempotency_ttl_seconds, settings.live_state_ttl_seconds
    )
    app.state.update(holder=holder, live=live, event_log=event_log)
    ops = OpsObserver(storage)
    _mark_dead_workers()
    get_metrics().redis_up.set(0)
    await link.connect()
    await _refresh(holder, ops)
    if holder.champion is None and holder.last_rejected is None:
        log.warning(
            "no champion artifact under %s yet (no %s): /ready answers 503 until one is published",
            storage.root,
            "/".join(CHAMPION_POINTER),
        )
    if not app.state.api_keys.scopes_by_key:
        log.warning("RECSYS_API_KEYS is empty: POST /v1/events and admin endpoints refuse every request")
    log.info(
        "event log in %s; Redis %s; model poll every %ss",
        event_log.directory,
        link.state,
        settings.model_poll_seconds,
    )

    # background loops log their failures and go on: an error in one must not stop the server
    async def poll() -> None:
        while True:
            await anyio.sleep(settings.model_poll_seconds)
            await _refresh(holder, ops)
            _mark_dead_workers()
            try:
                await link.check()
            except Exception:
                log.exception("Redis check failed")

    async def flush() -> None:
        while True:
            await anyio.sleep(FLUSH_SECONDS)
            try:
                await anyio.to_thread.run_sync(event_log.flush)
            except Exception:
                log.exception("event log flush failed")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            tg.start_soon(flush)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    finally:
        event_log.close()
        await link.close()
        mark_process_dead()


async def _refresh(holder: ModelHolder, ops: OpsObserver) -> None:
    try:
        await holder.refresh()
    except Exception:
        # a storage hiccup must not stop the poller; the served model stays
        current = holder.champion.version if holder.champion else "nothing"
        log.exception("model refresh failed; still serving %s", current)
    try:
        # readiness, the champion's age and the pipeline's tables, for the alert rules
        await anyio.to_thread.run_sync(ops.observe, holder.champion)
    except Exception:
        log.exception("could not update the ops gauges")


def _mark_dead_workers() -> None:
    try:
        if dead := mark_dead_workers():
            log.warning("dropped the live gauges of workers that died without stopping: pids %s", dead)
    except OSError as exc:
        log.warning("could not clean the metrics folder: %s", exc)


async def _after_exception(exc: Exception, scope: Scope) -> None:
    status = errors.status_for(exc) if isinstance(exc, ServingError) else int(getattr(exc, "status_code", 500))
    if scope.get("method") == "POST" and scope.get("path") == "/v1/events" and 400 <= status < 500:
        get_metrics().event_requests_rejected.labels(str(status)).inc()
    if not isinstance(exc, HTTPException | ServingError):
        log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)


def _openapi() -> OpenAPIConfig:
    import swagger_ui_bundle

    assert Path(str(swagger_ui_bundle.swagger_ui_path)).is_dir()
    return OpenAPIConfig(
        title="recsys recommendation API",
        version=API_VERSION,
        description="Personalized recommendations with reasons, similar items, and event feedback with live "
        "adaptation. Event and admin endpoints need an `X-API-Key` header.",
        path=DOCS_PATH,
        use_handler_docstrings=True,
        components=Components(
            security_schemes={
                SECURITY_SCHEME: SecurityScheme(type="apiKey", name=HEADER, security_scheme_in="header"),
            }
        ),
        # Swagger UI from the swagger-ui-bundle-v2 package, served below: the page loads nothing from a CDN
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
                css_url=f"{STATIC_PATH}/swagger-ui.css",
                standalone_preset_js_url=f"{STATIC_PATH}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{STATIC_PATH}/favicon-32x32.png'>",
            ),
            YamlRenderPlugin(path="/openapi.yaml"),
        ],
    )


def create_app(settings: Settings) -> Litestar:
    """The API for these settings; services open in the lifespan, when the server starts."""
    import swagger_ui_bundle

    link = RedisLink(settings.redis_url or None)
    api_keys = ApiKeys.parse(settings.api_keys)
    state = State({"settings": settings, "redis_link": link, "api_keys": api_keys})
    middleware = [
        # outermost: the id is set before anything logs and reaches every response, a 429 included
        DefineMiddleware(RequestIdMiddleware),
        PrometheusConfig(
            app_name="recsys-api",
            prefix="recsys_api",
            group_path=True,
            buckets=list(LATENCY_BUCKETS),
            exclude=["^/metrics$", "^/static/"],
        ).middleware,
    ]
    if settings.rate_limit_per_minute:
        limiter = RateLimiter(link, settings.rate_limit_per_minute, api_keys)
        middleware.append(DefineMiddleware(RateLimitMiddleware, limiter=limiter, exclude=UNTHROTTLED))
    return Litestar(
        route_handlers=[
            RecommendationController,
            ItemController,
            EventController,
            ModelController,
            HealthController,
            create_static_files_router(path=STATIC_PATH, directories=[Path(str(swagger_ui_bundle.swagger_ui_path))]),
        ],
        dependencies={
            "settings": Provide(_settings, sync_to_thread=False),
            "holder": Provide(_holder, sync_to_thread=False),
            "live": Provide(_live, sync_to_thread=False),
            "event_log": Provide(_event_log, sync_to_thread=False),
        },
        state=state,
        lifespan=[lifespan],
        middleware=middleware,
        exception_handlers={
            ServingError: domain_error_handler,
            ValidationException: validation_error_handler,
        },
        after_exception=[_after_exception],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=_openapi(),
        cors_config=_cors(settings),
        logging_config=_logging(settings),
    )


def _cors(settings: Settings) -> CORSConfig | None:
    """Browser pages of the allowed origins may call the API (None: no CORS headers, same-origin only)."""
    origins = settings.cors_origins()
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", HEADER, "X-Request-ID"],
        # what a page's script may read: the request id, and when to retry after a 429 or 503
        expose_headers=["X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
        allow_credentials=settings.cors_allow_credentials,
        max_age=settings.cors_max_age_seconds,
    )


def _logging(settings: Settings) -> LoggingConfig:
    """Text lines by default; with `log_format=json`, one JSON object per line with the request id, for the
    API's loggers, Litestar's and uvicorn's (its access log too)."""
    if settings.log_format != "json":
        return LoggingConfig(
            loggers={"serving": {"level": "INFO", "handlers": ["queue_listener"], "propagate": False}},
            log_exceptions="never",
        )
    # the queue handler formats in the thread that logs (QueueHandler.prepare), where the request id is set
    queued = {"level": "INFO", "handlers": ["queue_listener"], "propagate": False}
    return LoggingConfig(
        formatters={"json": {"()": "recsys_assets.contract.logs.JsonFormatter"}},
        filters={"request_id": {"()": "recsys_assets.contract.logs.RequestIdFilter"}},
        handlers={
            "queue_listener": {
                "class": "litestar.logging.standard.QueueListenerHandler",
                "level": "DEBUG",
                "formatter": "json",
                "filters": ["request_id"],
            }
        },
        loggers={name: queued for name in ("serving", "litestar", "uvicorn", "uvicorn.error", "uvicorn.access")},
        log_exceptions="never",
    )


def _settings(state: State) -> Settings:
    return state.settings


def _holder(state: State) -> ModelHolder:
    return state.holder


def _live(state: State) -> LiveState:
    return state.live


def _event_log(state: State) -> EventLog:
    return state.event_log


def create_app_from_env() -> Litestar:
    """uvicorn's `--factory` entry point: settings are read here, when the worker starts."""
    return create_app(get_settings())
