"""Terms consent: `users/{uid}.consent = {version, acceptedAt}`; only the current version counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from functions.lib import clock, db, ledger
from functions.lib.config import Settings
from functions.lib.errors import ConsentRequired, InvalidRequest
from functions.lib.schema import LEDGER, USERS

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentSnapshot


@dataclass(frozen=True)
class ConsentState:
    version: str
    accepted: bool
    accepted_at: datetime | None

    def body(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "accepted": self.accepted,
            "acceptedAt": self.accepted_at.isoformat() if self.accepted_at else None,
        }


def state_of(user: DocumentSnapshot, current_version: str) -> ConsentState:
    consent = (user.to_dict() or {}).get("consent") if user.exists else None
    consent = consent if isinstance(consent, dict) else {}
    accepted = consent.get("version") == current_version
    return ConsentState(current_version, accepted, consent.get("acceptedAt") if accepted else None)


def require_current(user: DocumentSnapshot, current_version: str) -> None:
    """ConsentRequired unless the user accepted exactly the current terms version."""
    if not state_of(user, current_version).accepted:
        raise ConsentRequired(termsVersion=current_version)


def read(client: Client, uid: str, current_version: str) -> ConsentState:
    return state_of(client.collection(USERS).document(uid).get(**db.rpc()), current_version)


def accept(
    client: Client, uid: str, version: object, current_version: str, *, signup: Settings | None = None
) -> ConsentState:
    """Record acceptance of `version`, which must be the current one (400 otherwise).

    With `signup` (the settings, passed for an account that qualifies: `signup_eligible`), the
    account gets SIGNUP_CREDITS in the same commit, once per account (`grant_signup_{uid}`).
    """
    from google.cloud.firestore import SERVER_TIMESTAMP

    if version != current_version:
        raise InvalidRequest(
            f"Only the current terms version {current_version!r} can be accepted.",
            currentVersion=current_version,
        )
    user_ref = client.collection(USERS).document(uid)
    settings = signup if signup is not None and signup.signup_credits > 0 else None
    signup_ref = client.collection(LEDGER).document(ledger.entry_id(ledger.GRANT, ledger.SIGNUP_PREFIX + uid))

    def plan() -> db.Plan[None]:
        if settings is None:
            user, granted = user_ref.get(**db.rpc()), None
        else:
            user, granted = db.get_all(client, [user_ref, signup_ref])
        batch = client.batch()
        consent = {"consent": {"version": current_version, "acceptedAt": SERVER_TIMESTAMP}}
        if settings is not None and granted is not None and not granted.exists:
            book = ledger.Book(client, batch, user, clock.now())
            ledger.signup_grant(book, settings)
            book.close(also=consent)
        elif user.exists:
            batch.update(user_ref, consent, option=db.precondition(client, user))
        else:
            batch.create(user_ref, {**consent, **ledger.new_user_fields()})
        return db.Plan(None, batch)

    db.commit_optimistically(plan)
    return read(client, uid, current_version)


def signup_eligible(claims: dict[str, Any]) -> bool:
    """Sign-up credits go to an account whose email is verified, or that signed in with a provider
    other than password or anonymous (Google, Apple, ...): not to throwaway accounts."""
    firebase = claims.get("firebase")
    provider = firebase.get("sign_in_provider") if isinstance(firebase, dict) else None
    if provider == "anonymous":
        return False
    return claims.get("email_verified") is True or provider not in (None, "password")
