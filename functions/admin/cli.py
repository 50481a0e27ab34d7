"""The operator command line (`python -m functions.admin`). Each command is a subparser registered
in COMMANDS; add one by writing an `add_<name>(subparsers)` that sets `run=` and appending it there.

    python -m functions.admin sweep [--dry-run] [--workers N]
    python -m functions.admin settle [--dry-run]
    python -m functions.admin schedule --project P --region R --url URL --service-account SA [--schedule CRON]
    python -m functions.admin grant USER AMOUNT --reason TEXT --id GRANT_ID [--category promotional|paid]
        [--expires-in-days N] [--priority P] [--allow-unknown-user]
    python -m functions.admin void USER GRANT_ID --reason TEXT
    python -m functions.admin backfill-shards [--dry-run]
    python -m functions.admin status
    python -m functions.admin ledger USER [--limit N]
    python -m functions.admin audit
    python -m functions.admin replay STRIPE_EVENT_ID
    python -m functions.admin export USER [--out FILE]
    python -m functions.admin forget USER
    python -m functions.admin sync-catalog

`sweep` runs one retention pass against the Firestore the environment names (FIRESTORE_EMULATOR_HOST
locally, Application Default Credentials otherwise) with the same settings as the function
(RETENTION_DAYS, STALE_CHARGE_AFTER_S, SWEEP_BUDGET_S, ANALYTICS_RETENTION_DAYS). It prints a line
per project and refund, progress every few seconds on long runs, then the function's JSON answer.
Exit status: 0 done, 3 stopped by the time budget with work left (run it again), 1 failed, 2 bad
configuration, 4 the audit found differences.

`grant` is idempotent by its id (a second run with the same id grants nothing and says so), and
refuses a uid that has no Firebase Auth account unless given `--allow-unknown-user`. `void` writes off
what a grant still holds, once. `settle` also writes off expired grants.
`audit` streams every user and ledger entry, prints progress, and lists every difference.
`replay` runs a Stripe event stored in `stripe_event_problems` (a permanent problem an operator
has since fixed, e.g. a pack added to CREDIT_PACKS) through the webhook's own code path.
`export` writes everything kept about a user as the `account` function's GET answers it (to stdout
or --out, a file only its owner may read: mode 0600, also when it existed), and `forget` erases a
user as its DELETE does (the same code; running it again finishes an interrupted erasure).
Both print progress on stderr.
`sync-catalog` reads each configured pack's and plan's price from Stripe (STRIPE_SECRET_KEY) and
writes `catalog/current`, which the public `catalog` function serves; it prints what changed and
writes nothing when nothing did. Run it after changing CREDIT_PACKS or PLANS, or a price in Stripe.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from functions.lib.config import refuse_unsafe_environment
from functions.lib.errors import AppError, ConfigError
from functions.lib.wallet import CATEGORIES, DEFAULT_PRIORITY, PROMOTIONAL

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INCOMPLETE, EXIT_DIFFERENCES = 0, 1, 2, 3, 4
PROGRESS_EVERY_S = 2.0
MAX_COUNT = 1_000_000_000  # the longest ledger page or progress step a command takes


def at_least_one(value: int, name: str) -> int:
    """`value` when it is a sensible count, else InvalidRequest naming the option."""
    from functions.lib.errors import InvalidRequest

    if not 1 <= value <= MAX_COUNT:
        raise InvalidRequest(f"{name} must be between 1 and {MAX_COUNT:,}, not {value}.")
    return value


_WHAT = {
    "events_deleted": "analytics events",
    "problems_deleted": "stored Stripe events",
    "limits_deleted": "ended checkout windows",
}


class SweepPrinter:
    """Turns sweep progress events into lines for a person watching; chunk progress is throttled."""

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
        if event == "chunk":
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


# One line per progress event of a sweep or settlement pass (chunks are throttled: SweepPrinter.chunk).
_LINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "would_refund": lambda f: f"would refund generation {f['generationId']} (user {f['userId']})",
    "would_delete_project": lambda f: f"would delete project {f['projectId']} ({f['versions']} versions)",
    "would_delete": lambda f: f"would delete {f['count']} {_WHAT[f['what']]}",
    "refunded": lambda f: f"refunded generation {f['generationId']}: {f['amount']} credits to {f['userId']}",
    "would_expire_grants": lambda f: f"would write off the expired grants of user {f['userId']}",
    "grants_expired": lambda f: f"wrote off {f['credits']} expired credits of user {f['userId']}",
    "project": lambda f: (
        f"project {f['projectId']} {'deleted' if f['deleted'] else 'finished by another sweep'}: "
        f"{f['versionsDeleted']} versions deleted by this run"
    ),
    "deleted": lambda f: f"{_WHAT[f['what']]} deleted: {f['count']}",
    "deferred": lambda f: (
        f"project {f['projectId']} kept conflicting with other writers: left for the next run"
    ),
    "stopped": lambda f: (
        f"stopping: the time budget is spent after {f['elapsedMs'] / 1000:.1f} s; the next run resumes"
    ),
}


def run_sweep(args: argparse.Namespace) -> int:
    from functions.lib import db
    from functions.lib.config import get_settings
    from functions.lib.retention import sweep

    settings = get_settings()
    out: TextIO = sys.stdout
    where = (
        f"emulator {settings.firestore_emulator_host}" if settings.firestore_emulator_host else "Firestore"
    )
    print(
        f"{'DRY RUN (nothing is changed): ' if args.dry_run else ''}"
        f"sweeping project {settings.project} on {where}: "
        f"projects idle > {settings.retention_days} d, charges older than {settings.stale_charge_after_s} s, "
        f"analytics events older than {settings.analytics_retention_days} d; "
        f"budget {settings.sweep_budget_s:g} s",
        file=out,
        flush=True,
    )
    report = sweep(
        db.get_client(), settings, dry_run=args.dry_run, progress=SweepPrinter(out), workers=args.workers
    )
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {report.projects_deleted} projects ({report.versions_deleted} versions), "
        f"{report.events_deleted} analytics events "
        f"and {report.problems_deleted} stored Stripe events; "
        f"{'would refund' if args.dry_run else 'refunded'} {report.refunds_settled} stale charges; "
        f"{report.commits} commits (largest {report.max_commit_writes} writes) "
        f"in {report.elapsed_ms / 1000:.1f} s"
        + ("" if report.complete else "; NOT complete: run it again to finish"),
        file=out,
    )
    print(json.dumps(report.body()), file=out, flush=True)
    if not args.dry_run:
        from functions.lib import operations

        operations.record_run(db.get_client(), operations.SWEEP, report.body())
    return EXIT_OK if report.complete else EXIT_INCOMPLETE


def add_sweep(subparsers: Any) -> None:
    from functions.lib.retention import DEFAULT_WORKERS

    cmd = subparsers.add_parser(
        "sweep", help="run one retention pass (or --dry-run to list what it would do)"
    )
    cmd.add_argument(
        "--dry-run", action="store_true", help="write nothing; print what would be deleted and refunded"
    )
    cmd.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"projects deleted at once (default {DEFAULT_WORKERS})",
    )
    cmd.set_defaults(run=run_sweep)


def run_settle(args: argparse.Namespace) -> int:
    from functions.lib import db, settlement
    from functions.lib.config import get_settings

    settings = get_settings()
    print(
        f"{'DRY RUN (nothing is changed): ' if args.dry_run else ''}refunding charges still open after "
        f"{settings.stale_charge_after_s} s in project {settings.project}",
        flush=True,
    )
    report = settlement.settle_stale_charges(
        db.get_client(), settings, dry_run=args.dry_run, progress=SweepPrinter(sys.stdout)
    )
    print(
        f"{'would refund' if args.dry_run else 'refunded'} {report.refunds_settled} stale charges"
        + (f"; {report.deferred} left for the next run" if report.deferred else ""),
        flush=True,
    )
    print(json.dumps(report.body()), flush=True)
    if not args.dry_run:
        from functions.lib import operations

        operations.record_run(db.get_client(), operations.SETTLEMENT, report.body())
    return EXIT_OK if report.complete else EXIT_INCOMPLETE


def add_settle(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "settle", help="refund stale charges now (what the settlement job does every 10 minutes)"
    )
    cmd.add_argument(
        "--dry-run", action="store_true", help="write nothing; list the charges that would be refunded"
    )
    cmd.set_defaults(run=run_settle)


def run_schedule(args: argparse.Namespace) -> int:
    from functions.lib.scheduler import SweepJob, scheduler_client, upsert_job

    job = SweepJob(
        project=args.project,
        region=args.region,
        url=args.url,
        service_account=args.service_account,
        schedule=args.schedule,
        time_zone=args.time_zone,
        job_id=args.job_id,
        audience=args.audience,
        attempt_deadline_s=args.attempt_deadline,
    ).check()
    credentials = None
    if args.api_endpoint:
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    from google.api_core import exceptions as gexc
    from requests import exceptions as http_errors

    try:
        result = upsert_job(scheduler_client(api_endpoint=args.api_endpoint, credentials=credentials), job)
    except (gexc.GoogleAPICallError, http_errors.ConnectionError) as exc:
        why = (
            f"answered {exc.code} {exc.message}"
            if isinstance(exc, gexc.GoogleAPICallError)
            else "is unreachable"
        )
        print(f"schedule failed: Cloud Scheduler {why} (job {job.name})", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{result.action} {job.name}: POST {job.url} at '{job.schedule}' ({job.time_zone}), "
        f"OIDC as {job.service_account} for audience {job.audience or job.url}"
    )
    return EXIT_OK


def add_schedule(subparsers: Any) -> None:
    from functions.lib import scheduler

    cmd = subparsers.add_parser(
        "schedule", help="create or update the Cloud Scheduler job that calls retention_sweep"
    )
    cmd.add_argument("--project", required=True, help="Google Cloud project id")
    cmd.add_argument("--region", required=True, help="Cloud Scheduler location, e.g. us-central1")
    cmd.add_argument("--url", required=True, help="the retention_sweep function's HTTPS URL")
    cmd.add_argument(
        "--service-account",
        required=True,
        help="email of the service account the job's OIDC token is minted for",
    )
    cmd.add_argument(
        "--schedule",
        default=scheduler.DEFAULT_SCHEDULE,
        help=f"cron expression (default '{scheduler.DEFAULT_SCHEDULE}')",
    )
    cmd.add_argument(
        "--time-zone",
        default=scheduler.DEFAULT_TIME_ZONE,
        help=f"tz database name (default {scheduler.DEFAULT_TIME_ZONE})",
    )
    cmd.add_argument(
        "--job-id", default=scheduler.DEFAULT_JOB_ID, help=f"job id (default {scheduler.DEFAULT_JOB_ID})"
    )
    cmd.add_argument("--audience", help="OIDC audience (default: the URL)")
    cmd.add_argument(
        "--attempt-deadline",
        type=int,
        default=scheduler.DEFAULT_ATTEMPT_DEADLINE_S,
        help="seconds Cloud Scheduler waits for an answer",
    )
    cmd.add_argument(
        "--api-endpoint",
        help="call this Cloud Scheduler endpoint without credentials (a local double) instead of Google's",
    )
    cmd.set_defaults(run=run_schedule)


def run_grant(args: argparse.Namespace) -> int:
    from functions.lib import auth, db, ids, ledger

    if not ids.is_doc_id(args.user):
        print(f"grant failed: {args.user!r} cannot be a uid (see functions/lib/ids.py)", file=sys.stderr)
        return EXIT_FAILED
    # A mistyped uid would otherwise create a phantom user holding the credits.
    if not args.allow_unknown_user and not auth.lookup_account(args.user).exists:
        print(
            f"grant failed: no Firebase Auth account has uid {args.user!r}; "
            "check it, or pass --allow-unknown-user to grant anyway",
            file=sys.stderr,
        )
        return EXIT_FAILED
    posted = ledger.grant(
        db.get_client(),
        args.user,
        args.id,
        args.amount,
        args.reason,
        category=args.category,
        priority=args.priority,
        expires_in_days=args.expires_in_days,
    )
    if posted.applied:
        expiry = f"expires in {args.expires_in_days:g} days" if args.expires_in_days else "never expires"
        print(
            f"granted {posted.amount} {args.category} credits to {args.user} ({posted.entry_id}, "
            f"priority {args.priority}, {expiry}); balance {posted.balance}"
        )
    else:
        print(
            f"{posted.entry_id} was already granted ({posted.amount} credits); nothing changed; "
            f"balance {posted.balance}"
        )
    return EXIT_OK


def add_grant(subparsers: Any) -> None:
    cmd = subparsers.add_parser("grant", help="give a user credits (support, promotion), idempotent by --id")
    cmd.add_argument("user", help="the user's uid")
    cmd.add_argument("amount", type=int, help="credits to add (positive)")
    cmd.add_argument("--reason", required=True, help="why, stored on the ledger entry")
    cmd.add_argument(
        "--id",
        required=True,
        help="grant id: the same id never grants twice (e.g. a ticket number)",
    )
    cmd.add_argument(
        "--category",
        choices=CATEGORIES,
        default=PROMOTIONAL,
        help="paid or promotional (default promotional): promotional is spent first at equal terms",
    )
    cmd.add_argument(
        "--expires-in-days",
        type=float,
        default=None,
        help="the grant expires this long from now (default never)",
    )
    cmd.add_argument(
        "--priority",
        type=int,
        default=DEFAULT_PRIORITY,
        help=f"0..100, lower spent first (default {DEFAULT_PRIORITY})",
    )
    cmd.add_argument(
        "--allow-unknown-user",
        action="store_true",
        help="grant even if no Firebase Auth account has this uid (refused by default)",
    )
    cmd.set_defaults(run=run_grant)


def run_void(args: argparse.Namespace) -> int:
    from functions.lib import db, ledger

    posted = ledger.void(db.get_client(), args.user, args.grant_id, args.reason)
    if posted.applied:
        print(
            f"voided {args.grant_id}: wrote off {-posted.amount} credits ({posted.entry_id}); "
            f"balance {posted.balance}"
        )
    else:
        print(f"{args.grant_id} was already voided; nothing changed; balance {posted.balance}")
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    from functions.lib import db, operations
    from functions.lib.config import get_settings

    found = operations.status(db.get_client(), get_settings())
    for line in status_lines(found):
        print(line)
    return EXIT_OK


def status_lines(found: Any) -> list[str]:
    """One screen: each line what is the case, then the command that acts on it."""
    from functions.lib.operations import SETTLEMENT, SWEEP

    ids = (
        f" ({', '.join(found.problem_ids)}{', ...' if found.open_problems > len(found.problem_ids) else ''})"
    )
    lines = [
        f"open Stripe problem events: {found.open_problems}{ids if found.open_problems else ''}"
        + (
            "  -> fix the cause, then: python -m functions.admin replay EVENT_ID"
            if found.open_problems
            else ""
        ),
        f"stale charges (charged, older than STALE_CHARGE_AFTER_S): {found.stale_charges}"
        + ("  -> python -m functions.admin settle" if found.stale_charges else ""),
        f"users with grants expiring within a day: {found.expiring_users}"
        + (
            "  -> the settlement job writes them off when due (or: python -m functions.admin settle)"
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
            lines.append(f"last {kind}: never recorded  -> python -m functions.admin {command}")
            continue
        done = {k: v for k, v in run.items() if k not in ("kind", "finishedAt") and v}
        when = run.get("finishedAt")
        when_text = when.isoformat() if hasattr(when, "isoformat") else "?"
        left = "" if run.get("complete", True) else f"  -> it left work: python -m functions.admin {command}"
        lines.append(f"last {kind}: {when_text} {json.dumps(done, sort_keys=True, default=str)}{left}")
    return lines


def add_status(subparsers: Any) -> None:
    cmd = subparsers.add_parser("status", help="one screen: what needs an operator, and the command for each")
    cmd.set_defaults(run=run_status)


def run_backfill_shards(args: argparse.Namespace) -> int:
    from functions.lib import db

    client = db.get_client()
    for collection in db.SHARDED_COLLECTIONS:

        def progress(seen: int, done: int, collection: str = collection) -> None:
            verb = "would set" if args.dry_run else "set"
            print(f"... {collection}: {seen} documents read, shard {verb} on {done}", flush=True)

        done = db.backfill_shards(client, collection, dry_run=args.dry_run, progress=progress)
        print(f"{collection}: {'would set' if args.dry_run else 'set'} shard on {done} documents")
    return EXIT_OK


def add_backfill_shards(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "backfill-shards", help="give documents written before index shards existed their shard (once)"
    )
    cmd.add_argument("--dry-run", action="store_true", help="count what would be set; write nothing")
    cmd.set_defaults(run=run_backfill_shards)


def add_void(subparsers: Any) -> None:
    cmd = subparsers.add_parser("void", help="write off what a grant still holds, idempotent")
    cmd.add_argument("user", help="the user's uid")
    cmd.add_argument("grant_id", help="the grant's id (its ledger entry, e.g. grant_promo-7; see `ledger`)")
    cmd.add_argument("--reason", required=True, help="why, stored on the void entry")
    cmd.set_defaults(run=run_void)


def run_ledger(args: argparse.Namespace) -> int:
    from functions.lib import db, ids, ledger

    limit = at_least_one(args.limit, "--limit")
    statement = ledger.statement(db.get_client(), ids.require_doc_id(args.user, "user"), limit=limit)
    print(
        f"user {args.user}: balance {statement.balance}; debt {statement.debt}; "
        f"{len(statement.grants)} live grants"
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
    return EXIT_OK


def add_ledger(subparsers: Any) -> None:
    cmd = subparsers.add_parser("ledger", help="a user's balance and latest ledger entries")
    cmd.add_argument("user", help="the user's uid")
    cmd.add_argument("--limit", type=int, default=50, help="entries to show (default 50)")
    cmd.set_defaults(run=run_ledger)


def run_audit(args: argparse.Namespace) -> int:
    from functions.lib import db
    from functions.lib.audit import AuditReport, audit

    every = at_least_one(args.progress_every, "--progress-every")
    started = time.monotonic()

    def progress(report: AuditReport) -> None:
        print(
            f"... {report.users} users, {report.entries} ledger entries checked, "
            f"{len(report.differences)} differences",
            flush=True,
        )

    report = audit(db.get_client(), progress, every=every)
    for d in report.differences:
        held = f", grants and debt {d.held}" if d.held is not None else ""
        print(f"DIFFERENCE user {d.uid}: {d.problem} (credits {d.credits}, ledger sum {d.ledger_sum}{held})")
    verdict = "clean" if report.clean else f"{len(report.differences)} differences"
    print(
        f"audit: {report.users} users, {report.entries} ledger entries, "
        f"{report.closed_accounts} closed (erased) accounts "
        f"in {time.monotonic() - started:.1f} s: {verdict}"
    )
    return EXIT_OK if report.clean else EXIT_DIFFERENCES


def add_audit(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "audit", help="check every user's balance == sum of ledger, below 0 only after a reversal"
    )
    cmd.add_argument(
        "--progress-every", type=int, default=1000, help="print progress every N users (default 1000)"
    )
    cmd.set_defaults(run=run_audit)


def run_replay(args: argparse.Namespace) -> int:
    from functions.lib import db, ids, payments
    from functions.lib.config import get_settings

    outcome = payments.replay_problem(
        db.get_client(), get_settings(), ids.require_doc_id(args.event_id, "event_id")
    )
    detail = f"; problem: {outcome.problem}" if outcome.problem else ""
    print(
        f"replayed {args.event_id}: {outcome.action}, {outcome.credits:+d} credits "
        f"for {outcome.uid or 'no user'}{detail}"
    )
    if outcome.action in (payments.Action.PROBLEM, payments.Action.PARKED):
        print(f"{args.event_id} is still open: it did not apply", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def add_replay(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "replay", help="run a stored problem Stripe event again through the webhook's code path"
    )
    cmd.add_argument("event_id", help="the Stripe event id (evt_...) in stripe_event_problems")
    cmd.set_defaults(run=run_replay)


def open_private(path: str) -> TextIO:
    """`path` opened for writing, truncated, readable and writable by its owner only (0600): an
    export holds a user's prompts, outputs and ledger. The mode is set on the open file, so a file
    that existed with a wider mode is narrowed before anything is written; a device or pipe
    (`/dev/stdout`) keeps its own."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def run_export(args: argparse.Namespace) -> int:
    from functions.lib import db, ids, user_data

    ids.require_doc_id(args.user, "user")
    # Closed below (a `with` cannot hold stdout, which must stay open).
    try:
        out: TextIO = open_private(args.out) if args.out else sys.stdout
    except OSError as exc:
        print(f"export failed: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    started, written, last = time.monotonic(), 0, time.monotonic()
    try:
        for piece in user_data.export(db.get_client(), args.user):
            out.write(piece)
            written += len(piece)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                print(
                    f"... {written} characters written ({last - started:.1f} s)", file=sys.stderr, flush=True
                )
        out.write("\n")
    finally:
        if out is not sys.stdout:
            out.close()
    print(
        f"exported user {args.user}: {written} characters in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return EXIT_OK


def add_export(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "export", help="everything kept about a user, as one JSON document (what account GET answers)"
    )
    cmd.add_argument("user", help="the user's uid")
    cmd.add_argument("--out", help="write to this file instead of stdout")
    cmd.set_defaults(run=run_export)


def run_forget(args: argparse.Namespace) -> int:
    from functions.lib import auth, db, ids, user_data

    ids.require_doc_id(args.user, "user")

    def progress(event: str, fields: dict[str, Any]) -> None:
        if event == "done":
            return
        detail = ", ".join(f"{k} {v}" for k, v in fields.items())
        print(f"{event}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)

    print(
        f"erasing user {args.user} (running this again finishes an interrupted erasure)",
        file=sys.stderr,
        flush=True,
    )
    report = user_data.erase(db.get_client(), args.user, delete_login=auth.delete_login, progress=progress)
    print(json.dumps(report.body()))
    return EXIT_OK


def add_forget(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "forget", help="erase a user as account DELETE does: data deleted, ledger kept under a pseudonym"
    )
    cmd.add_argument("user", help="the user's uid")
    cmd.set_defaults(run=run_forget)


def _priced(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "none"
    per = f" per {entry['interval']}" if entry.get("interval") else ""
    return f"{entry['amount']} {entry['currency']}{per} ({entry['price']})"


def run_sync_catalog(args: argparse.Namespace) -> int:
    from functions.lib import catalog, db, stripe_api
    from functions.lib.config import get_settings

    settings = get_settings()

    def retrieve(price: str) -> catalog.StripePrice:
        return catalog.StripePrice.of(stripe_api.retrieve_price(settings, price))

    report = catalog.sync(db.get_client(), settings, retrieve)
    for warning in report.warnings:
        print(f"WARNING {warning}", file=sys.stderr)
    for change in report.changes:
        print(f"{change.kind} {change.id}: {_priced(change.before)} -> {_priced(change.after)}")
    total = len(settings.credit_packs) + len(settings.plans)
    if report.written:
        print(f"catalog/current written: {len(report.changes)} of {total} entries changed")
    else:
        print(f"catalog/current unchanged: its {total} entries are as Stripe has them")
    return EXIT_OK


def add_sync_catalog(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "sync-catalog",
        help="read the packs' and plans' prices from Stripe into catalog/current (what `catalog` serves)",
    )
    cmd.set_defaults(run=run_sync_catalog)


COMMANDS: tuple[Callable[[Any], None], ...] = (
    add_sweep,
    add_settle,
    add_schedule,
    add_grant,
    add_void,
    add_backfill_shards,
    add_status,
    add_ledger,
    add_audit,
    add_replay,
    add_export,
    add_forget,
    add_sync_catalog,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m functions.admin", description="Operator commands for the credits backend."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def no_credentials_hint(command: str, exc: Exception) -> str:
    """What to set when a Google API (Firebase Auth, Cloud Scheduler) found no usable credentials
    (none at all, or a login that can no longer be refreshed)."""
    local = os.environ.get("FIRESTORE_EMULATOR_HOST") and not os.environ.get("FIREBASE_AUTH_EMULATOR_HOST")
    if local and command != "schedule":
        return (
            "no Google credentials for Firebase Auth: FIRESTORE_EMULATOR_HOST is set but "
            "FIREBASE_AUTH_EMULATOR_HOST is not; set both to use the local emulators, then run it again"
        )
    return (
        f"no usable Google credentials ({exc}); run `gcloud auth application-default login` "
        "(or set GOOGLE_APPLICATION_CREDENTIALS), then run it again"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        refuse_unsafe_environment()
        return int(args.run(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except AppError as exc:
        print(f"{args.command} failed: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        from google.auth.exceptions import DefaultCredentialsError, RefreshError

        from functions.lib.db import firestore_unavailable

        if isinstance(exc, DefaultCredentialsError | RefreshError):
            print(f"{args.command} failed: {no_credentials_hint(args.command, exc)}", file=sys.stderr)
            return EXIT_CONFIG
        if not firestore_unavailable(exc):
            raise
        print(
            f"{args.command} failed: Firestore is unreachable ({type(exc).__name__}); run it again later",
            file=sys.stderr,
        )
        return EXIT_FAILED
