"""The one rule for ids that become (part of) a Firestore document id.

Firestore refuses an id that is empty, contains `/`, is `.` or `..`, matches `__.*__`, or
exceeds 1,500 bytes; a string with a lone surrogate (JSON allows `"\\ud800"`) cannot be encoded
at all. Every id that comes from outside (a request body, a header, a token's uid, a Stripe
event) goes through `is_doc_id` or `require_doc_id` before it names a document.

The cap is 500 UTF-8 bytes, not Firestore's 1,500: ids are composed with a prefix
(`purchase_{sessionId}`) and a short cap keeps every composition storable. Real ids are far
shorter (Firebase uids <= 128 characters, Stripe ids <= 255).
"""

from __future__ import annotations

from typing import Any, TypeGuard

from functions.lib.errors import InvalidRequest

MAX_ID_BYTES = 500


def is_doc_id(value: Any, *, max_bytes: int = MAX_ID_BYTES) -> TypeGuard[str]:
    """True when `value` is a str Firestore can store as one document id."""
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        return False
    if len(value) >= 4 and value.startswith("__") and value.endswith("__"):
        return False
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return size <= max_bytes


def rule(field: str, *, max_bytes: int = MAX_ID_BYTES) -> str:
    """The rule, as the sentence that refuses a `field` breaking it."""
    return (
        f"'{field}' must be an id of 1..{max_bytes} bytes without '/', not '.' or '..' "
        "and not of the form __x__."
    )


def require_doc_id(value: Any, field: str, *, max_bytes: int = MAX_ID_BYTES) -> str:
    """`value` if it is a storable document id, else InvalidRequest (400) naming `field`."""
    if not is_doc_id(value, max_bytes=max_bytes):
        raise InvalidRequest(rule(field, max_bytes=max_bytes), field=field)
    return value
