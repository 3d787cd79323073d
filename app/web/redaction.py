"""Validation errors safe to send and to log: no secret's value, every echoed input short.

FastAPI's 422 repeats each invalid input in full, a 5 MB password five megabytes of it.
``redacted`` keeps the shape (``{type, loc, msg, input, ctx?}``) and what clients act on
(``type``, ``loc``, ``msg``), masks the input of every secret field (``Secret``,
``SecretStr``, ``SecretBytes``) and of secret keys inside objects, and cuts the rest short.
"""

import functools
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, get_args, get_origin

from fastapi.dependencies.models import Dependant
from pydantic import BaseModel, Secret, SecretBytes, SecretStr

__all__ = ["MASK", "MAX_ECHO", "redacted", "secret_names"]

MASK = "**********"
"""What a secret's value reads as, as in pydantic's own ``repr``."""
MAX_ECHO = 100
"""Characters of an input (or of its ``repr``) that an error repeats."""
_MAX_MESSAGE = 300
_MAX_ITEMS = 20
_MAX_DEPTH = 3
_SECRETS = (Secret, SecretStr, SecretBytes)


def secret_names(dependant: Dependant) -> frozenset[str]:
    """Names (and aliases) of the secret parameters and model fields an operation takes,
    through its sub-dependencies and nested models."""
    names: set[str] = set()
    for params in _parameter_lists(dependant):
        for param in params:
            annotation = param.field_info.annotation
            if _is_secret(annotation):
                names.update({param.name, param.alias})
            for model in _models_in(annotation):
                names.update(_secret_fields(model))
    return frozenset(names)


def redacted(errors: Sequence[Any], secrets: Iterable[str]) -> list[dict[str, Any]]:
    """``errors`` (pydantic's or FastAPI's list of dicts) as they may be sent and logged."""
    secret = frozenset(secrets)
    return [_redacted_error(error, secret) for error in errors]


def _redacted_error(error: Mapping[str, Any], secrets: frozenset[str]) -> dict[str, Any]:
    loc = tuple(_short(p) if isinstance(p, str) else p for p in error.get("loc", ()))
    out: dict[str, Any] = {
        "type": error.get("type"),
        "loc": list(loc),
        "msg": _short(str(error.get("msg", "")), _MAX_MESSAGE),
    }
    if "input" in error:
        # A "missing" error's input is the object the field is missing from, not its value.
        on_secret = error.get("type") != "missing" and any(p in secrets for p in loc)
        # A body that could not be read as an object (a form, text/plain sent where JSON is
        # expected) comes back whole, as text: with a secret in it, somewhere.
        raw_body = len(loc) <= 1 and isinstance(error["input"], str | bytes | bytearray)
        out["input"] = (
            MASK if on_secret or (secrets and raw_body) else _bounded(error["input"], secrets)
        )
    if "ctx" in error:
        out["ctx"] = {
            _short(str(k)): _bounded(v if _is_json(v) else str(v), secrets)
            for k, v in itertools.islice(dict(error["ctx"]).items(), _MAX_ITEMS)
        }
    return out


def _bounded(value: Any, secrets: frozenset[str], depth: int = 0) -> Any:
    """``value`` as JSON, short: long strings cut, big containers trimmed, secrets masked."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        # Python's JSON parser reads NaN and Infinity; JSON answers cannot carry them.
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _short(value)
    if isinstance(value, int):
        return value if len(str(value)) <= MAX_ECHO else _short(str(value))
    if isinstance(value, _SECRETS):
        return MASK
    if depth < _MAX_DEPTH and isinstance(value, Mapping):
        return {
            _short(str(k)): MASK if k in secrets else _bounded(v, secrets, depth + 1)
            for k, v in itertools.islice(value.items(), _MAX_ITEMS)
        }
    if depth < _MAX_DEPTH and isinstance(value, list | tuple):
        return [_bounded(v, secrets, depth + 1) for v in value[:_MAX_ITEMS]]
    return _short(repr(value))


def _short(text: str, limit: int = MAX_ECHO) -> str:
    if len(text) > limit:
        text = f"{text[:limit]}..."
    # A lone surrogate ("\ud800" in JSON) has no UTF-8: echo it as its escape.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_json(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)


def _parameter_lists(dependant: Dependant) -> Iterator[list[Any]]:
    yield from (
        dependant.path_params,
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.body_params,
    )
    for sub in dependant.dependencies:
        yield from _parameter_lists(sub)


def _is_secret(annotation: Any) -> bool:
    return any(isinstance(t, type) and issubclass(t, _SECRETS) for t in _types_in(annotation))


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    for t in _types_in(annotation):
        if isinstance(t, type) and issubclass(t, BaseModel):
            yield t


def _types_in(annotation: Any) -> Iterator[Any]:
    """``annotation`` and every type it is made of (``Annotated``, unions, generics)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _types_in(get_args(annotation)[0])
        return
    yield origin or annotation  # Secret[str] -> Secret, X | None -> UnionType, then X, None
    for arg in get_args(annotation):
        yield from _types_in(arg)


@functools.cache
def _secret_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(_walk(model, set()))


def _walk(model: type[BaseModel], seen: set[type[BaseModel]]) -> Iterator[str]:
    seen.add(model)
    for name, field in model.model_fields.items():
        if _is_secret(field.annotation):
            yield from (name, field.alias or name)
        for nested in _models_in(field.annotation):
            if nested not in seen:
                yield from _walk(nested, seen)
