"""Firebase ID-token verification through firebase-admin.

`authenticate(header)` checks the token alone (signature, expiry, project) and costs no round
trip once Google's certificates are cached. The money-moving functions call
`authenticate(header, check_revoked=True)`: it also rejects a disabled or deleted account and a
token issued before the account's sessions were revoked, which needs the account's state from
Firebase Auth. That state is cached per instance for AUTH_STATE_CACHE_S seconds (`AccountStates`):
a revocation or a disabling reaches a warm instance at most that long after it was made.

With FIREBASE_AUTH_EMULATOR_HOST set, firebase-admin accepts the emulator's unsigned tokens and
checks no expiry; `config.refuse_unsafe_environment` allows that switch for demo- projects only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from functions.lib import ids
from functions.lib.config import get_settings
from functions.lib.errors import AppCheckInvalid, AppCheckRequired, Unauthenticated, Unavailable
from functions.lib.once import once

log = logging.getLogger(__name__)
ACCOUNT_LOOKUP_TIMEOUT_S = 10.0
# Accounts whose state one instance remembers; the least recently used go first.
MAX_CACHED_ACCOUNTS = 10_000


APP_NAME = "credits-backbone"


@once
def _app() -> Any:
    """This process's firebase-admin app, initialized by one caller while racing first calls wait."""
    import firebase_admin

    try:
        return firebase_admin.get_app(APP_NAME)
    except ValueError:
        pass
    settings = get_settings()
    # A short HTTP timeout: an account lookup that hangs must become a 503, not hold the request.
    options = {"projectId": settings.project, "httpTimeout": ACCOUNT_LOOKUP_TIMEOUT_S}
    credential = None
    if settings.auth_emulator_host:
        from firebase_admin import credentials
        from google.auth.credentials import AnonymousCredentials

        class _Anonymous(credentials.Base):  # type: ignore[misc]
            def get_credential(self) -> AnonymousCredentials:
                return AnonymousCredentials()

        credential = _Anonymous()
    try:
        return firebase_admin.initialize_app(credential, options, name=APP_NAME)
    except ValueError:
        # Initialized meanwhile outside `_app` (firebase-admin's registry is global): use that one.
        return firebase_admin.get_app(APP_NAME)


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


def verify_id_token(token: str) -> dict[str, Any]:
    """The claims of a valid Firebase ID token whose uid can name a document; Unauthenticated otherwise."""
    from firebase_admin import auth

    app = _app()  # outside the try: a failure to set the app up is ours (5xx), never a bad token
    try:
        claims = auth.verify_id_token(token, app=app)
    except auth.CertificateFetchError as exc:
        log.warning("could not fetch Firebase token certificates: %s", type(exc).__name__)
        raise Unavailable("Could not verify the ID token right now; retry shortly.") from exc
    except (
        ValueError,
        auth.InvalidIdTokenError,
        auth.ExpiredIdTokenError,
        auth.RevokedIdTokenError,
        auth.UserDisabledError,
    ):
        raise Unauthenticated("The ID token is invalid or expired.") from None
    uid = claims.get("uid") or claims.get("sub")
    if not ids.is_doc_id(uid):
        # A custom token can carry any uid; one with '/' would address another document.
        raise Unauthenticated("The ID token carries no usable user id.")
    return {**claims, "uid": uid}


@dataclass(frozen=True)
class AccountState:
    """What revocation needs of a Firebase Auth account (`exists` False once it is deleted)."""

    exists: bool
    disabled: bool = False
    valid_after_ms: int = 0  # tokens issued before this instant were revoked (revoke_refresh_tokens)


def lookup_account(uid: str) -> AccountState:
    """The account's state from Firebase Auth (one accounts:lookup call); Unavailable if it cannot answer."""
    import firebase_admin.exceptions
    from firebase_admin import auth

    try:
        user = auth.get_user(uid, app=_app())
    except auth.UserNotFoundError:
        return AccountState(exists=False)
    except (firebase_admin.exceptions.FirebaseError, OSError) as exc:
        log.warning("could not look up the Firebase Auth account: %s", type(exc).__name__)
        raise Unavailable("Could not check the account right now; retry shortly.") from exc
    return AccountState(
        exists=True, disabled=bool(user.disabled), valid_after_ms=int(user.tokens_valid_after_timestamp or 0)
    )


class AccountStates:
    """A per-instance cache of account states, each kept `ttl_s` seconds (0: look up every time).

    Thread-safe; functions serve several requests at once. Two requests for one uncached account
    may both look it up, which is harmless. A lookup that started before `forget(uid)` (an erasure
    on this instance deleting the account meanwhile) is not cached: it may have read the account
    as it was.
    """

    def __init__(
        self, lookup: Callable[[str], AccountState], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lookup = lookup
        self.clock = clock
        self._states: OrderedDict[str, tuple[float, AccountState]] = OrderedDict()
        self._forgotten: OrderedDict[str, float] = OrderedDict()  # uid -> when, for lookups under way
        self._lock = threading.Lock()

    def get(self, uid: str, ttl_s: float) -> AccountState:
        now = self.clock()
        if ttl_s > 0:
            with self._lock:
                cached = self._states.get(uid)
                if cached and now - cached[0] < ttl_s:
                    self._states.move_to_end(uid)
                    return cached[1]
        state = self.lookup(uid)
        if ttl_s > 0:
            with self._lock:
                if self._forgotten.get(uid, now - 1) >= now:
                    return state
                self._states[uid] = (now, state)
                self._states.move_to_end(uid)
                while len(self._states) > MAX_CACHED_ACCOUNTS:
                    self._states.popitem(last=False)
        return state

    def forget(self, uid: str) -> None:
        """Drop one account's cached state (after deleting or disabling it from this instance)."""
        with self._lock:
            self._states.pop(uid, None)
            self._forgotten[uid] = self.clock()
            self._forgotten.move_to_end(uid)
            while len(self._forgotten) > MAX_CACHED_ACCOUNTS:
                self._forgotten.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._forgotten.clear()


account_states = AccountStates(lookup_account)


def require_active(uid: str, issued_at_s: Any, state: AccountState) -> None:
    """Unauthenticated unless the account exists, is enabled, and the token postdates any revocation."""
    if not state.exists:
        raise Unauthenticated("This account no longer exists.")
    if state.disabled:
        raise Unauthenticated("This account is disabled.")
    # Firebase compares whole seconds: a token issued in the second of a revocation stays valid.
    if not isinstance(issued_at_s, int | float) or issued_at_s * 1000 < state.valid_after_ms:
        raise Unauthenticated("This session was revoked; sign in again.")


def authenticate(authorization: str | None, *, check_revoked: bool = False) -> str:
    """The caller's uid from the Authorization header.

    With `check_revoked` (generate, checkout, account DELETE: anything that moves money or
    erases), a disabled or deleted account and a token issued before a revocation are 401 too.
    """
    claims = verify_id_token(bearer_token(authorization))
    uid: str = claims["uid"]
    if check_revoked:
        require_active(uid, claims.get("iat"), account_states.get(uid, get_settings().auth_state_cache_s))
    return uid


# An irreversible action (erasing the account) wants a sign-in from the last few minutes, as
# Firebase's own sensitive operations do: a token lifted from a device hours ago is not enough.
RECENT_SIGN_IN_S = 300


def authenticate_recent_sign_in(authorization: str | None, *, within_s: int | None = None) -> str:
    """The caller's uid, for an irreversible action: `authenticate(check_revoked=True)` with the
    account's state looked up now rather than cached, and a sign-in at most `within_s` (default
    RECENT_SIGN_IN_S) old; 401 with `reason: stale_sign_in` asks the client to sign in again."""
    limit = RECENT_SIGN_IN_S if within_s is None else within_s
    claims = verify_id_token(bearer_token(authorization))
    uid: str = claims["uid"]
    require_active(uid, claims.get("iat"), account_states.get(uid, 0))
    signed_in = claims.get("auth_time")
    if not isinstance(signed_in, int | float) or time.time() - signed_in > limit:
        raise Unauthenticated(
            f"This action needs a sign-in from the last {max(limit, 60) // 60} minutes; sign in again.",
            reason="stale_sign_in",
        )
    return uid


def delete_login(uid: str) -> bool:
    """Delete the user's Firebase Auth account (their sign-in); False when it was already gone.

    This instance forgets the account's cached state, so the old token is refused here at once.
    """
    import firebase_admin.exceptions
    from firebase_admin import auth

    try:
        auth.delete_user(uid, app=_app())
    except auth.UserNotFoundError:
        return False
    except (firebase_admin.exceptions.FirebaseError, OSError) as exc:
        log.warning("could not delete the Firebase Auth account: %s", type(exc).__name__)
        raise Unavailable("Could not delete the sign-in account right now; retry shortly.") from exc
    finally:
        account_states.forget(uid)
    return True


def verify_app_check(token: str | None) -> dict[str, Any]:
    """The claims of a valid Firebase App Check token (header X-Firebase-AppCheck), checked against
    Firebase's published keys (firebase_admin caches them for 6 hours): 401 when there is none,
    403 when it is not valid for this project, 503 when the keys cannot be fetched."""
    if not token or not token.strip():
        raise AppCheckRequired()
    import jwt
    from firebase_admin import app_check

    try:
        claims: dict[str, Any] = app_check.verify_token(token.strip(), app=_app())
    except jwt.PyJWKClientConnectionError as exc:
        log.warning("App Check keys could not be fetched: %s", type(exc).__name__)
        raise Unavailable() from exc
    except (ValueError, jwt.PyJWTError):
        raise AppCheckInvalid() from None
    return claims
