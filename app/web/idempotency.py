"""``Idempotency-Key`` at the HTTP edge: the header's syntax, the request's scope and
fingerprint, the route's answer to store, and the stored answer sent again
(draft-ietf-httpapi-idempotency-key-header; the contract: docs/idempotency.md)."""

import re
from collections.abc import Callable
from typing import Any

from fastapi.datastructures import DefaultPlaceholder
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from app.exceptions import IdempotentReplay
from app.schemas import Versioned
from app.units.idempotency import Answer, IdempotencyKeys, KeyedRequest, KeyedWrite, WriteUnit
from app.web.etags import etag

__all__ = [
    "HEADER",
    "KEYED_METHODS",
    "PATTERN",
    "REPLAYED",
    "REUSED",
    "keyed_write",
    "parse_key",
    "replay",
]

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEYED_METHODS = frozenset({"POST", "PATCH"})
"""The methods whose writes take a key: the others are idempotent by themselves."""

_SYNTAX = (
    "Idempotency-Key must be one quoted string (an sf-string: "
    '"8e03978e-40d5-43e8-bc93-6894a57f9324") or one bare token of 1 to 255 printable ASCII '
    'characters (no space, ", \\, comma or semicolon)'
)
REUSED = (
    "This Idempotency-Key was used for a different request (method, path, body or caller) "
    "within its lifetime; send a new key for a new request"
)
# sf-string: printable ASCII, with " and \ escaped; a bare token: visible ASCII but " , ; \
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\]){1,255}"'
_BARE = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,255}"
PATTERN = f"^(?:{_BARE}|{_QUOTED})$"
"""The syntax, as OpenAPI declares it (ECMA-262 and Python read it alike)."""
_SYNTAX_RE = re.compile(PATTERN)
_ESCAPE = re.compile(r'\\(["\\])')


def parse_key(values: list[str]) -> str:
    """The key of the request's ``Idempotency-Key`` header(s); a 422 if it is not one
    well-formed key."""
    raw = values[0] if len(values) == 1 else ""
    if not _SYNTAX_RE.fullmatch(raw):
        error = {"type": "idempotency_key", "loc": ("header", HEADER), "msg": _SYNTAX}
        raise RequestValidationError([{**error, "input": raw[:100]}])
    return _ESCAPE.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw


def keyed_write(
    writer: WriteUnit, keys: IdempotencyKeys, request: Request, caller: Callable[[], int | None]
) -> KeyedWrite:
    """``writer`` for a request with a key: the key is checked now (a 422 before any work),
    the scope and fingerprint are made at the write, once the caller is known."""
    key = parse_key(request.headers.getlist(HEADER))
    route = request.scope["route"]
    assert isinstance(route, APIRoute)

    async def prepare() -> KeyedRequest:
        query = request.scope.get("query_string", b"").decode("latin-1")
        return keys.keyed_request(
            key=key,
            caller=caller(),
            method=request.method,
            route=route.path,
            target=request.scope["path"] + (f"?{query}" if query else ""),
            body=await _body(request),
            status_code=route.status_code or 200,
            render=_renderer(route),
        )

    return KeyedWrite(writer, keys, prepare)


def replay(stored: IdempotentReplay) -> Response:
    """The stored answer, sent again."""
    headers = {REPLAYED: "true"}
    if stored.etag is not None:
        headers["ETag"] = stored.etag
    return Response(stored.body, stored.status_code, headers, media_type="application/json")


async def _body(request: Request) -> bytes:
    try:
        return await request.body()
    except RuntimeError:  # a form FastAPI parsed from the stream: its fields, in order
        form = await request.form()
        fields = [
            f"{name}={value if isinstance(value, str) else f'<file {value.filename} {value.size}>'}"
            for name, value in form.multi_items()
        ]
        return "\n".join(fields).encode()


def _renderer(route: APIRoute) -> Callable[[Any], Answer | None]:
    """What the route answers for a unit's result, as FastAPI would serialize it: a
    ``Versioned`` is its value, with its version as the ETag (``app.web.etags.with_etag``)."""
    field = route.response_field
    options: dict[str, Any] = {
        "include": route.response_model_include,
        "exclude": route.response_model_exclude,
        "by_alias": route.response_model_by_alias,
        "exclude_unset": route.response_model_exclude_unset,
        "exclude_defaults": route.response_model_exclude_defaults,
        "exclude_none": route.response_model_exclude_none,
    }
    response_class = route.response_class
    if isinstance(response_class, DefaultPlaceholder):
        response_class = response_class.value

    def render(result: Any) -> Answer | None:
        tag = None
        if isinstance(result, Versioned):
            result, tag = result.value, etag(result.version)
        if result is None:
            return None
        if field is None:
            return bytes(JSONResponse(jsonable_encoder(result)).body), tag
        value, errors = field.validate(result, {}, loc=("response",))
        if errors:
            raise TypeError(
                f"{route.path}: with an Idempotency-Key, the unit of work must return what the "
                f"route answers (its response model, a Versioned of it, or None), not "
                f"{type(result).__name__}"
            )
        if isinstance(route.response_class, DefaultPlaceholder):
            return field.serialize_json(value, **options), tag
        return bytes(response_class(field.serialize(value, mode="json", **options)).body), tag

    return render
