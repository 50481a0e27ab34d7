"""The credits ledger: the one module that writes balances and ledger entries.

Every movement is a `credit_transactions/{id}` entry with a deterministic id and the balance change
it causes, written in one atomic commit: `create` on the entry id (fails if it exists, so a repeat
can never write twice) plus the user's new balance under a precondition on the user document as
read. `stage_entry` adds those writes to a caller's batch so that a domain step (a charge with its
generation record, a refund with its status change) commits as one unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from functions.lib import db, ids
from functions.lib.errors import IdempotencyKeyReused, InsufficientCredits, InvalidRequest
from functions.lib.schema import LEDGER, USERS

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentSnapshot, WriteBatch

HISTORY_LIMIT = 50
MAX_GRANT = 1_000_000  # credits one operator grant may add (a typo of many digits is refused)

PURCHASE, CHARGE, REFUND, GRANT = "purchase", "charge", "refund", "grant"
REVERSAL, REINSTATEMENT = "reversal", "reinstatement"
# Only a reversal may drive a balance below zero: a refund or dispute takes back exactly the
# purchase's share even when the buyer already spent it (docs/ARCHITECTURE.md, "Money").
MAY_GO_NEGATIVE = frozenset({REVERSAL})
# The closing entry of an erased account: it takes the remaining balance (either sign) to zero.
FORFEIT = "forfeit"
ERASED_PREFIX = "erased_"


def entry_id(kind: str, ref: str) -> str:
    """Deterministic ledger ids: purchase_{session}, charge_{gen}, refund_{gen}, reversal_{refund or dispute},
    reinstatement_{refund or dispute}, grant_{id}, forfeit_{pseudonym}
    (docs/ARCHITECTURE.md, "Data model")."""
    return f"{kind}_{ref}"


def new_user_fields() -> dict[str, Any]:
    """The money fields of a user document created outside the ledger (e.g. on accepting terms):
    a zero balance, which equals the sum of an empty ledger."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    return {"credits": 0, "createdAt": SERVER_TIMESTAMP}


def balance_of(user: DocumentSnapshot) -> int:
    """Credits on a user snapshot; a user with no document (or no entry yet) has 0."""
    if not user.exists:
        return 0
    value = user.get("credits") if "credits" in (user.to_dict() or {}) else 0
    return int(value or 0)


def stage_entry(
    client: Client,
    batch: WriteBatch,
    user: DocumentSnapshot,
    *,
    type: str,
    ref: str,
    amount: int,
    metadata: dict[str, Any] | None = None,
    user_fields: dict[str, Any] | None = None,
) -> int:
    """Stage a ledger entry and the balance it causes in `batch`; return the new balance.

    `user_fields` are written to the user document in the same write (generate's limit counters,
    which must move with the charge or refund that they count).

    The user document is created when missing (first purchase), otherwise updated under a
    precondition on its update time as read. Raises InsufficientCredits when a debit would take the
    balance below zero, except for the types in MAY_GO_NEGATIVE; a credit always lands, even when the
    balance stays below zero after it.
    """
    from google.cloud.firestore import SERVER_TIMESTAMP

    before = balance_of(user)
    after = before + amount
    if amount < 0 and after < 0 and type not in MAY_GO_NEGATIVE:
        raise InsufficientCredits(balance=before, required=-amount, shortfall=-after)
    batch.create(
        client.collection(LEDGER).document(entry_id(type, ref)),
        {
            "userId": user.reference.id,
            "type": type,
            "amount": amount,
            "balanceAfter": after,
            "metadata": {k: v for k, v in (metadata or {}).items() if v is not None},
            "createdAt": SERVER_TIMESTAMP,
        },
    )
    fields = {**(user_fields or {}), "credits": after}
    if user.exists:
        batch.update(user.reference, fields, option=db.precondition(client, user))
    else:
        batch.create(user.reference, {**fields, "createdAt": SERVER_TIMESTAMP})
    return after


@dataclass(frozen=True)
class Posted:
    """The outcome of a ledger operation: whether this call wrote it, and the balance after."""

    entry_id: str
    applied: bool
    balance: int
    amount: int


def post(
    client: Client,
    uid: str,
    *,
    type: str,
    ref: str,
    amount: int,
    metadata: dict[str, Any] | None = None,
    also: Callable[[WriteBatch], None] | None = None,
) -> Posted:
    """Write one entry exactly once: a repeat of the same (type, ref) changes nothing and says so.

    `also` stages more writes (an analytics event) into the same commit, only when the entry is new.
    """
    if amount == 0:
        raise InvalidRequest("A ledger entry must move credits.")
    entry_ref = client.collection(LEDGER).document(entry_id(type, ref))
    user_ref = client.collection(USERS).document(uid)

    def plan() -> db.Plan[Posted]:
        user, existing = db.get_all(client, [user_ref, entry_ref])
        if existing.exists:
            if existing.get("userId") != uid:
                # Ids are global: the same id for another user is a mistake, not a repeat.
                raise IdempotencyKeyReused(f"{entry_ref.id} already exists for another user; use a new id.")
            return db.Plan(Posted(entry_ref.id, False, balance_of(user), int(existing.get("amount"))))
        batch = client.batch()
        after = stage_entry(client, batch, user, type=type, ref=ref, amount=amount, metadata=metadata)
        if also is not None:
            also(batch)
        return db.Plan(Posted(entry_ref.id, True, after, amount), batch)

    return db.commit_optimistically(plan)


def grant(client: Client, uid: str, grant_id: str, amount: int, reason: str) -> Posted:
    """An operator grant (support credit, promotion), idempotent by `grant_id`."""
    ids.require_doc_id(uid, "user")
    ids.require_doc_id(grant_id, "id")
    if not 0 < amount <= MAX_GRANT:
        raise InvalidRequest(f"A grant must add a positive number of credits, at most {MAX_GRANT:,}.")
    if not reason.strip():
        raise InvalidRequest("A grant needs a reason.")
    return post(client, uid, type=GRANT, ref=grant_id, amount=amount, metadata={"reason": reason})


def close_account(client: Client, uid: str, pseudonym: str, reason: str) -> Posted | None:
    """Take an erased account's balance (either sign) to zero with a closing `forfeit` entry, once.

    The entry is `forfeit_{pseudonym}`, written under the uid (pseudonymise then renames it with
    the rest). It is written when the user has a ledger or a balance, even for a zero amount: it
    marks the account as closed for the audit. Should the balance move again after it (a refund
    webhook racing the erasure), the next call closes that with `forfeit_{pseudonym}_{t}`, t the
    update time of the user document it zeroes, so each state is closed at most once. Returns
    None when there is nothing (left) to close.
    """
    user_ref = client.collection(USERS).document(uid)
    first_ref = client.collection(LEDGER).document(entry_id(FORFEIT, pseudonym))
    some_entry = client.collection(LEDGER).where(filter=db.where("userId", "==", uid)).limit(1).select([])

    def plan() -> db.Plan[Posted | None]:
        user, first = db.get_all(client, [user_ref, first_ref])
        balance = balance_of(user)
        if first.exists:
            if balance == 0:
                return db.Plan(None)
            ref = f"{pseudonym}_{user.update_time.strftime('%Y%m%dT%H%M%S%fZ')}"
        elif balance == 0 and not list(some_entry.stream(**db.rpc())):
            return db.Plan(None)
        else:
            ref = pseudonym
        batch = client.batch()
        after = stage_entry(
            client, batch, user, type=FORFEIT, ref=ref, amount=-balance, metadata={"reason": reason}
        )
        return db.Plan(Posted(entry_id(FORFEIT, ref), True, after, -balance), batch)

    return db.commit_optimistically(plan)


def pseudonymise(client: Client, uid: str, pseudonym: str, commit: db.Commit | None = None) -> int:
    """Replace `userId` = uid by `pseudonym` on every ledger entry, in commits of at most 500 writes.

    Amounts, types, balances after and Stripe references stay: the ledger remains the financial
    record, only without the identity. Returns the number of entries renamed by this call.
    """
    query = client.collection(LEDGER).where(filter=db.where("userId", "==", uid)).select([])
    return db.drain(client, query, lambda batch, ref: batch.update(ref, {"userId": pseudonym}), commit=commit)


@dataclass(frozen=True)
class Statement:
    balance: int
    transactions: list[dict[str, Any]]


def statement(client: Client, uid: str, limit: int = HISTORY_LIMIT) -> Statement:
    """The balance and the latest entries, newest first (index: userId asc, createdAt desc).

    Both are read as of one moment, the user read's: an entry committed in between would otherwise
    give a balance that no entry on the page ends at.
    """
    from google.cloud.firestore import Query

    user = client.collection(USERS).document(uid).get(**db.rpc())
    query = (
        client.collection(LEDGER)
        .where(filter=db.where("userId", "==", uid))
        .order_by("createdAt", direction=Query.DESCENDING)
        .limit(limit)
    )
    page = query.stream(read_time=user.read_time, **db.rpc())
    entries = [{"id": snap.id, **_public_entry(snap.to_dict() or {})} for snap in page]
    return Statement(balance_of(user), entries)


def _public_entry(data: dict[str, Any]) -> dict[str, Any]:
    created = data.get("createdAt")
    return {
        "type": data.get("type"),
        "amount": data.get("amount"),
        "balanceAfter": data.get("balanceAfter"),
        "metadata": data.get("metadata", {}),
        "createdAt": created.isoformat() if isinstance(created, datetime) else None,
    }
