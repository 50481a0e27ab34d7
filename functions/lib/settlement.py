"""Crashed charges: refund `charged` generations that no live request will finish.

A process killed mid-generation (a function timeout kills without an exception) leaves its
generation `charged`. Once it is older than STALE_CHARGE_AFTER_S (at least GENERATION_TIMEOUT_S + 30,
and the deployed generate function times out before that, so a live request never looks stale) it
is refunded through `generations.refund`, exactly once (`refund_{generationId}`), by whichever comes
first (docs/ARCHITECTURE.md, "Settlement"):
- the user's next `credits` request (`settle_user`, before it answers),
- a replay of its Idempotency-Key (`generations.charge`, which then answers the refunded outcome),
- the settlement job (every 10 minutes) and the nightly sweep (`settle_stale_charges`),
- an operator (`python -m functions.admin settle`).
They race safely: the refund commits under a precondition on the generation as read, so only one of
them writes it; the others see `refunded` and change nothing.

The same passes write off expired grants (docs/ARCHITECTURE.md, "Grants"): the users whose
`nextExpiryAt` has passed each get their `expiry_{grantId}` entries in one commit, exactly once (the
ids are the grant's), so expired credits stay in a stored balance at most one settlement interval.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from functions.lib import audit, clock, db, generations, ledger, schema
from functions.lib.config import Settings
from functions.lib.errors import Contention, NotFound

if TYPE_CHECKING:
    from google.cloud.firestore import Client, Query

log = logging.getLogger("settlement")

REASON = generations.STALE_CHARGE_REASON
# A grant still listed this long after its expiry was missed by earlier passes (they run every 10
# minutes): the audit's EXPIRY_GRACE.
OVERDUE_AFTER = audit.EXPIRY_GRACE
PAGE = 100


class Event(enum.StrEnum):
    """What `progress(event, fields)` hears from a pass (`event` is the value), with its fields."""

    REFUNDED = "refunded"  # generationId, userId, amount
    GRANTS_EXPIRED = "grants_expired"  # userId, credits
    WOULD_REFUND = "would_refund"  # generationId, userId (dry run)
    WOULD_EXPIRE_GRANTS = "would_expire_grants"  # userId (dry run)


# progress(event, fields): the events are Event's values.
Progress = Callable[[str, dict[str, Any]], None]


def stale_charges(client: Client, before: datetime, uid: str | None = None) -> list[Query]:
    """Generations still `charged` that were created before `before`, oldest first (in each index
    shard); one user's when `uid` is given (indexes: shard + status + createdAt; userId + status +
    createdAt: neither leads with the few-valued status, so charges spread over the index)."""

    def charged(query: Query) -> Query:
        return (
            query.where(filter=db.where("status", "==", generations.CHARGED))
            .where(filter=db.where("createdAt", "<", before))
            .order_by("createdAt")
            .select(["userId", "createdAt"])
        )

    collection = client.collection(schema.GENERATIONS)
    if uid is not None:
        return [charged(collection.where(filter=db.where("userId", "==", uid)))]
    return db.sharded(lambda shard: charged(collection.where(filter=db.where("shard", "==", shard))))


@dataclass
class SettlementReport:
    """What one settlement pass did (in a dry run: would do)."""

    refunds_settled: int = 0
    credits_expired: int = 0
    deferred: int = 0  # contended or without a user: left for the next pass
    complete: bool = True
    elapsed_ms: int = 0

    def body(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "refundsSettled": self.refunds_settled,
            "creditsExpired": self.credits_expired,
            "chargesDeferred": self.deferred,
            "elapsedMs": self.elapsed_ms,
        }


def settle_stale_charges(
    client: Client,
    settings: Settings,
    *,
    now: datetime | None = None,
    uid: str | None = None,
    has_time: Callable[[], bool] = lambda: True,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> SettlementReport:
    """Refund every stale charge (one user's, with `uid`), oldest first, while `has_time()`.

    A charge whose refund keeps conflicting, or that names no user, is left for the next pass and
    counted in `deferred`; `complete` is false when anything was left.
    """
    started = time.monotonic()
    report = SettlementReport()
    for snap in db.pages(stale_charges(client, generations.stale_cutoff(settings, now), uid), PAGE):
        if not has_time():
            report.complete = False
            break
        owner = (snap.to_dict() or {}).get("userId")
        if not isinstance(owner, str) or not owner:
            log.error("stale charge %s has no userId; an operator must settle it", snap.id)
            report.deferred += 1
            continue
        if dry_run:
            report.refunds_settled += 1
            _emit(progress, Event.WOULD_REFUND, generationId=snap.id, userId=owner)
            continue
        try:
            settled = generations.refund(client, snap.id, owner, REASON)
        except NotFound:
            continue
        except Contention:
            log.warning("stale charge %s: refund kept conflicting; the next pass retries", snap.id)
            report.deferred += 1
            continue
        if settled.applied:
            report.refunds_settled += 1
            _emit(progress, Event.REFUNDED, generationId=snap.id, userId=owner, amount=settled.amount)
    if report.complete:
        _expire_grants(client, report, uid=uid, has_time=has_time, dry_run=dry_run, progress=progress)
    report.complete = report.complete and not report.deferred
    report.elapsed_ms = round((time.monotonic() - started) * 1000)
    if report.refunds_settled and not dry_run:
        log.info("stale charges refunded", extra={"json_fields": {"uid": uid, **report.body()}})
    return report


def _expire_grants(
    client: Client,
    report: SettlementReport,
    *,
    uid: str | None,
    has_time: Callable[[], bool],
    dry_run: bool,
    progress: Progress | None,
) -> None:
    """Write off the expired grants of every user whose next expiry has passed (or of `uid`)."""
    now = clock.now()
    overdue: list[float] = []

    def listed() -> Iterator[str]:
        for snap in db.pages(ledger.expiring_users(client, now), PAGE):
            expiry = snap.get("nextExpiryAt")
            if isinstance(expiry, datetime) and now - expiry > OVERDUE_AFTER:
                overdue.append((now - expiry).total_seconds())
            yield snap.id

    owners = [uid] if uid is not None else listed()
    try:
        _write_off(client, report, owners, has_time=has_time, dry_run=dry_run, progress=progress)
    finally:
        if overdue and not dry_run:
            # The alert "expired grants overdue" counts these lines: write-offs are not keeping up.
            log.warning(
                "expired grants overdue",
                extra={"json_fields": {"usersOverdue": len(overdue), "oldestOverdueS": round(max(overdue))}},
            )


def _write_off(
    client: Client,
    report: SettlementReport,
    owners: Iterable[str],
    *,
    has_time: Callable[[], bool],
    dry_run: bool,
    progress: Progress | None,
) -> None:
    for owner in owners:
        if not has_time():
            report.complete = False
            return
        if dry_run:
            _emit(progress, Event.WOULD_EXPIRE_GRANTS, userId=owner)
            continue
        try:
            credits = ledger.settle_expiries(client, owner)
        except Contention:
            log.warning("expired grants of %s: the write-off kept conflicting; the next pass retries", owner)
            report.deferred += 1
            continue
        if credits:
            report.credits_expired += credits
            _emit(progress, Event.GRANTS_EXPIRED, userId=owner, credits=credits)


def settle_user(client: Client, settings: Settings, uid: str, *, now: datetime | None = None) -> int:
    """Refund one user's stale charges and write off their expired grants (before `credits` answers);
    the number of charges refunded."""
    return settle_stale_charges(client, settings, now=now, uid=uid).refunds_settled


def _emit(progress: Progress | None, event: Event, **fields: Any) -> None:
    if progress is not None:
        progress(event.value, fields)
