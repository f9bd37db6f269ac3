"""The body of `POST /v1/events`, read strictly, and its OpenAPI description.

The body is read here rather than by Litestar's generic JSON extractor, which decodes any JSON
first (a deeply nested one raised `RecursionError`, a 500) and then converts it leniently
(`"3"` became the number 3). Here, in order:

* the `Content-Type` must be JSON (`application/json` or `application/*+json`, UTF-8): else 415;
* an empty body is a 400 saying so; a body past `max_body_bytes` a 413 (Litestar, while reading);
* the body is decoded straight into `EventsIn` by msgspec, strictly: no strings for numbers, no
  unknown fields, ids by the id rule, 1 to `MAX_BATCH` events; a failure is a 400 naming the field
  by its path (`[3].value`), or, for a body nested deeper than `max_json_depth`, naming that limit;
* an object with the same key twice is a 400 (a JSON parser would keep one of them silently).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from litestar import Request
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody

from recsys_assets.contract.settings import Settings
from serving.errors import InvalidEventError, UnsupportedMediaTypeError
from serving.schemas import MAX_BATCH, EventsIn

_DECODER = msgspec.json.Decoder(EventsIn)


# an event's object as a dict: a key written twice is one entry
_AS_DICTS = msgspec.json.Decoder(dict[str, Any] | list[dict[str, Any]])
# a key's closing quote with space before its colon
_SPACED_KEY_END = re.compile(rb'"\s+:')
_NAMED_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")
EMPTY_BODY = f"the body is empty: send one event (a JSON object) or a batch (a JSON array of 1 to {MAX_BATCH})"


async def read_events(request: Request, settings: Settings) -> EventsIn:
    """The events of a `POST /v1/events` request, or the 4xx that says what is wrong with its body."""
    check_json_media_type(request.headers.get("content-type"))
    body = await request.body()
    if not body.strip():
        raise InvalidEventError("body", EMPTY_BODY)
    try:
        data = _DECODER.decode(body)
    except msgspec.ValidationError as err:
        _check_depth(body, settings.max_json_depth)
        raise InvalidEventError(*_locate(str(err))) from None
    except msgspec.DecodeError as err:
        _check_depth(body, settings.max_json_depth)
        raise InvalidEventError("body", f"not valid JSON: {err}") from None
    # decoded into the type, the body is at most two levels deep: the standard parser is safe on it
    if _may_repeat_a_key(body):
        _check_duplicate_keys(body, batch=isinstance(data, list))
    return data


def _may_repeat_a_key(body: bytes) -> bool:
    """False when no object of a body that decoded into `EventsIn` holds a key twice; in C, unlike the
    exact check, which calls Python per object.

    Decoded into the type, the body's strings are ids, event types and ISO instants: none holds a quote,
    so every `":` ends a key. Keys are then counted twice over: as written, and as distinct keys of
    their objects. A repeated key makes the first count larger. (A body with space before a colon
    gets the exact check.)
    """
    if _SPACED_KEY_END.search(body):
        return True
    objects = _AS_DICTS.decode(body)
    distinct = sum(map(len, objects)) if isinstance(objects, list) else len(objects)
    return body.count(b'":') != distinct


def check_json_media_type(value: str | None) -> None:
    media, _, params = (value or "").partition(";")
    media = media.strip().lower()
    is_json = media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
    named = (p.partition("=") for p in params.split(";"))
    charset = next((v.strip().strip('"').lower() for k, _, v in named if k.strip().lower() == "charset"), "utf-8")
    if not is_json or charset not in ("utf-8", "utf8"):
        got = f"Content-Type {value!r}" if value else "no Content-Type"
        raise UnsupportedMediaTypeError(f"the body must be JSON in UTF-8 (Content-Type: application/json); got {got}")


def _locate(message: str) -> tuple[str, str]:
    """(path of the field at fault, message) from msgspec's `... - at `$[3].value``."""
    text, _, at = message.partition(" - at `$")
    path = at.rstrip("`").lstrip(".")
    # a missing or unknown field is named in the message, not in the path
    if named := _NAMED_FIELD.search(text):
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or "body", text


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (brackets inside strings do not count).

    Vectorised and linear, so a hostile 1 MB body costs milliseconds: a quote opens or closes a
    string unless an odd run of backslashes precedes it.
    """
    raw = np.frombuffer(body, dtype=np.uint8)
    if not len(raw):
        return 0
    pos = np.arange(len(raw))
    backslash = raw == ord("\\")
    last_other = np.maximum.accumulate(np.where(backslash, -1, pos))
    run_before = np.empty(len(raw), dtype=np.int64)
    run_before[0] = 0
    run_before[1:] = pos[:-1] - last_other[:-1]
    quote = (raw == ord('"')) & (run_before % 2 == 0)
    outside = (np.cumsum(quote) - quote) % 2 == 0
    step = (((raw == ord("[")) | (raw == ord("{"))) & outside).astype(np.int64)
    step -= (((raw == ord("]")) | (raw == ord("}"))) & outside).astype(np.int64)
    return int(np.cumsum(step).max(initial=0))


def _check_depth(body: bytes, limit: int) -> None:
    depth = json_depth(body)
    if depth > limit:
        raise InvalidEventError("body", f"JSON nested {depth} levels deep; the limit is {limit} (max_json_depth)")


def _check_duplicate_keys(body: bytes, batch: bool) -> None:
    seen = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal seen
        keys = [k for k, _ in items]
        if len(set(keys)) < len(keys):
            twice = next(k for i, k in enumerate(keys) if k in keys[:i])
            raise InvalidEventError(f"[{seen}].{twice}" if batch else twice, f"key `{twice}` given twice")
        seen += 1
        return dict(items)

    json.loads(body, object_pairs_hook=pairs)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """msgspec's JSON Schema with its `$defs` substituted in place (the types here are not recursive)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _body_schema() -> dict[str, Any]:
    schema = _inline(msgspec.json.schema(EventsIn))
    event = next(s for s in schema["anyOf"] if s.get("type") == "object")
    batch = next(s for s in schema["anyOf"] if s.get("type") == "array")
    for name in ("user_id", "item_id"):
        # "integer" already includes whole floats (8482.0), which are what the float member decodes
        prop = event["properties"][name]
        prop["anyOf"] = [s for s in prop["anyOf"] if s.get("type") != "number"]
    # unix seconds (or ms, us) or ISO 8601
    for s in event["properties"]["timestamp"]["anyOf"]:
        if s.get("type") == "string":
            s["format"] = "date-time"
    batch["items"] = event
    return schema


EVENTS_BODY_SCHEMA = _body_schema()


@dataclass
class EventsOperation(Operation):
    """`POST /v1/events` in the OpenAPI document: the body is described from the very type it is
    decoded into, with its limits (batch size, id rule and length), which Litestar's own schema of a
    union drops."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=EVENTS_BODY_SCHEMA)},  # type: ignore[arg-type]
            description=f"One event (an object) or a batch (an array of 1 to {MAX_BATCH}); "
            "`Content-Type: application/json`.",
            required=True,
        )
