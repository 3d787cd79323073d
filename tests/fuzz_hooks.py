"""Schemathesis hooks for tests/test_fuzz.py: e-mails as the service defines them, and
Idempotency-Keys that name one request."""

import hashlib
import re
from typing import Any

import schemathesis
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from schemathesis.generation import GenerationMode

from app.schemas import Email
from app.web.idempotency import PATTERN

_EMAIL = TypeAdapter(Email)


def _accepted(email: str) -> bool:
    try:
        _EMAIL.validate_python(email)
    except ValidationError:
        return False
    return True


# JSON Schema's "email" format admits addresses that email-validator refuses by design
# (special-use domains such as .test, which can receive no mail); positive tests must send
# addresses the service documents as valid, so they are drawn from what it accepts.
schemathesis.openapi.format("email", st.emails().filter(_accepted))


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: Any) -> Any:
    """A valid Idempotency-Key made to name one request: the generated key and a digest of
    the rest. Hypothesis draws the same few keys ("0", "00") for requests that differ, whose
    422 (a key reused for another request) is the contract, not a valid request refused;
    the same key with the same request still replays. Malformed keys are left as drawn."""
    headers: dict[str, Any] = case.headers or {}
    key = headers.get("Idempotency-Key")
    positive = case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE
    if isinstance(key, str) and positive and re.fullmatch(PATTERN, key):
        request = repr((key, case.method, case.path_parameters, case.query, case.body))
        headers["Idempotency-Key"] = "fuzz-" + hashlib.sha256(request.encode()).hexdigest()
    return case
