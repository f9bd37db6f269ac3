"""Log lines as JSON objects (the opt-in `log_format=json`), shared by the API and the pipeline's own loggers.

Standard-library logging rather than structlog: every line that matters comes from stdlib loggers the project
does not own (uvicorn's access log, Litestar, Dagster, MLflow), so a `logging.Formatter` renders all of them in
one format with no second logging system to bridge, and the API image needs no extra package.

One line is one object: `ts` (UTC, ISO 8601 with milliseconds), `level`, `logger`, `message`, `request_id`
(while the API handles a request: the caller's `X-Request-ID`, or one generated for it), `exc_info` (a
formatted traceback, when there is one), plus a record's `extra` fields that encode to JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]

# the request being handled in this context (an asyncio task or a thread running one request)
REQUEST_ID: ContextVar[str | None] = ContextVar("recsys_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# attributes every LogRecord has: not repeated as extra fields
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "taskName"}


class RequestIdFilter(logging.Filter):
    """Stamp the current request id on every record (None outside a request); never drops one.

    It runs where the record is made (before a queue hands it to another thread), so the id is the one of
    the request that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for its keys)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key not in line:
                line[key] = _jsonable(value)
        return json.dumps(line, ensure_ascii=False, default=str)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_process_logging(log_format: LogFormat, level: int = logging.INFO) -> None:
    """The root logger of a command-line process writes to stderr in `log_format`, at `level`; called again,
    it replaces the handler it installed instead of adding one."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_recsys", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._recsys = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
