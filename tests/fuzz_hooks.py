"""Schemathesis hooks for tests/test_fuzz.py: e-mails as the service defines them."""

import schemathesis
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from app.schemas import Email

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
