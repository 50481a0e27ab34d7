"""Retention: the nightly sweep that settles stale charges and deletes expired projects with their
versions, old analytics events, stored Stripe events and ended limit windows. The policy, the
mark-then-delete protocol and the fan-out to purge tasks: docs/ARCHITECTURE.md, "Retention" and
"Fan-out"; deleting one project is `lib/projects.py`.

The parts of a pass: `Budget` (SWEEP_BUDGET_S, checked before every step against the longest step
seen so far, so a run stops cleanly before it), `Tallies` (the report, counted into by the worker
threads), one piece per kind of work (`settle_charges`, `ProjectSweep`, `delete_old`), and
`Pass.run`, which takes the steps in order until the budget runs out; `complete` is false when it
stopped, or left work, for the next run. Refunds go first: money owed to users must not wait
behind a backlog of deletions. `purge_project` is one purge task's work.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from functions.lib import db, projects, schema, settlement
from functions.lib.config import Settings
from functions.lib.errors import Contention, Unavailable

if TYPE_CHECKING:
    from google.cloud.firestore import Client, CollectionReference, DocumentReference, Query

log = logging.getLogger("retention")

QUERY_PAGE = 100
DEFAULT_WORKERS = 2
MARKED, KEPT, GONE = "marked", "kept", "gone"


class SweepEvent(enum.StrEnum):
    """What `progress(event, fields)` hears from a pass, with its fields (`event` is the value: the
    operator CLI prints these). Settlement's own events (`settlement.Event`) pass through."""

    EXPIRED = "expired"  # projectId: found expired, not marked yet
    CHUNK = "chunk"  # projectId, versionsDeleted (so far): one commit of a project's versions
    PROJECT = "project"  # projectId, versionsDeleted, deleted (False: another sweep was first)
    DEFERRED = "deferred"  # projectId: kept conflicting, or the queue did not take it
    ENQUEUED = "enqueued"  # projectId: handed to a purge task
    DELETED = "deleted"  # what (a Count), count (so far): one commit of old documents
    STOPPED = "stopped"  # elapsedMs: the budget is spent
    WOULD_DELETE_PROJECT = "would_delete_project"  # projectId, versions (dry run)
    WOULD_DELETE = "would_delete"  # what (a Count), count (dry run)


class Count(enum.StrEnum):
    """The report's counters that steps add to; each value is a `SweepReport` field, and the `what`
    of a `deleted` or `would_delete` event."""

    PROJECTS_DELETED = "projects_deleted"
    VERSIONS_DELETED = "versions_deleted"
    PROJECTS_DEFERRED = "projects_deferred"
    PROJECTS_ENQUEUED = "projects_enqueued"
    REFUNDS_SETTLED = "refunds_settled"
    EVENTS_DELETED = "events_deleted"
    PROBLEMS_DELETED = "problems_deleted"
    LIMITS_DELETED = "limits_deleted"


# progress(event, fields): the events are SweepEvent's and settlement's (their values).
Progress = Callable[[str, dict[str, Any]], None]
# commit(batch): how a deletion batch is committed; tests pass one that counts its writes.
Commit = db.Commit
# enqueue(projectId): put one purge task on the queue; False when that task was already enqueued;
# raises Unavailable when the queue cannot take it.
Enqueue = Callable[[str], bool]


@dataclass
class SweepReport:
    """What one pass did. In a dry run the counts are what it would have done."""

    complete: bool = False
    projects_deleted: int = 0
    versions_deleted: int = 0
    commits: int = 0
    max_commit_writes: int = 0
    refunds_settled: int = 0
    projects_deferred: int = 0
    events_deleted: int = 0
    problems_deleted: int = 0
    limits_deleted: int = 0
    elapsed_ms: int = 0
    dry_run: bool = False
    fanned_out: bool = False
    projects_enqueued: int = 0

    def body(self) -> dict[str, Any]:
        """The answer of `retention_sweep`: the contract's keys, plus `projectsDeferred` and, after a
        fan-out, `projectsEnqueued`."""
        fan_out = {"projectsEnqueued": self.projects_enqueued} if self.fanned_out else {}
        return {
            "complete": self.complete,
            "projectsDeleted": self.projects_deleted,
            "versionsDeleted": self.versions_deleted,
            "commits": self.commits,
            "maxCommitWrites": self.max_commit_writes,
            "refundsSettled": self.refunds_settled,
            "projectsDeferred": self.projects_deferred,
            "elapsedMs": self.elapsed_ms,
            **fan_out,
        }

    def log_fields(self) -> dict[str, Any]:
        return {
            **self.body(),
            "eventsDeleted": self.events_deleted,
            "problemsDeleted": self.problems_deleted,
            "limitsDeleted": self.limits_deleted,
            "dryRun": self.dry_run,
        }


def _older(query: Query | CollectionReference, field: str, cutoff: datetime) -> Query:
    """What `query` finds whose `field` is before `cutoff`, oldest first, reading only that field."""
    return query.where(filter=db.where(field, "<", cutoff)).order_by(field).select([field])


def _in_shard(client: Client, collection: str, shard: int) -> Query:
    return client.collection(collection).where(filter=db.where("shard", "==", shard))


def expired_projects(client: Client, cutoff: datetime) -> list[Query]:
    """Projects whose last activity is older than `cutoff`, oldest first in each index shard."""
    return db.sharded(lambda shard: _older(_in_shard(client, schema.PROJECTS, shard), "updatedAt", cutoff))


def marked_projects(client: Client) -> Query:
    """Projects a sweep has marked `deletingAt` (their deletion may have stopped part-way)."""
    return (
        client.collection(schema.PROJECTS)
        .where(filter=db.where("deletingAt", "!=", None))
        .order_by("deletingAt")
        .select(["deletingAt"])
    )


def old_events(client: Client, cutoff: datetime) -> list[Query]:
    return db.sharded(lambda shard: _older(_in_shard(client, schema.EVENTS, shard), "createdAt", cutoff))


def expired_limits(client: Client, now: datetime, collection: str = schema.CHECKOUT_LIMITS) -> Query:
    """Rate-limit windows (checkout's, or `rate_limits`) that have ended (a new window starts from
    nothing anyway)."""
    return _older(client.collection(collection), "expiresAt", now)


def old_problems(client: Client, cutoff: datetime) -> Query:
    """Stored Stripe events not touched since `cutoff` (PROBLEM_RETENTION_DAYS)."""
    return _older(client.collection(schema.PROBLEMS), "updatedAt", cutoff)


def mark_for_deletion(client: Client, project_ref: DocumentReference, cutoff: datetime) -> str:
    """Set `deletingAt` if the project is still expired at `cutoff` and unmarked.

    Returns MARKED (by this call or an earlier sweep: delete it), KEPT (activity since it was found)
    or GONE. The write carries a precondition on the project as read, so an iteration that touches
    `updatedAt` in between makes it re-read and answer KEPT.
    """
    from google.cloud.firestore import SERVER_TIMESTAMP

    def plan() -> db.Plan[str]:
        snap = project_ref.get(**db.rpc())
        if not snap.exists:
            return db.Plan(GONE)
        data = snap.to_dict() or {}
        if data.get("deletingAt") is not None:
            return db.Plan(MARKED)
        updated = data.get("updatedAt")
        if not isinstance(updated, datetime) or updated >= cutoff:
            return db.Plan(KEPT)
        batch = client.batch()
        batch.update(project_ref, {"deletingAt": SERVER_TIMESTAMP}, option=db.precondition(client, snap))
        return db.Plan(MARKED, batch)

    return db.commit_optimistically(plan)


def _emit(progress: Progress | None, event: SweepEvent, **fields: Any) -> None:
    if progress is not None:
        progress(event.value, fields)


class Budget:
    """SWEEP_BUDGET_S of one pass, shared by its worker threads: one more step fits while it would
    end, as long as the longest step so far, before the deadline. Once it says no it stays stopped,
    and `on_stop(elapsedMs)` hears it once."""

    def __init__(self, *, seconds: float, clock: Callable[[], float], on_stop: Callable[[int], None]) -> None:
        self._clock = clock
        self._started = clock()
        self._deadline = self._started + seconds
        self._longest_step = 0.0
        self._on_stop = on_stop
        self._lock = threading.Lock()
        self.stopped = False

    def has_time(self) -> bool:
        with self._lock:
            if self.stopped:
                return False
            if self._clock() + self._longest_step < self._deadline:
                return True
            self.stopped = True
        self._on_stop(self.elapsed_ms())
        return False

    def timer(self) -> Callable[[], None]:
        """Start timing a step: each call of the `lap` returned ends one (measured) and starts the next."""
        started = self._clock()

        def lap() -> None:
            nonlocal started
            now = self._clock()
            with self._lock:
                self._longest_step = max(self._longest_step, now - started)
            started = now

        return lap

    def elapsed_ms(self) -> int:
        return round((self._clock() - self._started) * 1000)


class Tallies:
    """The pass's report, counted into by the worker threads under one lock, and whether any work
    was left for the next pass (a project stopped part-way or deferred, a charge settlement left)."""

    def __init__(self, *, dry_run: bool) -> None:
        self.report = SweepReport(dry_run=dry_run)
        self.work_left = False
        self._lock = threading.Lock()

    def add(self, count: Count, n: int = 1) -> int:
        """Add `n` to the counter; its new total."""
        with self._lock:
            total: int = getattr(self.report, count) + n
            setattr(self.report, count, total)
            return total

    def leave_work(self) -> None:
        self.work_left = True

    def counting(self, commit: Commit) -> Commit:
        """`commit`, counting each commit that succeeds and its writes (`commits`, `maxCommitWrites`)."""

        def counted(batch: Any) -> object:
            writes = len(batch)
            result = commit(batch)
            with self._lock:
                self.report.commits += 1
                self.report.max_commit_writes = max(self.report.max_commit_writes, writes)
            return result

        return counted


@dataclass(frozen=True, kw_only=True)
class Pass:
    """What every step of one pass shares: the client, the budget, the tallies, the counting commit
    and the progress listener. `run` takes the steps in order until the budget runs out."""

    client: Client
    budget: Budget
    tallies: Tallies
    commit: Commit
    progress: Progress | None = None
    dry_run: bool = False

    @classmethod
    def start(
        cls,
        *,
        client: Client,
        settings: Settings,
        clock: Callable[[], float],
        commit: Commit,
        progress: Progress | None = None,
        dry_run: bool = False,
    ) -> Pass:
        """A pass whose budget starts now."""
        budget = Budget(
            seconds=settings.sweep_budget_s,
            clock=clock,
            on_stop=lambda elapsed_ms: _emit(progress, SweepEvent.STOPPED, elapsedMs=elapsed_ms),
        )
        tallies = Tallies(dry_run=dry_run)
        return cls(
            client=client,
            budget=budget,
            tallies=tallies,
            commit=tallies.counting(commit),
            progress=progress,
            dry_run=dry_run,
        )

    def emit(self, event: SweepEvent, **fields: Any) -> None:
        _emit(self.progress, event, **fields)

    def run(self, steps: Iterable[Callable[[], None]]) -> SweepReport:
        """Each step in turn, none once the budget is spent; the report, `complete` only when it all ran
        and no work was left."""
        for step in steps:
            if self.budget.stopped:
                break
            step()
        report = self.tallies.report
        report.complete = not self.budget.stopped and not self.tallies.work_left
        report.elapsed_ms = self.budget.elapsed_ms()
        return report


# The kinds of work ------------------------------------------------------------------------------


def settle_charges(pass_: Pass, settings: Settings, now: datetime) -> None:
    """Refund the charges killed processes left (`settlement`), while the budget lasts."""
    settled = settlement.settle_stale_charges(
        pass_.client,
        settings,
        now=now,
        has_time=pass_.budget.has_time,
        dry_run=pass_.dry_run,
        progress=pass_.progress,
    )
    pass_.tallies.add(Count.REFUNDS_SETTLED, settled.refunds_settled)
    if settled.deferred:
        pass_.tallies.leave_work()


class ProjectSweep:
    """Expired projects: those an earlier pass marked, then newly expired ones (before `cutoff`), each
    deleted inline, `workers` at a time, or on a large night with a queue (`enqueue`) marked and
    handed to a purge task; a dry run counts them. One that keeps conflicting is deferred."""

    def __init__(
        self,
        *,
        pass_: Pass,
        cutoff: datetime,
        workers: int = 1,
        enqueue: Enqueue | None = None,
        inline_projects: int = 0,
    ) -> None:
        self.pass_ = pass_
        self.cutoff = cutoff
        self.workers = max(1, workers)
        self.enqueue = enqueue
        self.inline_projects = inline_projects
        self.fan_out = False
        self._counted: set[str] = set()  # a dry run's, across both queries

    def choose_fan_out(self) -> None:
        """Fan out when a queue is there and the night is larger than SWEEP_INLINE_PROJECTS."""
        self.fan_out = (
            self.enqueue is not None
            and not self.pass_.dry_run
            and db.count(expired_projects(self.pass_.client, self.cutoff)) > self.inline_projects
        )
        self.pass_.tallies.report.fanned_out = self.fan_out

    def resume_marked(self) -> None:
        """Marked projects first: a pass that stopped part-way left them half deleted."""
        self.sweep(marked_projects(self.pass_.client), announce=False)

    def sweep_expired(self) -> None:
        self.sweep(expired_projects(self.pass_.client, self.cutoff), announce=True)

    def sweep(self, query: Query | list[Query], *, announce: bool) -> None:
        """Every project `query` finds, `workers` at a time, while the budget lasts."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sweep") as pool:
            running: set[Future[None]] = set()
            for snap in db.pages(query, QUERY_PAGE):
                if not self.pass_.budget.has_time():
                    break
                if self.pass_.dry_run:
                    if snap.id not in self._counted:  # a marked project is usually expired too
                        self._counted.add(snap.id)
                        self.count(snap.reference)
                    continue
                if announce:
                    self.pass_.emit(SweepEvent.EXPIRED, projectId=snap.id)
                if len(running) >= self.workers:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                running.add(pool.submit(self.one, snap.reference))
            for future in running:
                future.result()

    def one(self, project_ref: DocumentReference) -> None:
        """Delete (or enqueue) one project; one that keeps conflicting is left for the next pass, not
        the end of this one."""
        try:
            (self.enqueue_one if self.fan_out else self.delete)(project_ref)
        except Contention:
            log.warning(
                "project %s kept conflicting with other writers; the next sweep retries it", project_ref.id
            )
            self.defer(project_ref)

    def count(self, project_ref: DocumentReference) -> None:
        versions = db.count(project_ref.collection(schema.VERSIONS))
        self.pass_.tallies.add(Count.PROJECTS_DELETED)
        self.pass_.tallies.add(Count.VERSIONS_DELETED, versions)
        self.pass_.emit(SweepEvent.WOULD_DELETE_PROJECT, projectId=project_ref.id, versions=versions)

    def defer(self, project_ref: DocumentReference) -> None:
        """Leave the project for the next pass: this one goes on, and reports itself incomplete."""
        self.pass_.tallies.leave_work()
        self.pass_.tallies.add(Count.PROJECTS_DEFERRED)
        self.pass_.emit(SweepEvent.DEFERRED, projectId=project_ref.id)

    def enqueue_one(self, project_ref: DocumentReference) -> None:
        """Mark the project (a purge task deletes only marked projects), then enqueue its task."""
        assert self.enqueue is not None
        if mark_for_deletion(self.pass_.client, project_ref, self.cutoff) != MARKED:
            return
        try:
            enqueued = self.enqueue(project_ref.id)
        except Unavailable as exc:
            log.warning(
                "the queue did not take project %s (%s); it stays marked for the next sweep",
                project_ref.id,
                exc,
            )
            self.defer(project_ref)
            return
        if enqueued:
            self.pass_.tallies.add(Count.PROJECTS_ENQUEUED)
            self.pass_.emit(SweepEvent.ENQUEUED, projectId=project_ref.id)

    def delete(self, project_ref: DocumentReference) -> None:
        """Mark the project, then delete it with its versions (`projects.delete_project`)."""
        if mark_for_deletion(self.pass_.client, project_ref, self.cutoff) != MARKED:
            return
        lap = self.pass_.budget.timer()

        def committed(commit: projects.Committed) -> None:
            self.pass_.tallies.add(Count.VERSIONS_DELETED, commit.versions)
            self.pass_.tallies.add(Count.PROJECTS_DELETED, int(commit.project_deleted))
            if not commit.last:
                self.pass_.emit(
                    SweepEvent.CHUNK, projectId=project_ref.id, versionsDeleted=commit.versions_so_far
                )
            lap()

        deletion = projects.delete_project(
            self.pass_.client,
            project_ref,
            commit=self.pass_.commit,
            has_time=self.pass_.budget.has_time,
            on_commit=committed,
        )
        if not deletion.finished:
            self.pass_.tallies.leave_work()
            return
        self.pass_.emit(
            SweepEvent.PROJECT,
            projectId=project_ref.id,
            versionsDeleted=deletion.versions_deleted,
            deleted=deletion.project_deleted,
        )


def delete_old(pass_: Pass, query: Query | list[Query], count: Count) -> None:
    """Delete what `query` finds (documents past their retention), 500 per commit while the budget
    lasts, adding them to `count`; a dry run only counts them."""
    if pass_.dry_run:
        if pass_.budget.has_time():
            n = db.count(query)
            pass_.tallies.add(count, n)
            pass_.emit(SweepEvent.WOULD_DELETE, what=count.value, count=n)
        return

    def flush(chunk: list[DocumentReference]) -> bool:
        if not pass_.budget.has_time():
            return False
        lap = pass_.budget.timer()
        total = pass_.tallies.add(count, len(db.delete_existing(pass_.client, chunk, commit=pass_.commit)))
        pass_.emit(SweepEvent.DELETED, what=count.value, count=total)
        lap()
        return True

    chunk: list[DocumentReference] = []
    for snap in db.pages(query, db.MAX_COMMIT_WRITES):
        chunk.append(snap.reference)
        if len(chunk) < db.MAX_COMMIT_WRITES:
            continue
        if not flush(chunk):
            return
        chunk = []
    if chunk:
        flush(chunk)


# The entry points -------------------------------------------------------------------------------


def sweep(
    client: Client,
    settings: Settings,
    *,
    now: datetime | None = None,
    clock: Callable[[], float] = time.monotonic,
    dry_run: bool = False,
    progress: Progress | None = None,
    commit: Commit = db.commit_batch,
    workers: int = DEFAULT_WORKERS,
    enqueue: Enqueue | None = None,
) -> SweepReport:
    """One retention pass: refund stale charges, delete expired projects and old analytics events.

    `now` sets the cutoffs (default: the current time); `clock` measures the SWEEP_BUDGET_S budget
    (0 stops before any step). `dry_run` writes nothing and reports what it would do. `progress`
    hears each step; `commit` commits each deletion batch; `workers` projects are deleted at once.
    `enqueue`, when a task queue is reachable, takes over the projects of a night larger than
    SWEEP_INLINE_PROJECTS (module docstring, "Fan-out").
    Safe to run concurrently with itself: nothing is refunded or counted twice.
    """
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now or datetime.now(UTC)
    pass_ = Pass.start(
        client=client, settings=settings, clock=clock, commit=commit, progress=progress, dry_run=dry_run
    )
    expired = ProjectSweep(
        pass_=pass_,
        cutoff=now - timedelta(days=settings.retention_days),
        workers=workers,
        enqueue=enqueue,
        inline_projects=settings.sweep_inline_projects,
    )
    events_cutoff = now - timedelta(days=settings.analytics_retention_days)
    problems_cutoff = now - timedelta(days=settings.problem_retention_days)
    report = pass_.run(
        [
            lambda: settle_charges(pass_, settings, now),
            expired.choose_fan_out,
            expired.resume_marked,
            expired.sweep_expired,
            lambda: delete_old(pass_, old_events(client, events_cutoff), Count.EVENTS_DELETED),
            lambda: delete_old(pass_, old_problems(client, problems_cutoff), Count.PROBLEMS_DELETED),
            lambda: delete_old(pass_, expired_limits(client, now), Count.LIMITS_DELETED),
            lambda: delete_old(pass_, expired_limits(client, now, schema.RATE_LIMITS), Count.LIMITS_DELETED),
        ]
    )
    log.info(
        "retention sweep %s",
        "complete" if report.complete else "stopped with work left",
        extra={"json_fields": report.log_fields()},
    )
    return report


def purge_project(
    client: Client,
    settings: Settings,
    project_id: str,
    *,
    now: datetime | None = None,
    clock: Callable[[], float] = time.monotonic,
    commit: Commit = db.commit_batch,
) -> SweepReport:
    """Delete one expired project with its versions: the task of the sweep's fan-out.

    The same rules as an inline sweep: the project is deleted only while it is marked (or still
    expired, and then marked first), in commits of at most 500 writes with the project document
    last, within SWEEP_BUDGET_S. `complete` is false when the budget or contention stopped it
    part-way; running it again resumes. A project that is gone or was active again is left alone.
    """
    now = now or datetime.now(UTC)
    pass_ = Pass.start(client=client, settings=settings, clock=clock, commit=commit)
    expired = ProjectSweep(pass_=pass_, cutoff=now - timedelta(days=settings.retention_days))
    report = pass_.run([lambda: expired.one(client.collection(schema.PROJECTS).document(project_id))])
    state = "complete" if report.complete else "stopped with work left"
    log.info("purge of project %s %s", project_id, state, extra={"json_fields": report.log_fields()})
    return report
