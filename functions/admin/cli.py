"""The operator command line, `python -m functions.admin COMMAND` (docs/OPERATIONS.md, "Operator
command line"); `--help` lists the commands, `COMMAND --help` gives one's usage.

Each command is a function registered with `@command(name, *arguments)`: its docstring is its help
(the first line its summary in the list), its arguments its usage, so both are written once. It
computes; `functions/admin/printers.py` prints. Input it refuses raises `UsageError` before anything
is written; `main` turns that, and an error of the shared lib, into "COMMAND failed: why" on stderr
and an exit status (`EXITS`).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from functions.admin import printers
from functions.admin.printers import PROG, PROGRESS_EVERY_S, SweepPrinter
from functions.lib import ids, scheduler
from functions.lib.config import refuse_unsafe_environment
from functions.lib.errors import AppError, ConfigError
from functions.lib.retention import DEFAULT_WORKERS
from functions.lib.wallet import CATEGORIES, DEFAULT_PRIORITY, PROMOTIONAL

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INCOMPLETE, EXIT_DIFFERENCES = 0, 1, 2, 3, 4
EXITS = {
    EXIT_OK: "done",
    EXIT_FAILED: "failed or refused its input",
    EXIT_CONFIG: "bad configuration or no usable Google credentials",
    EXIT_INCOMPLETE: "stopped by the time budget with work left (run it again)",
    EXIT_DIFFERENCES: "the audit found differences",
}
MAX_COUNT = 1_000_000_000  # the longest ledger page or progress step a command takes


class UsageError(Exception):
    """Input a command refuses, said in a sentence naming it; nothing has been written."""


# Arguments and their checks ----------------------------------------------------------------------

# check(value, name): raises UsageError naming the argument when the parsed value is unusable.
Check = Callable[[Any, str], None]


def count(value: int, name: str) -> None:
    if not 1 <= value <= MAX_COUNT:
        raise UsageError(f"{name} must be between 1 and {MAX_COUNT:,}, not {value}.")


def an_id(what: str) -> Check:
    """A check that the value can name a document (functions/lib/ids.py): it names `what`."""

    def check(value: str, name: str) -> None:
        if not ids.is_doc_id(value):
            raise UsageError(f"{value!r} cannot be {what}: {ids.rule(name)}")

    return check


@dataclass(frozen=True)
class Arg:
    """`add_argument(*flags, **options)`, then `check` on the parsed value."""

    flags: tuple[str, ...]
    options: dict[str, Any]
    check: Check | None = None

    @property
    def dest(self) -> str:
        return str(self.options.get("dest") or self.flags[0].lstrip("-").replace("-", "_"))


def arg(*flags: str, check: Check | None = None, **options: Any) -> Arg:
    return Arg(flags, options, check)


USER = arg("user", help="the user's uid", check=an_id("a uid"))


# Commands ----------------------------------------------------------------------------------------

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    run: Run
    args: tuple[Arg, ...]

    def check(self, args: argparse.Namespace) -> None:
        for a in self.args:
            if a.check is not None:
                a.check(getattr(args, a.dest), a.flags[0])


COMMANDS: dict[str, Command] = {}


def command(name: str, *args: Arg) -> Callable[[Run], Run]:
    """Register `run` as the command `name` taking `args`; its docstring is the command's help."""

    def register(run: Run) -> Run:
        COMMANDS[name] = Command(name, run, args)
        return run

    return register


@command(
    "sweep",
    arg("--dry-run", action="store_true", help="write nothing; print what would be deleted and refunded"),
    arg(
        "--workers", type=int, default=DEFAULT_WORKERS, help="projects deleted at once (default %(default)s)"
    ),
)
def run_sweep(args: argparse.Namespace) -> int:
    """run one retention pass (or --dry-run to list what it would do)

    Against the Firestore the environment names (FIRESTORE_EMULATOR_HOST locally, Application
    Default Credentials otherwise), with the function's settings (RETENTION_DAYS,
    STALE_CHARGE_AFTER_S, SWEEP_BUDGET_S, ANALYTICS_RETENTION_DAYS). Prints a line per project and
    refund, progress every few seconds on long runs, then the function's JSON answer; exits 3 when
    the time budget stopped it with work left.
    """
    from functions.lib import db, operations
    from functions.lib.config import get_settings
    from functions.lib.retention import sweep

    settings = get_settings()
    printers.sweep_begins(settings, dry_run=args.dry_run)
    report = sweep(
        db.get_client(),
        settings,
        dry_run=args.dry_run,
        progress=SweepPrinter(sys.stdout),
        workers=args.workers,
    )
    printers.sweep_done(report, dry_run=args.dry_run)
    if not args.dry_run:
        operations.record_run(db.get_client(), operations.SWEEP, report.body())
    return EXIT_OK if report.complete else EXIT_INCOMPLETE


@command(
    "settle",
    arg("--dry-run", action="store_true", help="write nothing; list the charges that would be refunded"),
)
def run_settle(args: argparse.Namespace) -> int:
    """refund stale charges now (what the settlement job does every 10 minutes)

    Refunds the generations still `charged` after STALE_CHARGE_AFTER_S and writes off expired grants.
    """
    from functions.lib import db, operations, settlement
    from functions.lib.config import get_settings

    settings = get_settings()
    printers.settle_begins(settings, dry_run=args.dry_run)
    report = settlement.settle_stale_charges(
        db.get_client(), settings, dry_run=args.dry_run, progress=SweepPrinter(sys.stdout)
    )
    printers.settle_done(report, dry_run=args.dry_run)
    if not args.dry_run:
        operations.record_run(db.get_client(), operations.SETTLEMENT, report.body())
    return EXIT_OK if report.complete else EXIT_INCOMPLETE


@command(
    "schedule",
    arg("--project", required=True, help="Google Cloud project id"),
    arg("--region", required=True, help="Cloud Scheduler location, e.g. us-central1"),
    arg("--url", required=True, help="the retention_sweep function's HTTPS URL"),
    arg(
        "--service-account",
        required=True,
        help="email of the service account the job's OIDC token is minted for",
    ),
    arg("--schedule", default=scheduler.DEFAULT_SCHEDULE, help="cron expression (default '%(default)s')"),
    arg("--time-zone", default=scheduler.DEFAULT_TIME_ZONE, help="tz database name (default %(default)s)"),
    arg("--job-id", default=scheduler.DEFAULT_JOB_ID, help="job id (default %(default)s)"),
    arg("--audience", help="OIDC audience (default: the URL)"),
    arg(
        "--attempt-deadline",
        type=int,
        default=scheduler.DEFAULT_ATTEMPT_DEADLINE_S,
        help="seconds Cloud Scheduler waits for an answer",
    ),
    arg(
        "--api-endpoint",
        help="call this Cloud Scheduler endpoint without credentials (a local double) instead of Google's",
    ),
)
def run_schedule(args: argparse.Namespace) -> int:
    """create or update the Cloud Scheduler job that calls retention_sweep"""
    from google.api_core import exceptions as gexc
    from requests import exceptions as http_errors

    job = scheduler.SweepJob(
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
    try:
        client = scheduler.scheduler_client(api_endpoint=args.api_endpoint, credentials=credentials)
        result = scheduler.upsert_job(client, job)
    except gexc.GoogleAPICallError as exc:
        printers.schedule_failed(f"answered {exc.code} {exc.message}", job)
        return EXIT_FAILED
    except http_errors.ConnectionError:
        printers.schedule_failed("is unreachable", job)
        return EXIT_FAILED
    printers.scheduled(result, job)
    return EXIT_OK


@command(
    "grant",
    USER,
    arg("amount", type=int, help="credits to add (positive)"),
    arg("--reason", required=True, help="why, stored on the ledger entry"),
    arg("--id", required=True, help="grant id: the same id never grants twice (e.g. a ticket number)"),
    arg(
        "--category",
        choices=CATEGORIES,
        default=PROMOTIONAL,
        help="paid or promotional (default %(default)s): promotional is spent first at equal terms",
    ),
    arg("--expires-in-days", type=float, help="the grant expires this long from now (default never)"),
    arg(
        "--priority",
        type=int,
        default=DEFAULT_PRIORITY,
        help="0..100, lower spent first (default %(default)s)",
    ),
    arg(
        "--allow-unknown-user",
        action="store_true",
        help="grant even if no Firebase Auth account has this uid (refused by default)",
    ),
)
def run_grant(args: argparse.Namespace) -> int:
    """give a user credits (support, promotion), idempotent by --id

    A second run with the same --id grants nothing and says so. A uid with no Firebase Auth account
    is refused unless --allow-unknown-user: a mistyped uid would create a user holding the credits.
    """
    from functions.lib import auth, db, ledger

    if not args.allow_unknown_user and not auth.lookup_account(args.user).exists:
        raise UsageError(
            f"no Firebase Auth account has uid {args.user!r}; check it, or pass --allow-unknown-user to "
            "grant anyway"
        )
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
    printers.granted(posted, args.user, args.category, args.priority, args.expires_in_days)
    return EXIT_OK


@command(
    "void",
    USER,
    arg("grant_id", help="the grant's id (its ledger entry, e.g. grant_promo-7; see `ledger`)"),
    arg("--reason", required=True, help="why, stored on the void entry"),
)
def run_void(args: argparse.Namespace) -> int:
    """write off what a grant still holds, idempotent"""
    from functions.lib import db, ledger

    printers.voided(ledger.void(db.get_client(), args.user, args.grant_id, args.reason), args.grant_id)
    return EXIT_OK


@command(
    "backfill-shards",
    arg("--dry-run", action="store_true", help="count what would be set; write nothing"),
)
def run_backfill_shards(args: argparse.Namespace) -> int:
    """give documents written before index shards existed their shard (once)"""
    from functions.lib import db

    client = db.get_client()
    for collection in db.SHARDED_COLLECTIONS:
        progress = functools.partial(printers.backfill_progress, collection, dry_run=args.dry_run)
        done = db.backfill_shards(client, collection, dry_run=args.dry_run, progress=progress)
        printers.backfilled(collection, done, dry_run=args.dry_run)
    return EXIT_OK


@command("status")
def run_status(args: argparse.Namespace) -> int:
    """one screen: what needs an operator, and the command for each"""
    from functions.lib import db, operations
    from functions.lib.config import get_settings

    printers.status(operations.status(db.get_client(), get_settings()))
    return EXIT_OK


@command(
    "ledger",
    USER,
    arg("--limit", type=int, default=50, help="entries to show (default %(default)s)", check=count),
)
def run_ledger(args: argparse.Namespace) -> int:
    """a user's balance and latest ledger entries"""
    from functions.lib import db, ledger

    printers.ledger(args.user, ledger.statement(db.get_client(), args.user, limit=args.limit))
    return EXIT_OK


@command(
    "audit",
    arg(
        "--progress-every",
        type=int,
        default=1000,
        help="print progress every N users (default %(default)s)",
        check=count,
    ),
)
def run_audit(args: argparse.Namespace) -> int:
    """check every user's balance == sum of ledger, below 0 only after a reversal

    Streams every user and ledger entry, prints progress, and lists every difference (exit 4).
    """
    from functions.lib import db
    from functions.lib.audit import audit

    started = time.monotonic()
    report = audit(db.get_client(), printers.audit_progress, every=args.progress_every)
    printers.audit_done(report, time.monotonic() - started)
    return EXIT_OK if report.clean else EXIT_DIFFERENCES


@command(
    "replay",
    arg(
        "event_id",
        help="the Stripe event id (evt_...) in stripe_event_problems",
        check=an_id("a Stripe event id"),
    ),
)
def run_replay(args: argparse.Namespace) -> int:
    """run a stored problem Stripe event again through the webhook's code path

    For a permanent problem an operator has since fixed (e.g. a pack added to CREDIT_PACKS); exits 1
    while the event stays open (still parked, or a problem again).
    """
    from functions.lib import db, payments
    from functions.lib.config import get_settings

    outcome = payments.replay_problem(db.get_client(), get_settings(), args.event_id)
    still_open = outcome.action in (payments.Action.PROBLEM, payments.Action.PARKED)
    printers.replayed(args.event_id, outcome, still_open=still_open)
    return EXIT_FAILED if still_open else EXIT_OK


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


@command("export", USER, arg("--out", help="write to this file instead of stdout"))
def run_export(args: argparse.Namespace) -> int:
    """everything kept about a user, as one JSON document (what account GET answers)

    To stdout, or to --out: a file only its owner may read (mode 0600, also when it existed).
    Progress goes to stderr.
    """
    from functions.lib import db, user_data

    # Closed below (a `with` cannot hold stdout, which must stay open).
    try:
        out: TextIO = open_private(args.out) if args.out else sys.stdout
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror}") from None
    started = last = time.monotonic()
    written = 0
    try:
        for piece in user_data.export(db.get_client(), args.user):
            out.write(piece)
            written += len(piece)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                printers.export_progress(written, last - started)
        out.write("\n")
    finally:
        if out is not sys.stdout:
            out.close()
    printers.exported(args.user, written, time.monotonic() - started)
    return EXIT_OK


@command("forget", USER)
def run_forget(args: argparse.Namespace) -> int:
    """erase a user as account DELETE does: data deleted, ledger kept under a pseudonym

    The same code as the DELETE; running it again finishes an interrupted erasure. Progress goes
    to stderr.
    """
    from functions.lib import auth, db, user_data

    printers.erasing(args.user)
    report = user_data.erase(
        db.get_client(), args.user, delete_login=auth.delete_login, progress=printers.erasure_progress
    )
    printers.erased(report.body())
    return EXIT_OK


@command("sync-catalog")
def run_sync_catalog(args: argparse.Namespace) -> int:
    """read the packs' and plans' prices from Stripe into catalog/current (what `catalog` serves)

    With STRIPE_SECRET_KEY; prints what changed, and writes nothing when nothing did. Run it after
    changing CREDIT_PACKS or PLANS, or a price in Stripe.
    """
    from functions.lib import catalog, db, stripe_api
    from functions.lib.config import get_settings

    settings = get_settings()

    def retrieve(price: str) -> catalog.StripePrice:
        return catalog.StripePrice.of(stripe_api.retrieve_price(settings, price))

    report = catalog.sync(db.get_client(), settings, retrieve)
    printers.catalog_synced(report, len(settings.credit_packs) + len(settings.plans))
    return EXIT_OK


# The parser and main -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operator commands for the credits backend.",
        epilog="exit status: " + "; ".join(f"{code} {means}" for code, means in EXITS.items()),
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        doc = inspect.getdoc(cmd.run) or ""
        sub = subparsers.add_parser(
            cmd.name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for a in cmd.args:
            sub.add_argument(*a.flags, **a.options)
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
    command = COMMANDS[args.command]
    try:
        refuse_unsafe_environment()
        command.check(args)
        return int(command.run(args))
    except UsageError as exc:
        printers.failed(args.command, str(exc))
        return EXIT_FAILED
    except ConfigError as exc:
        printers.config_error(exc)
        return EXIT_CONFIG
    except AppError as exc:
        printers.failed(args.command, exc.message)
        return EXIT_FAILED
    except Exception as exc:
        from google.auth.exceptions import DefaultCredentialsError, RefreshError

        from functions.lib.db import firestore_unavailable

        if isinstance(exc, DefaultCredentialsError | RefreshError):
            printers.failed(args.command, no_credentials_hint(args.command, exc))
            return EXIT_CONFIG
        if not firestore_unavailable(exc):
            raise
        printers.failed(args.command, f"Firestore is unreachable ({type(exc).__name__}); run it again later")
        return EXIT_FAILED
