"""Firebase ID-token verification through firebase-admin.

With FIREBASE_AUTH_EMULATOR_HOST set, firebase-admin accepts the emulator's unsigned tokens and
checks no expiry; `config.refuse_unsafe_environment` keeps that switch out of deployed functions.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from functions.lib import ids
from functions.lib.config import get_settings
from functions.lib.errors import Unauthenticated, Unavailable

log = logging.getLogger(__name__)


@functools.cache
def _app() -> Any:
    import firebase_admin

    settings = get_settings()
    options = {"projectId": settings.project}
    try:
        return firebase_admin.get_app("credits-backbone")
    except ValueError:
        pass
    if settings.auth_emulator_host:
        from firebase_admin import credentials
        from google.auth.credentials import AnonymousCredentials

        class _Anonymous(credentials.Base):  # type: ignore[misc]
            def get_credential(self) -> AnonymousCredentials:
                return AnonymousCredentials()

        return firebase_admin.initialize_app(_Anonymous(), options, name="credits-backbone")
    return firebase_admin.initialize_app(options=options, name="credits-backbone")


def firebase_app() -> Any:
    """This process's firebase-admin app (token checks, and the task queue of the sweep's fan-out)."""
    return _app()


def bearer_token(authorization: str | None) -> str:
    """The token from an `Authorization: Bearer <token>` header, or Unauthenticated."""
    if not authorization:
        raise Unauthenticated("Missing Authorization header; send 'Bearer <Firebase ID token>'.")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthenticated("Malformed Authorization header; send 'Bearer <Firebase ID token>'.")
    return token


def verify_id_token(token: str) -> str:
    """The uid of a valid Firebase ID token; Unauthenticated for any invalid token."""
    from firebase_admin import auth

    try:
        claims = auth.verify_id_token(token, app=_app())
    except auth.CertificateFetchError as exc:
        log.warning("could not fetch Firebase token certificates: %s", type(exc).__name__)
        raise Unavailable("Could not verify the ID token right now; retry shortly.") from exc
    except (ValueError, auth.InvalidIdTokenError, auth.ExpiredIdTokenError, auth.RevokedIdTokenError, auth.UserDisabledError):
        raise Unauthenticated("The ID token is invalid or expired.") from None
    uid = claims.get("uid") or claims.get("sub")
    if not ids.is_doc_id(uid):
        # A custom token can carry any uid; one with '/' would address another document.
        raise Unauthenticated("The ID token carries no usable user id.")
    return uid


def authenticate(authorization: str | None) -> str:
    """The caller's uid from the Authorization header."""
    return verify_id_token(bearer_token(authorization))
