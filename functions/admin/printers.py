"""What the operator commands print: `functions/admin/cli.py` computes, these print it.

Results go to stdout; failures, warnings, and the progress of `export` and `forget` (whose stdout
may be the export itself) to stderr.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from functions.lib import settlement
from functions.lib.operations import SETTLEMENT, SWEEP
from functions.lib.retention import Count, SweepEvent
from functions.lib.user_data import ErasureEvent

if TYPE_CHECKING:
    from functions.lib.audit import AuditReport
    from functions.lib.catalog import SyncReport
    from functions.lib.config import Settings
    from functions.lib.ledger import Posted, Statement
    from functions.lib.operations import Status
    from functions.lib.payments import Outcome
    from functions.lib.retention import SweepReport
    from functions.lib.scheduler import SweepJob, Upserted
    from functions.lib.settlement import SettlementReport

PROG = "python -m functions.admin"
PROGRESS_EVERY_S = 2.0


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _dry(dry_run: bool) -> str:
    return "DRY RUN (nothing is changed): " if dry_run else ""


def _refunded(dry_run: bool) -> str:
    return "would refund" if dry_run else "refunded"


# sweep and settle ------------------------------------------------------------------------------

# The sweep's counters, as its `would_delete` and `deleted` events name them (`what`).
_WHAT = {
    Count.EVENTS_DELETED: "analytics events",
    Count.PROBLEMS_DELETED: "stored Stripe events",
    Count.LIMITS_DELETED: "ended checkout windows",
}

# One line per progress event of a sweep or settlement pass (chunks are throttled: SweepPrinter.chunk).
_LINES: dict[str, Callable[[dict[str, Any]], str]] = {
    settlement.Event.WOULD_REFUND: lambda f: (
        f"would refund generation {f['generationId']} (user {f['userId']})"
    ),
    SweepEvent.WOULD_DELETE_PROJECT: lambda f: (
        f"would delete project {f['projectId']} ({f['versions']} versions)"
    ),
    SweepEvent.WOULD_DELETE: lambda f: f"would delete {f['count']} {_WHAT[f['what']]}",
    settlement.Event.REFUNDED: lambda f: (
        f"refunded generation {f['generationId']}: {f['amount']} credits to {f['userId']}"
    ),
    settlement.Event.WOULD_EXPIRE_GRANTS: lambda f: (
        f"would write off the expired grants of user {f['userId']}"
    ),
    settlement.Event.GRANTS_EXPIRED: lambda f: (
        f"wrote off {f['credits']} expired credits of user {f['userId']}"
    ),
    SweepEvent.PROJECT: lambda f: (
        f"project {f['projectId']} {'deleted' if f['deleted'] else 'finished by another sweep'}: "
        f"{f['versionsDeleted']} versions deleted by this run"
    ),
    SweepEvent.DELETED: lambda f: f"{_WHAT[f['what']]} deleted: {f['count']}",
    SweepEvent.DEFERRED: lambda f: (
        f"project {f['projectId']} kept conflicting with other writers: left for the next run"
    ),
    SweepEvent.STOPPED: lambda f: (
        f"stopping: the time budget is spent after {f['elapsedMs'] / 1000:.1f} s; the next run resumes"
    ),
}


class SweepPrinter:
    """Turns sweep and settlement progress events into lines for a person watching; chunk progress
    is throttled."""

    def __init__(
        self, out: TextIO, *, every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.out = out
        self.every_s = every_s
        self.clock = clock
        self.started = clock()
        self.last = self.started
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        if event == SweepEvent.CHUNK:
            self.chunk(fields)
        elif event in _LINES:
            self.line(_LINES[event](fields))

    def chunk(self, fields: dict[str, Any]) -> None:
        now = self.clock()
        with self._lock:
            due = now - self.last >= self.every_s
            if due:
                self.last = now
        if due:
            self.line(
                f"... {fields['projectId']}: {fields['versionsDeleted']} versions so far "
                f"({now - self.started:.1f} s)"
            )


def sweep_begins(settings: Settings, *, dry_run: bool) -> None:
    where = (
        f"emulator {settings.firestore_emulator_host}" if settings.firestore_emulator_host else "Firestore"
    )
    print(
        f"{_dry(dry_run)}sweeping project {settings.project} on {where}: "
        f"projects idle > {settings.retention_days} d, charges older than {settings.stale_charge_after_s} s, "
        f"analytics events older than {settings.analytics_retention_days} d; "
        f"budget {settings.sweep_budget_s:g} s",
        flush=True,
    )


def sweep_done(report: SweepReport, *, dry_run: bool) -> None:
    print(
        f"{'would delete' if dry_run else 'deleted'} {report.projects_deleted} projects "
        f"({report.versions_deleted} versions), {report.events_deleted} analytics events "
        f"and {report.problems_deleted} stored Stripe events; "
        f"{_refunded(dry_run)} {report.refunds_settled} stale charges; "
        f"{report.commits} commits (largest {report.max_commit_writes} writes) "
        f"in {report.elapsed_ms / 1000:.1f} s"
        + ("" if report.complete else "; NOT complete: run it again to finish")
    )
    print(json.dumps(report.body()), flush=True)


def settle_begins(settings: Settings, *, dry_run: bool) -> None:
    print(
        f"{_dry(dry_run)}refunding charges still open after "
        f"{settings.stale_charge_after_s} s in project {settings.project}",
        flush=True,
    )


def settle_done(report: SettlementReport, *, dry_run: bool) -> None:
    print(
        f"{_refunded(dry_run)} {report.refunds_settled} stale charges"
        + (f"; {report.deferred} left for the next run" if report.deferred else ""),
        flush=True,
    )
    print(json.dumps(report.body()), flush=True)


# schedule --------------------------------------------------------------------------------------


def scheduled(result: Upserted, job: SweepJob) -> None:
    print(
        f"{result.action} {job.name}: POST {job.url} at '{job.schedule}' ({job.time_zone}), "
        f"OIDC as {job.service_account} for audience {job.audience or job.url}"
    )


def schedule_failed(why: str, job: SweepJob) -> None:
    err(f"schedule failed: Cloud Scheduler {why} (job {job.name})")


# grant, void, ledger, audit --------------------------------------------------------------------


def granted(posted: Posted, uid: str, category: str, priority: int, expires_in_days: float | None) -> None:
    if posted.applied:
        expiry = f"expires in {expires_in_days:g} days" if expires_in_days else "never expires"
        print(
            f"granted {posted.amount} {category} credits to {uid} ({posted.entry_id}, "
            f"priority {priority}, {expiry}); balance {posted.balance}"
        )
    else:
        print(
            f"{posted.entry_id} was already granted ({posted.amount} credits); nothing changed; "
            f"balance {posted.balance}"
        )


def voided(posted: Posted, grant_id: str) -> None:
    if posted.applied:
        print(
            f"voided {grant_id}: wrote off {-posted.amount} credits ({posted.entry_id}); "
            f"balance {posted.balance}"
        )
    else:
        print(f"{grant_id} was already voided; nothing changed; balance {posted.balance}")


def ledger(uid: str, statement: Statement) -> None:
    print(
        f"user {uid}: balance {statement.balance}; debt {statement.debt}; {len(statement.grants)} live grants"
    )
    for g in statement.grants:
        print(
            f"  grant {g['id']}: {g['remaining']} of {g['amount']} left, {g['category']}, "
            f"priority {g['priority']}, expires {g['expiresAt'] or 'never'}"
        )
    print(f"latest {len(statement.transactions)} entries, newest first")
    for entry in statement.transactions:
        meta = " ".join(f"{k}={v}" for k, v in sorted(entry["metadata"].items()))
        print(
            f"  {entry['createdAt'] or '-':<32} {entry['type']:<9} {entry['amount']:>+7} "
            f"-> {entry['balanceAfter']:>7}  {entry['id']}  {meta}"
        )


def audit_progress(report: AuditReport) -> None:
    print(
        f"... {report.users} users, {report.entries} ledger entries checked, "
        f"{len(report.differences)} differences",
        flush=True,
    )


def audit_done(report: AuditReport, elapsed_s: float) -> None:
    for d in report.differences:
        held = f", grants and debt {d.held}" if d.held is not None else ""
        print(f"DIFFERENCE user {d.uid}: {d.problem} (credits {d.credits}, ledger sum {d.ledger_sum}{held})")
    verdict = "clean" if report.clean else f"{len(report.differences)} differences"
    print(
        f"audit: {report.users} users, {report.entries} ledger entries, "
        f"{report.closed_accounts} closed (erased) accounts in {elapsed_s:.1f} s: {verdict}"
    )


# status, backfill-shards -----------------------------------------------------------------------


def status(found: Status) -> None:
    for line in status_lines(found):
        print(line)


def status_lines(found: Status) -> list[str]:
    """One screen: each line what is the case, then the command that acts on it."""
    ids = (
        f" ({', '.join(found.problem_ids)}{', ...' if found.open_problems > len(found.problem_ids) else ''})"
    )
    lines = [
        f"open Stripe problem events: {found.open_problems}{ids if found.open_problems else ''}"
        + (f"  -> fix the cause, then: {PROG} replay EVENT_ID" if found.open_problems else ""),
        f"stale charges (charged, older than STALE_CHARGE_AFTER_S): {found.stale_charges}"
        + (f"  -> {PROG} settle" if found.stale_charges else ""),
        f"users with grants expiring within a day: {found.expiring_users}"
        + (
            f"  -> the settlement job writes them off when due (or: {PROG} settle)"
            if found.expiring_users
            else ""
        ),
        f"subscriptions past due: {found.past_due}"
        + (
            "  -> Stripe retries the payment (dunning); see the customer in the Stripe dashboard"
            if found.past_due
            else ""
        ),
    ]
    for kind, command in ((SWEEP, "sweep"), (SETTLEMENT, "settle")):
        run = found.runs.get(kind)
        if run is None:
            lines.append(f"last {kind}: never recorded  -> {PROG} {command}")
            continue
        done = {k: v for k, v in run.items() if k not in ("kind", "finishedAt") and v}
        when = run.get("finishedAt")
        when_text = when.isoformat() if isinstance(when, datetime) else "?"
        left = "" if run.get("complete", True) else f"  -> it left work: {PROG} {command}"
        lines.append(f"last {kind}: {when_text} {json.dumps(done, sort_keys=True, default=str)}{left}")
    return lines


def backfill_progress(collection: str, seen: int, done: int, *, dry_run: bool) -> None:
    print(f"... {collection}: {seen} documents read, shard {_set(dry_run)} on {done}", flush=True)


def backfilled(collection: str, done: int, *, dry_run: bool) -> None:
    print(f"{collection}: {_set(dry_run)} shard on {done} documents")


def _set(dry_run: bool) -> str:
    return "would set" if dry_run else "set"


# replay ----------------------------------------------------------------------------------------


def replayed(event_id: str, outcome: Outcome, *, still_open: bool) -> None:
    detail = f"; problem: {outcome.problem}" if outcome.problem else ""
    print(
        f"replayed {event_id}: {outcome.action}, {outcome.credits:+d} credits "
        f"for {outcome.uid or 'no user'}{detail}"
    )
    if still_open:
        err(f"{event_id} is still open: it did not apply")


# export, forget --------------------------------------------------------------------------------


def export_progress(written: int, elapsed_s: float) -> None:
    err(f"... {written} characters written ({elapsed_s:.1f} s)")


def exported(uid: str, written: int, elapsed_s: float) -> None:
    err(f"exported user {uid}: {written} characters in {elapsed_s:.1f} s")


def erasing(uid: str) -> None:
    err(f"erasing user {uid} (running this again finishes an interrupted erasure)")


def erasure_progress(event: str, fields: dict[str, Any]) -> None:
    if event == ErasureEvent.DONE:
        return
    detail = ", ".join(f"{k} {v}" for k, v in fields.items())
    err(f"{event}{': ' + detail if detail else ''}")


def erased(body: dict[str, Any]) -> None:
    print(json.dumps(body))


# sync-catalog ----------------------------------------------------------------------------------


def catalog_synced(report: SyncReport, total: int) -> None:
    for warning in report.warnings:
        print(f"WARNING {warning}", file=sys.stderr)
    for change in report.changes:
        print(f"{change.kind} {change.id}: {_priced(change.before)} -> {_priced(change.after)}")
    if report.written:
        print(f"catalog/current written: {len(report.changes)} of {total} entries changed")
    else:
        print(f"catalog/current unchanged: its {total} entries are as Stripe has them")


def _priced(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "none"
    per = f" per {entry['interval']}" if entry.get("interval") else ""
    return f"{entry['amount']} {entry['currency']}{per} ({entry['price']})"


# failures (cli.main) ---------------------------------------------------------------------------


def failed(command: str, why: str) -> None:
    err(f"{command} failed: {why}")


def config_error(exc: Exception) -> None:
    err(f"configuration error: {exc}")
