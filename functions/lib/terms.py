"""Terms consent: `users/{uid}.consent = {version, acceptedAt}`; only the current version counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from functions.lib import db
from functions.lib.errors import ConsentRequired, InvalidRequest
from functions.lib.ledger import new_user_fields
from functions.lib.schema import USERS

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


def accept(client: Client, uid: str, version: object, current_version: str) -> ConsentState:
    """Record acceptance of `version`, which must be the current one (400 otherwise)."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    if version != current_version:
        raise InvalidRequest(
            f"Only the current terms version {current_version!r} can be accepted.",
            currentVersion=current_version,
        )
    user_ref = client.collection(USERS).document(uid)

    def plan() -> db.Plan[None]:
        user = user_ref.get(**db.rpc())
        batch = client.batch()
        consent = {"version": current_version, "acceptedAt": SERVER_TIMESTAMP}
        if user.exists:
            batch.update(user_ref, {"consent": consent}, option=db.precondition(client, user))
        else:
            batch.create(user_ref, {"consent": consent, **new_user_fields()})
        return db.Plan(None, batch)

    db.commit_optimistically(plan)
    return read(client, uid, current_version)
