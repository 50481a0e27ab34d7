"""The credits ledger: the one module that writes balances, grants and ledger entries.

Every movement is a `credit_transactions/{id}` entry with a deterministic id and the balance change
it causes, written in one atomic commit: `create` on the entry id (fails if it exists, so a repeat
can never write twice) plus the user's new balance and live grants (`lib/wallet.py` holds their
rules) under a precondition on the user document as read. A `Book` stages those writes in a
caller's batch so that a domain step (a charge with its generation record, a refund with its status
change) commits as one unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from functions.lib import clock, db, ids
from functions.lib.config import Settings
from functions.lib.errors import IdempotencyKeyReused, InsufficientCredits, InvalidRequest, NotFound
from functions.lib.schema import LEDGER, USERS
from functions.lib.wallet import (
    CATEGORIES,
    DEFAULT_PRIORITY,
    LEGACY_PREFIX,
    MAX_PRIORITY,
    MIN_PRIORITY,
    PROMOTIONAL,
    Grant,
    Short,
    Wallet,
)

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentSnapshot, WriteBatch

HISTORY_LIMIT = 50
MAX_GRANT = 1_000_000  # credits one operator grant may add (a typo of many digits is refused)
MAX_EXPIRY_DAYS = 3660  # ten years: a longer lifetime is a typo, or "never"

PURCHASE, CHARGE, REFUND, GRANT = "purchase", "charge", "refund", "grant"
REVERSAL, REINSTATEMENT = "reversal", "reinstatement"
PERIOD, ROLLOVER, EXPIRY, VOID = "period", "rollover", "expiry", "void"
# The closing entry of an erased account: it takes the remaining balance (either sign) to zero.
FORFEIT = "forfeit"
ERASED_PREFIX = "erased_"
# Operator and sign-up grants are `grant_{id}`; a new account's sign-up grant has this id.
SIGNUP_PREFIX = "signup_"


def entry_id(kind: str, ref: str) -> str:
    """Deterministic ledger ids: purchase_{session}, charge_{gen}, refund_{gen}, reversal_{refund or dispute},
    reinstatement_{refund or dispute}, grant_{id}, void_{grant}, expiry_{grant} (its expiry) or
    expiry_{grant}_{entry} (credits that entry returned to an ended grant), forfeit_{pseudonym}
    (docs/ARCHITECTURE.md, "Data model")."""
    return f"{kind}_{ref}"


def new_user_fields() -> dict[str, Any]:
    """The money fields of a user document created outside the ledger (e.g. on accepting terms):
    no grants and no debt, which sum to the empty ledger's zero."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    return {**Wallet().fields(), "createdAt": SERVER_TIMESTAMP}


def balance_of(user: DocumentSnapshot) -> int:
    """Credits on a user snapshot; a user with no document (or no entry yet) has 0."""
    if not user.exists:
        return 0
    value = user.get("credits") if "credits" in (user.to_dict() or {}) else 0
    return int(value or 0)


def wallet_of(user: DocumentSnapshot) -> Wallet:
    return Wallet.of(user.reference.id, user.to_dict() if user.exists else None)


class Book:
    """One commit's ledger entries for one user, and the user document they change.

    Opening a book writes off every grant past its expiry (`expiry_{grantId}`), so each commit that
    touches a user's money also enforces expiry: a charge can never draw from an expired grant. Each
    movement stages its entry (`create`: a repeat of the id fails the commit) with the balance after
    it; `close` stages the user document under a precondition on the version read (or creates it).
    """

    def __init__(self, client: Client, batch: WriteBatch, user: DocumentSnapshot, now: datetime) -> None:
        self.client, self.batch, self.user, self.now = client, batch, user, now
        self.uid = user.reference.id
        self.wallet = wallet_of(user)
        self.balance = self.wallet.credits
        self._seq = 0
        for grant in self.wallet.expire(now):
            self._entry(EXPIRY, grant.id, -grant.remaining, grant_id=grant.id, metadata={"reason": "expired"})

    def _entry(
        self,
        kind: str,
        ref: str,
        amount: int,
        *,
        grant_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        terms: dict[str, Any] | None = None,
    ) -> str:
        from google.cloud.firestore import SERVER_TIMESTAMP

        self.balance += amount
        ident = entry_id(kind, ref)
        fields = {
            "userId": self.uid,
            "type": kind,
            "grantId": grant_id,
            "amount": amount,
            "balanceAfter": self.balance,
            "metadata": {k: v for k, v in (metadata or {}).items() if v is not None},
            "createdAt": SERVER_TIMESTAMP,
            # Entries of one commit share its timestamp: `seq` keeps their order for statements.
            "seq": self._seq,
        }
        if terms is not None:
            fields["grant"] = terms
        self.batch.create(self.client.collection(LEDGER).document(ident), fields)
        self._seq += 1
        return ident

    def _write_off(self, grant_id: str, credits: int, cause: str) -> None:
        """Credits returned to a grant that has ended are written off at once, under the cause's name."""
        if credits:
            self._entry(
                EXPIRY, f"{grant_id}_{cause}", -credits, grant_id=grant_id, metadata={"reason": cause}
            )

    def add_grant(self, kind: str, ref: str, grant: Grant, metadata: dict[str, Any] | None = None) -> None:
        """A grant arrives (purchase, operator or sign-up grant, period): its id is its entry's id.
        It repays debt first (`repaidDebt`); past the live-grant bound it is folded (`foldedInto`)."""
        debt_before = self.wallet.debt
        folded_into = self.wallet.add(grant)
        meta = {
            **(metadata or {}),
            "repaidDebt": (self.wallet.debt - debt_before) or None,
            "foldedInto": folded_into,
        }
        self._entry(kind, ref, grant.amount, grant_id=grant.id, metadata=meta, terms=grant.terms())

    def charge(self, ref: str, cost: int, metadata: dict[str, Any]) -> dict[str, int]:
        """Draw `cost` in spend order; InsufficientCredits (with the balance a charge could spend
        now, after expiry) when short. Returns the draws {grantId: credits}."""
        try:
            draws = self.wallet.draw(cost, self.now)
        except Short as short:
            raise InsufficientCredits(
                balance=short.balance, required=cost, shortfall=cost - short.balance
            ) from None
        self._entry(CHARGE, ref, -cost, metadata={**metadata, "draws": draws})
        return draws

    def refund(
        self, ref: str, draws: dict[str, int], grants: dict[str, tuple[Grant, bool]], metadata: dict[str, Any]
    ) -> None:
        """Give a charge's draws back to the same grants (`grants`: each drawn grant and whether it
        ended); what goes back to an expired or ended grant is written off at once."""
        returned = {
            gid: self.wallet.give_back(grants[gid][0], n, self.now, ended=grants[gid][1])
            for gid, n in draws.items()
        }
        self._entry(REFUND, ref, sum(draws.values()), metadata={**metadata, "draws": draws})
        for gid, back in returned.items():
            self._write_off(gid, back.written_off, entry_id(REFUND, ref))

    def reverse(self, ref: str, grant_id: str, credits: int, metadata: dict[str, Any]) -> None:
        """Take a reversal's share from its own grant; what the grant no longer holds becomes debt."""
        taken = self.wallet.take(grant_id, credits)
        meta = {**metadata, "fromGrant": taken.from_grant, "toDebt": taken.to_debt}
        self._entry(REVERSAL, ref, -credits, grant_id=grant_id, metadata=meta)

    def reinstate(self, ref: str, grant: Grant, ended: bool, credits: int, metadata: dict[str, Any]) -> None:
        """Give a reversal back: debt first, the rest to its grant (written off at once if it ended)."""
        back = self.wallet.reinstate(grant, credits, self.now, ended=ended)
        meta = {**metadata, "repaidDebt": back.repaid or None}
        self._entry(REINSTATEMENT, ref, credits, grant_id=grant.id, metadata=meta)
        self._write_off(grant.id, back.written_off, entry_id(REINSTATEMENT, ref))

    def void(self, grant_id: str, reason: str) -> int:
        """Write off what a grant still holds (0 when nothing is left: the entry still marks it ended)."""
        return self._end(VOID, grant_id, reason)

    def end_grant(self, grant_id: str, reason: str) -> int:
        """Write a live grant off now (`expiry_{grantId}`: its one expiry, come early), e.g. a period
        grant its next period replaces; the grant stays ended for later refunds (`ended_grants`)."""
        return self._end(EXPIRY, grant_id, reason)

    def _end(self, kind: str, grant_id: str, reason: str) -> int:
        credits = self.wallet.void(grant_id)
        self._entry(kind, grant_id, -credits, grant_id=grant_id, metadata={"reason": reason})
        return credits

    def forfeit(self, ref: str, reason: str) -> int:
        """Erasure: every grant and the debt written off; the (signed) credits moved."""
        moved = self.wallet.close()
        self._entry(FORFEIT, ref, moved, metadata={"reason": reason})
        return moved

    def close(self, also: dict[str, Any] | None = None) -> int:
        """Stage the user document with the wallet (and the fields in `also`, e.g. consent); the
        balance after this commit."""
        from google.cloud.firestore import SERVER_TIMESTAMP

        fields = {**self.wallet.fields(), **(also or {})}
        if self.wallet.credits != self.balance:  # the entries and the grants must tell one story
            raise AssertionError(f"ledger {self.balance} != grants {fields['credits']} for {self.uid}")
        if self.user.exists:
            self.batch.update(self.user.reference, fields, option=db.precondition(self.client, self.user))
        else:
            self.batch.create(self.user.reference, {**fields, "createdAt": SERVER_TIMESTAMP})
        return self.balance

    @property
    def touched(self) -> bool:
        """Whether this book wrote anything (an expiry) or must write the user (a legacy balance)."""
        return self._seq > 0 or (self.user.exists and "grants" not in (self.user.to_dict() or {}))


def ended_grants(
    client: Client, uid: str, grant_ids: list[str], wallet: Wallet
) -> dict[str, tuple[Grant, bool]]:
    """Each grant by id as a refund or reinstatement must treat it: the live one, or its terms from
    the entry that created it (with remaining 0), and whether it was voided or written off.

    One read of the creating, `void_` and `expiry_` entries, only for grants that are not live: a
    grant written off early (a subscription's period grant when the next period or the cancellation
    ends it) stays ended although its own expiry has not come.
    """
    found: dict[str, tuple[Grant, bool]] = {}
    missing = []
    for gid in grant_ids:
        live = wallet.find(gid)
        if live is not None:
            found[gid] = (live, False)
        else:
            missing.append(gid)
    if missing:
        ledger = client.collection(LEDGER)
        refs = [
            ref
            for gid in missing
            for ref in (
                ledger.document(gid),
                ledger.document(entry_id(VOID, gid)),
                ledger.document(entry_id(EXPIRY, gid)),
            )
        ]
        snaps = db.get_all(client, refs)
        for i, gid in enumerate(missing):
            created, voided, expired = snaps[3 * i], snaps[3 * i + 1], snaps[3 * i + 2]
            data = (created.to_dict() or {}) if created.exists and created.get("userId") == uid else {}
            terms = data.get("grant")
            found[gid] = (
                Grant.of(terms if isinstance(terms, dict) else {}, id=gid, remaining=0),
                voided.exists or expired.exists,
            )
    return found


@dataclass(frozen=True)
class Posted:
    """The outcome of a ledger operation: whether this call wrote it, and the balance after."""

    entry_id: str
    applied: bool
    balance: int
    amount: int


def _once(client: Client, uid: str, ident: str, write: Callable[[Book], int]) -> Posted:
    """Write the entry `ident` (by `write(book)`, which returns its amount) exactly once: a repeat
    changes nothing and says so."""
    entry_ref = client.collection(LEDGER).document(ident)
    user_ref = client.collection(USERS).document(uid)

    def plan() -> db.Plan[Posted]:
        user, existing = db.get_all(client, [user_ref, entry_ref])
        if existing.exists:
            if existing.get("userId") != uid:
                # Ids are global: the same id for another user is a mistake, not a repeat.
                raise IdempotencyKeyReused(f"{ident} already exists for another user; use a new id.")
            return db.Plan(Posted(ident, False, balance_of(user), int(existing.get("amount"))))
        batch = client.batch()
        book = Book(client, batch, user, clock.now())
        amount = write(book)
        return db.Plan(Posted(ident, True, book.close(), amount), batch)

    return db.commit_optimistically(plan)


def grant(
    client: Client,
    uid: str,
    grant_id: str,
    amount: int,
    reason: str,
    *,
    category: str = PROMOTIONAL,
    priority: int = DEFAULT_PRIORITY,
    expires_in_days: float | None = None,
    source: str = "operator",
) -> Posted:
    """An operator grant (support credit, promotion), idempotent by `grant_id`: the grant
    `grant_{grant_id}`, promotional and never expiring unless told otherwise."""
    ids.require_doc_id(uid, "user")
    ids.require_doc_id(grant_id, "id")
    if not 0 < amount <= MAX_GRANT:
        raise InvalidRequest(f"A grant must add a positive number of credits, at most {MAX_GRANT:,}.")
    if not reason.strip():
        raise InvalidRequest("A grant needs a reason.")
    require_terms(category, priority, expires_in_days)
    ident = entry_id(GRANT, grant_id)

    def write(book: Book) -> int:
        expires = book.now + timedelta(days=expires_in_days) if expires_in_days is not None else None
        terms = Grant(ident, amount, amount, category, priority, source, book.now, expires)
        book.add_grant(GRANT, grant_id, terms, {"reason": reason})
        return amount

    return _once(client, uid, ident, write)


def charge(client: Client, uid: str, ref: str, cost: int, metadata: dict[str, Any] | None = None) -> Posted:
    """Spend `cost` credits outside a generation (`charge_{ref}`, once), drawn in spend order;
    InsufficientCredits when short. Generations charge through `generations.charge`."""
    ids.require_doc_id(ref, "charge id")
    if cost <= 0:
        raise InvalidRequest("A charge must take a positive number of credits.")

    def write(book: Book) -> int:
        book.charge(ref, cost, metadata or {})
        return -cost

    return _once(client, uid, entry_id(CHARGE, ref), write)


def signup_grant(book: Book, settings: Settings) -> None:
    """Stage a new account's sign-up credits (`grant_signup_{uid}`: promotional, expiring after
    SIGNUP_CREDITS_EXPIRE_DAYS). The caller makes sure it is the account's first and it qualifies."""
    ident = entry_id(GRANT, SIGNUP_PREFIX + book.uid)
    expires = book.now + timedelta(days=settings.signup_credits_expire_days)
    credits = settings.signup_credits
    grant = Grant(ident, credits, credits, PROMOTIONAL, DEFAULT_PRIORITY, "signup", book.now, expires)
    book.add_grant(GRANT, SIGNUP_PREFIX + book.uid, grant, {"reason": "sign-up credits"})


def require_terms(category: str, priority: int, expires_in_days: float | None) -> None:
    """InvalidRequest naming what is wrong with a grant's terms."""
    if category not in CATEGORIES:
        raise InvalidRequest(f"A grant's category must be one of {', '.join(CATEGORIES)}, not {category!r}.")
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise InvalidRequest(
            f"A grant's priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}."
        )
    if expires_in_days is not None and not (0 < expires_in_days <= MAX_EXPIRY_DAYS):
        raise InvalidRequest(
            f"A grant must expire in the future, at most {MAX_EXPIRY_DAYS} days from now (or never)."
        )


def void(client: Client, uid: str, grant_id: str, reason: str) -> Posted:
    """Write off what a grant still holds (`void_{grantId}`), once; the grant stays ended, so credits a
    later refund returns to it are written off too. NotFound for a grant this user never had."""
    ids.require_doc_id(uid, "user")
    ids.require_doc_id(grant_id, "grant id")
    if not reason.strip():
        raise InvalidRequest("A void needs a reason.")
    created = client.collection(LEDGER).document(grant_id).get(**db.rpc())
    legacy = grant_id == LEGACY_PREFIX + uid
    if not legacy and (
        not created.exists or created.get("userId") != uid or "grant" not in (created.to_dict() or {})
    ):
        raise NotFound(f"No grant {grant_id} for user {uid}.")
    return _once(client, uid, entry_id(VOID, grant_id), lambda book: -book.void(grant_id, reason))


def settle_expiries(client: Client, uid: str) -> int:
    """Write off this user's expired grants now (`expiry_{grantId}`, each once); the credits written off."""
    user_ref = client.collection(USERS).document(uid)

    def plan() -> db.Plan[int]:
        user = user_ref.get(**db.rpc())
        if not user.exists:
            return db.Plan(0)
        batch = client.batch()
        book = Book(client, batch, user, clock.now())
        if not book.touched:
            return db.Plan(0)
        before = balance_of(user)
        return db.Plan(before - book.close(), batch)

    return db.commit_optimistically(plan)


def expiring_users(client: Client, before: datetime) -> Any:
    """Users holding a grant that expires before `before`, soonest first (single-field index on
    `nextExpiryAt`): the settlement job's work list."""
    return (
        client.collection(USERS)
        .where(filter=db.where("nextExpiryAt", "<=", before))
        .order_by("nextExpiryAt")
        .select(["nextExpiryAt"])
    )


def close_account(client: Client, uid: str, pseudonym: str, reason: str) -> Posted | None:
    """Take an erased account's balance (either sign) to zero with a closing `forfeit` entry, once:
    every grant and the debt are written off.

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
        wallet = wallet_of(user)
        if first.exists:
            if wallet.credits == 0 and not wallet.grants:
                return db.Plan(None)
            ref = f"{pseudonym}_{user.update_time.strftime('%Y%m%dT%H%M%S%fZ')}"
        elif wallet.credits == 0 and not wallet.grants and not list(some_entry.stream(**db.rpc())):
            return db.Plan(None)
        else:
            ref = pseudonym
        batch = client.batch()
        # No expiry first: the forfeit closes whatever is there, expired or not, in one entry.
        book = Book(client, batch, user, datetime.min.replace(tzinfo=UTC))
        moved = book.forfeit(ref, reason)
        return db.Plan(Posted(entry_id(FORFEIT, ref), True, book.close(), moved), batch)

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
    grants: list[dict[str, Any]]
    debt: int


def statement(client: Client, uid: str, limit: int = HISTORY_LIMIT) -> Statement:
    """The balance, live grants, debt and the latest entries, newest first (index: userId asc,
    createdAt desc; entries of one commit in reverse `seq`).

    All are read as of one moment, the user read's: an entry committed in between would otherwise
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
    page = [
        (snap.to_dict() or {}) | {"id": snap.id}
        for snap in query.stream(read_time=user.read_time, **db.rpc())
    ]
    page.sort(
        key=lambda e: (e.get("createdAt") or datetime.min.replace(tzinfo=UTC), e.get("seq") or 0),
        reverse=True,
    )
    wallet = wallet_of(user)
    grants = [public_grant(g) for g in wallet.fields()["grants"]]
    return Statement(wallet.credits, [_public_entry(e) for e in page], grants, wallet.debt)


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def public_grant(fields: dict[str, Any]) -> dict[str, Any]:
    """A live grant as clients see it (`credits` GET, the export)."""
    return {**fields, "createdAt": _iso(fields.get("createdAt")), "expiresAt": _iso(fields.get("expiresAt"))}


def _public_entry(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": data["id"],
        "type": data.get("type"),
        "amount": data.get("amount"),
        "grantId": data.get("grantId"),
        "balanceAfter": data.get("balanceAfter"),
        "metadata": data.get("metadata", {}),
        "createdAt": _iso(data.get("createdAt")),
    }
