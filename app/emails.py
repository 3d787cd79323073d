"""The one canonical form of an e-mail address: what makes two spellings one account."""

__all__ = ["canonical_email"]


def canonical_email(email: str) -> str:
    """``" Alice@Example.COM "`` -> ``"alice@example.com"``: trimmed, lower-cased. Sign-up,
    login, e-mail changes, the login throttle and the unique index all compare this."""
    return email.strip().lower()
