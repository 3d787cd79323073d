"""What every operation may answer besides its own responses, declared in one place: the
headers the middleware adds, HEAD's and ``If-None-Match``'s part (``app.middleware``), and
``Idempotency-Key``'s (``app.web.idempotency``)."""

from typing import Any

from app.web.idempotency import PATTERN

__all__ = ["declare_http_semantics"]

_REQUEST_ID = {
    "description": "the request's id: the client's X-Request-ID, or a new one",
    "schema": {"type": "string"},
}
_ETAG = {
    "description": "the representation's version, for If-None-Match and If-Match",
    "schema": {"type": "string"},
}
_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "ETags the client holds: 304 when one is current (HEAD works as GET)",
    "schema": {"type": "string"},
}
_NOT_MODIFIED = {
    "description": "If-None-Match names the current ETag: the client's copy is current",
    "headers": {"ETag": _ETAG},
}


_REPLAYED = {
    "description": "true: the stored answer to an earlier request with this Idempotency-Key",
    "schema": {"type": "string", "enum": ["true"]},
}
_KEY_IN_PROGRESS = {
    "description": "A request with this Idempotency-Key is still being processed; retry later",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}},
}


def key_policy(ttl_hours: float) -> str:
    """The ``Idempotency-Key`` parameter's description: its syntax, scope and lifetime."""
    return (
        "Optional. A key of the client's choosing, unique per operation (a UUID), as an "
        'sf-string ("...") or a bare token of 1-255 printable ASCII characters. A retry with '
        "the same key, caller, path and body gets the first answer again (status, body, ETag) "
        "with Idempotent-Replayed: true, and changes nothing; the same key with another "
        "request is a 422; while the first is still running, the retry waits for it up to "
        "DB_QUEUE_TIMEOUT, then gets a 409 (a 503 on SQLite) with Retry-After. Only "
        "successful answers are stored: a request refused (4xx) leaves the key free. Keys "
        f"are scoped to the caller and the operation and kept {ttl_hours:g} hours "
        "(IDEMPOTENCY_KEY_TTL_HOURS). See docs/idempotency.md."
    )


def declare_http_semantics(
    schema: dict[str, Any], *, idempotency_ttl_hours: float = 24
) -> dict[str, Any]:
    """``schema`` with, on every response, ``X-Request-ID``; on a GET or PATCH's 200, the
    ``ETag`` it may carry; on every GET, ``If-None-Match`` and its 304; on every POST and
    PATCH that takes ``Idempotency-Key``, its policy, its 409 and ``Idempotent-Replayed``
    (other methods ignore the key: it is not theirs to declare). Idempotent: FastAPI
    hands back the same cached schema at every call."""
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if _declare_key(method, operation, idempotency_ttl_hours):
                responses.setdefault("409", _KEY_IN_PROGRESS)
                for status, response in responses.items():
                    if status.startswith("2"):
                        response.setdefault("headers", {}).setdefault(
                            "Idempotent-Replayed", _REPLAYED
                        )
            if method == "get":
                responses.setdefault("304", _NOT_MODIFIED)
                parameters = operation.setdefault("parameters", [])
                if _IF_NONE_MATCH not in parameters:
                    parameters.append(_IF_NONE_MATCH)
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                headers.setdefault("X-Request-ID", _REQUEST_ID)
                if status == "200" and method in ("get", "patch"):
                    headers.setdefault("ETag", _ETAG)
    return schema


def _declare_key(method: str, operation: dict[str, Any], ttl_hours: float) -> bool:
    """Whether the operation takes ``Idempotency-Key``; its parameter, described, if so."""
    parameters = operation.get("parameters", [])
    for parameter in parameters:
        if parameter.get("in") == "header" and parameter.get("name") == "Idempotency-Key":
            if method not in ("post", "patch"):
                parameters.remove(parameter)
                return False
            parameter["description"] = key_policy(ttl_hours)
            parameter["schema"] = {"type": "string", "pattern": PATTERN}
            return True
    return False
