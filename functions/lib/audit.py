"""The ledger audit: every user's `credits` must equal the sum of their ledger amounts and be >= 0.

Both collections are streamed in the same order (users by id, ledger entries by `userId`) and
merged like two sorted files, a page at a time: memory holds one page of each and the running sum
of one user, whatever the size of the ledger. Ledger entries whose user has no document are
reported too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from functions.lib import db, ledger

if TYPE_CHECKING:
    from google.cloud.firestore import Client

PAGE = 300
MISMATCH, NEGATIVE, NO_USER = "balance_differs_from_ledger", "negative_balance", "ledger_without_user"


@dataclass(frozen=True)
class Difference:
    uid: str
    problem: str
    credits: int | None
    ledger_sum: int


@dataclass
class AuditReport:
    users: int = 0
    entries: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.differences


def _ledger_sums(client: Client) -> Iterator[tuple[str, int, int]]:
    """(uid, sum of amounts, entry count) per user, in uid order, from one paged scan."""
    query = client.collection(ledger.LEDGER).order_by("userId").order_by("__name__").select(["userId", "amount"])
    current: str | None = None
    total = count = 0
    for snap in db.pages(query, PAGE):
        uid = snap.get("userId")
        if uid != current:
            if current is not None:
                yield current, total, count
            current, total, count = uid, 0, 0
        total += int(snap.get("amount") or 0)
        count += 1
    if current is not None:
        yield current, total, count


def _balances(client: Client) -> Iterator[tuple[str, int]]:
    query = client.collection(ledger.USERS).order_by("__name__").select(["credits"])
    for snap in db.pages(query, PAGE):
        yield snap.id, ledger.balance_of(snap)


def audit(client: Client, progress: Callable[[AuditReport], None] | None = None, *, every: int = 1000) -> AuditReport:
    """Check every user against the ledger; `progress(report)` is called every `every` users."""
    report = AuditReport()
    sums = _ledger_sums(client)
    pending = next(sums, None)

    def check(uid: str, credits: int | None, total: int) -> None:
        if credits is None:
            report.differences.append(Difference(uid, NO_USER, None, total))
        elif credits != total:
            report.differences.append(Difference(uid, MISMATCH, credits, total))
        if credits is not None and credits < 0:
            report.differences.append(Difference(uid, NEGATIVE, credits, total))

    for uid, credits in _balances(client):
        while pending is not None and pending[0] < uid:
            check(pending[0], None, pending[1])
            report.entries += pending[2]
            pending = next(sums, None)
        total = 0
        if pending is not None and pending[0] == uid:
            total = pending[1]
            report.entries += pending[2]
            pending = next(sums, None)
        check(uid, credits, total)
        report.users += 1
        if progress is not None and report.users % every == 0:
            progress(report)
    while pending is not None:
        check(pending[0], None, pending[1])
        report.entries += pending[2]
        pending = next(sums, None)
    return report


def as_rows(report: AuditReport) -> list[dict[str, Any]]:
    return [{"uid": d.uid, "problem": d.problem, "credits": d.credits, "ledgerSum": d.ledger_sum} for d in report.differences]
