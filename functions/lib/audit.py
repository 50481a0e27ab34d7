"""The ledger audit: every user's `credits` must equal the sum of their ledger amounts and the sum of
their live grants' remaining plus their debt, be below zero only when a reversal took back credits
the user had already spent, and hold no grant past its expiry for longer than a settlement interval.
A balance from before grants existed (no `grants` field) reads as one legacy grant: it agrees.

Both collections are streamed in the same order (users by id, ledger entries by `userId`) and
merged like two sorted files, a page at a time: memory holds one page of each and the running sum
of one user, whatever the size of the ledger. Every page reads the database as it was at one
moment (`read_time`), so live traffic during a long audit cannot show a balance from after an entry
it did not see. Ledger entries whose user has no document are reported too, except a closed
account: an erased user's ledger, kept under a pseudonym with no user document, that holds a
closing `forfeit` entry and sums to zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from functions.lib import db, ledger, schema

if TYPE_CHECKING:
    from google.cloud.firestore import Client

PAGE = 300
MISMATCH, NEGATIVE, NO_USER = "balance_differs_from_ledger", "negative_balance", "ledger_without_user"
GRANTS_DIFFER, EXPIRY_OVERDUE = "balance_differs_from_grants", "expiry_overdue"
# The settlement job runs every 10 minutes; an expired grant still holding credits after this long
# means the write-offs are not running.
EXPIRY_GRACE = timedelta(minutes=15)


@dataclass(frozen=True)
class Difference:
    uid: str
    problem: str
    credits: int | None
    ledger_sum: int
    held: int | None = None  # live grants' remaining plus debt, for a balance that disagrees with them


@dataclass
class AuditReport:
    users: int = 0
    closed_accounts: int = 0
    entries: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.differences


@dataclass(frozen=True)
class _Sum:
    uid: str
    total: int
    entries: int
    reversed: bool  # the user has a reversal, the one way a balance may go below zero
    closed: bool = False  # a `forfeit` entry closed the account (the user was erased)


def _ledger_sums(client: Client, read_time: datetime) -> Iterator[_Sum]:
    """One `_Sum` per user, in uid order, from one paged scan."""
    query = (
        client.collection(schema.LEDGER)
        .order_by("userId")
        .order_by("__name__")
        .select(["userId", "amount", "type"])
    )
    current: _Sum | None = None
    for snap in db.pages(query, PAGE, read_time=read_time):
        uid, amount, kind = snap.get("userId"), int(snap.get("amount") or 0), snap.get("type")
        reversal, forfeit = kind == ledger.REVERSAL, kind == ledger.FORFEIT
        if current is not None and current.uid != uid:
            yield current
            current = None
        if current is None:
            current = _Sum(uid, amount, 1, reversal, forfeit)
        else:
            current = _Sum(
                uid,
                current.total + amount,
                current.entries + 1,
                current.reversed or reversal,
                current.closed or forfeit,
            )
    if current is not None:
        yield current


@dataclass(frozen=True)
class _User:
    uid: str
    credits: int
    held: int  # live grants' remaining plus debt
    overdue: bool  # a live grant past its expiry by more than EXPIRY_GRACE


def _users(client: Client, read_time: datetime) -> Iterator[_User]:
    query = client.collection(schema.USERS).order_by("__name__").select(["credits", "grants", "debt"])
    for snap in db.pages(query, PAGE, read_time=read_time):
        wallet = ledger.wallet_of(snap)
        overdue = any(g.expired(read_time - EXPIRY_GRACE) for g in wallet.grants)
        yield _User(snap.id, ledger.balance_of(snap), wallet.credits, overdue)


def audit(
    client: Client,
    progress: Callable[[AuditReport], None] | None = None,
    *,
    every: int = 1000,
    read_time: datetime | None = None,
) -> AuditReport:
    """Check every user against the ledger as of `read_time` (default: now, by the database's clock);
    `progress(report)` is called every `every` users."""
    at = read_time or db.read_time(client)
    report = AuditReport()
    sums = _ledger_sums(client, at)
    pending = next(sums, None)
    for user in _users(client, at):
        uid = user.uid
        while pending is not None and pending.uid < uid:  # ledger entries of a user with no document
            _check(report, pending.uid, None, pending)
            pending = next(sums, None)
        found = None
        if pending is not None and pending.uid == uid:
            found, pending = pending, next(sums, None)
        _check(report, uid, user.credits, found)
        if user.held != user.credits:
            report.differences.append(
                Difference(uid, GRANTS_DIFFER, user.credits, found.total if found else 0, user.held)
            )
        if user.overdue:
            report.differences.append(
                Difference(uid, EXPIRY_OVERDUE, user.credits, found.total if found else 0)
            )
        report.users += 1
        if progress is not None and report.users % every == 0:
            progress(report)
    while pending is not None:
        _check(report, pending.uid, None, pending)
        pending = next(sums, None)
    return report


def _check(report: AuditReport, uid: str, credits: int | None, found: _Sum | None) -> None:
    """Add one user's differences to `report`; `credits` None: no user document; `found` None: no entries."""
    total = found.total if found is not None else 0
    if found is not None:
        report.entries += found.entries
    if credits is None and found is not None and found.closed and total == 0:
        report.closed_accounts += 1
    elif credits is None:
        report.differences.append(Difference(uid, NO_USER, None, total))
    elif credits != total:
        report.differences.append(Difference(uid, MISMATCH, credits, total))
    if credits is not None and credits < 0 and not (found is not None and found.reversed):
        report.differences.append(Difference(uid, NEGATIVE, credits, total))
