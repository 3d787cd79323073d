"""What every operation may answer besides its own responses, declared in one place: the
headers the middleware adds, HEAD's and ``If-None-Match``'s part (``app.middleware``)."""

from typing import Any

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


def declare_http_semantics(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with, on every response, ``X-Request-ID``; on a GET or PATCH's 200, the
    ``ETag`` it may carry; on every GET, ``If-None-Match`` and its 304. Idempotent: FastAPI
    hands back the same cached schema at every call."""
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
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
