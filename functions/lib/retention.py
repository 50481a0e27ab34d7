"""Retention: the nightly sweep that settles stale charges and deletes expired data
(docs/ARCHITECTURE.md, "Retention").

Policy: a generation still `charged` STALE_CHARGE_AFTER_S after its `createdAt` was left by a
killed process and is refunded through `generations.refund` (exactly once, `refund_{id}`); a
project whose `updatedAt` is older than RETENTION_DAYS is deleted with all its versions;
`analytics_events` older than ANALYTICS_RETENTION_DAYS are deleted. Refunds go first: money owed
to users must not wait behind a backlog of deletions.

How a project is deleted, safely against live use and against a second sweep running at once:
1. Mark: one optimistic commit re-reads the project and sets `deletingAt` only while it is still
   expired and unmarked, under a precondition on its update time. `generate` touches `updatedAt`
   under the same kind of precondition when it charges an iteration and refuses marked projects,
   so a racing iteration either lands first (the project is fresh again and kept) or gets 404.
   Once a project is marked, nothing adds a version to it.
2. Versions are listed page by page with ListDocuments (names only, one response per page; a
   query streams one message per document and cost 4-8x the client CPU, measured in
   bench/bench_retention.py) and deleted in commits of at most 500 writes: 499 versions, and the
   project document rides in the final commit. Memory holds one page and one chunk per worker,
   never all ids.
3. The project document goes last, so a run that stops part-way leaves a marked project, which
   the next run resumes before it looks for newly expired ones.
Every delete carries an `exists` precondition: a commit racing another sweep fails instead of
deleting a document "twice", and is retried with the documents still there, so each run counts
exactly what it deleted.

Fan-out: when a pass finds more expired projects than SWEEP_INLINE_PROJECTS and a task queue is
reachable (`enqueue` is given), it only marks each project and enqueues one task for it; the task
(`purge_project`, served by the `purgeProject` task queue function) deletes that one project by the
same steps 2-3, with the same `deletingAt` check, so the work spreads over as many instances as
the queue dispatches at once and a failed task is retried by Cloud Tasks. Without a queue the pass
deletes inline. A repeat enqueue of the same project on the same night is harmless: the task name
derives from the project and the night, and the queue refuses a second task of that name. A
project the queue does not take (`Unavailable`) stays marked and is deferred like a contended one:
the pass goes on (`complete` false) and the next one enqueues it again.

The time budget (SWEEP_BUDGET_S) is checked before every step against the longest step seen so
far, so a run stops cleanly before it; `complete` is false when it stopped with work left.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from functions.lib import db, schema, settlement
from functions.lib.config import Settings
from functions.lib.errors import Contention, Unavailable

if TYPE_CHECKING:
    from google.cloud.firestore import Client, CollectionReference, DocumentReference, Query, WriteBatch

log = logging.getLogger("retention")

MAX_COMMIT_WRITES = 500
QUERY_PAGE = 100
DELETE_ATTEMPTS = 10
DEFAULT_WORKERS = 2
MARKED, KEPT, GONE = "marked", "kept", "gone"

# progress(event, fields): events are expired, project, chunk, refunded, events, stopped, and in a
# dry run would_delete_project, would_refund, would_delete_events.
Progress = Callable[[str, dict[str, Any]], None]
# commit(batch): how a deletion batch is committed; tests pass one that counts its writes.
Commit = Callable[["WriteBatch"], object]
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


def _commit_with_deadline(batch: WriteBatch) -> object:
    return batch.commit(**db.rpc())


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


class _Pass:
    """One sweep pass: its clock and budget, its tallies (shared by the worker threads), its steps."""

    def __init__(
        self,
        client: Client,
        settings: Settings,
        now: datetime,
        clock: Callable[[], float],
        dry_run: bool,
        progress: Progress | None,
        commit: Commit,
        workers: int,
        enqueue: Enqueue | None = None,
        inline_projects: int = 0,
    ) -> None:
        self.client = client
        self.clock = clock
        self.dry_run = dry_run
        self.progress = progress
        self.commit = commit
        self.workers = max(1, workers)
        self.enqueue = enqueue
        self.inline_projects = inline_projects
        self.started = clock()
        self.deadline = self.started + settings.sweep_budget_s
        self.project_cutoff = now - timedelta(days=settings.retention_days)
        self.now = now
        self.settings = settings
        self.event_cutoff = now - timedelta(days=settings.analytics_retention_days)
        self.problem_cutoff = now - timedelta(days=settings.problem_retention_days)
        self.report = SweepReport(dry_run=dry_run)
        self.longest_step = 0.0
        self.stopped = False
        self.left_over = False
        self.counted: set[str] = set()
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        if self.progress is not None:
            self.progress(event, fields)

    def has_time(self) -> bool:
        """Whether one more step (as long as the longest so far) fits in the budget."""
        with self._lock:
            if self.stopped:
                return False
            if self.clock() + self.longest_step < self.deadline:
                return True
            self.stopped = True
        self.emit("stopped", elapsedMs=self.elapsed_ms())
        return False

    def step_took(self, seconds: float) -> None:
        with self._lock:
            self.longest_step = max(self.longest_step, seconds)

    def elapsed_ms(self) -> int:
        return round((self.clock() - self.started) * 1000)

    def tally(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self.report, name, getattr(self.report, name) + n)

    def delete(self, refs: list[DocumentReference]) -> list[DocumentReference]:
        """Delete up to 500 documents in one commit; return those this commit deleted."""
        from google.api_core import exceptions as gexc

        assert len(refs) <= MAX_COMMIT_WRITES
        must_exist = self.client.write_option(exists=True)
        for _ in range(DELETE_ATTEMPTS):
            if not refs:
                return []
            batch = self.client.batch()
            for ref in refs:
                batch.delete(ref, option=must_exist)
            try:
                self.commit(batch)
            except (gexc.NotFound, gexc.FailedPrecondition):
                # Another sweep deleted some of these first: delete (and count) only those still there.
                refs = [
                    snap.reference
                    for snap in self.client.get_all(refs, field_paths=["createdAt"], **db.rpc())
                    if snap.exists
                ]
                continue
            with self._lock:
                self.report.commits += 1
                self.report.max_commit_writes = max(self.report.max_commit_writes, len(refs))
            return refs
        raise Contention("Other writers kept deleting the same documents; the next sweep will finish.")

    # Settlement -----------------------------------------------------------------------------

    def settle_stale_charges(self) -> None:
        def progress(event: str, fields: dict[str, Any]) -> None:
            self.emit(event, **fields)

        settled = settlement.settle_stale_charges(
            self.client,
            self.settings,
            now=self.now,
            has_time=self.has_time,
            dry_run=self.dry_run,
            progress=progress,
        )
        self.tally(refunds_settled=settled.refunds_settled)
        if settled.deferred:
            self.left_over = True

    # Projects ---------------------------------------------------------------------------------

    def sweep_projects(self, query: Query | list[Query], *, announce: bool, fan_out: bool = False) -> None:
        """Delete (or with `fan_out`, enqueue) every project `query` finds, `workers` projects at a time."""
        step = self.enqueue_project if fan_out else self.delete_project
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sweep") as pool:
            running: set[Future[None]] = set()
            for snap in db.pages(query, QUERY_PAGE):
                if not self.has_time():
                    break
                if self.dry_run:
                    if snap.id not in self.counted:  # a marked project is usually expired too
                        self.counted.add(snap.id)
                        self.count_project(snap.reference)
                    continue
                if announce:
                    self.emit("expired", projectId=snap.id)
                if len(running) >= self.workers:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                running.add(pool.submit(self.sweep_project, snap.reference, step))
            for future in running:
                future.result()

    def count_project(self, project_ref: DocumentReference) -> None:
        versions = db.count(project_ref.collection(schema.VERSIONS))
        self.tally(projects_deleted=1, versions_deleted=versions)
        self.emit("would_delete_project", projectId=project_ref.id, versions=versions)

    def sweep_project(
        self, project_ref: DocumentReference, step: Callable[[DocumentReference], None] | None = None
    ) -> None:
        """Delete one project (or `step` it); one that keeps conflicting is left for the next pass,
        not the end of this one."""
        try:
            (step or self.delete_project)(project_ref)
        except Contention:
            log.warning(
                "project %s kept conflicting with other writers; the next sweep retries it", project_ref.id
            )
            self.defer(project_ref)

    def defer(self, project_ref: DocumentReference) -> None:
        """Leave the project for the next pass: this one goes on, and reports itself incomplete."""
        self.left_over = True
        self.tally(projects_deferred=1)
        self.emit("deferred", projectId=project_ref.id)

    def fans_out(self) -> bool:
        """Whether this pass hands projects to the queue: one is there and the night is large."""
        return (
            self.enqueue is not None
            and not self.dry_run
            and db.count(expired_projects(self.client, self.project_cutoff)) > self.inline_projects
        )

    def enqueue_project(self, project_ref: DocumentReference) -> None:
        """Mark the project (a purge task deletes only marked projects), then enqueue its task."""
        assert self.enqueue is not None
        if mark_for_deletion(self.client, project_ref, self.project_cutoff) != MARKED:
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
            self.tally(projects_enqueued=1)
            self.emit("enqueued", projectId=project_ref.id)

    def delete_project(self, project_ref: DocumentReference) -> None:
        if mark_for_deletion(self.client, project_ref, self.project_cutoff) != MARKED:
            return
        versions_deleted = 0
        chunk: list[DocumentReference] = []
        step_started = self.clock()
        for ref in project_ref.collection(schema.VERSIONS).list_documents(
            page_size=MAX_COMMIT_WRITES, **db.rpc()
        ):
            chunk.append(ref)
            if len(chunk) < MAX_COMMIT_WRITES:
                continue
            # 500 in hand: delete 499 and keep one back, so the final commit (which must carry the
            # project document) never exceeds 500 writes, even when exactly 500 versions remain.
            if not self.has_time():
                self.left_over = True
                return
            n = len(self.delete(chunk[:-1]))
            chunk = chunk[-1:]
            versions_deleted += n
            self.tally(versions_deleted=n)
            self.emit("chunk", projectId=project_ref.id, versionsDeleted=versions_deleted)
            now = self.clock()
            self.step_took(now - step_started)
            step_started = now
        if not self.has_time():
            self.left_over = True
            return
        deleted = self.delete([*chunk, project_ref])
        project_deleted = any(ref.path == project_ref.path for ref in deleted)
        versions_deleted += len(deleted) - project_deleted
        self.tally(versions_deleted=len(deleted) - project_deleted, projects_deleted=int(project_deleted))
        self.step_took(self.clock() - step_started)
        self.emit(
            "project", projectId=project_ref.id, versionsDeleted=versions_deleted, deleted=project_deleted
        )

    # Analytics events and stored Stripe events ----------------------------------------------

    def delete_old(self, query: Query | list[Query], counter: str) -> None:
        """Delete what `query` finds, 500 per commit; `counter` is the report field that counts them."""
        if self.dry_run:
            if self.has_time():
                n = db.count(query)
                self.tally(**{counter: n})
                self.emit("would_delete", what=counter, count=n)
            return
        chunk: list[DocumentReference] = []
        for snap in db.pages(query, MAX_COMMIT_WRITES):
            chunk.append(snap.reference)
            if len(chunk) < MAX_COMMIT_WRITES:
                continue
            if not self.flush(chunk, counter):
                return
            chunk = []
        if chunk:
            self.flush(chunk, counter)

    def flush(self, chunk: list[DocumentReference], counter: str) -> bool:
        if not self.has_time():
            return False
        step_started = self.clock()
        self.tally(**{counter: len(self.delete(chunk))})
        self.emit("deleted", what=counter, count=getattr(self.report, counter))
        self.step_took(self.clock() - step_started)
        return True

    def run(self) -> SweepReport:
        self.settle_stale_charges()
        fan_out = not self.stopped and self.fans_out()
        self.report.fanned_out = fan_out
        # Marked projects first: a pass that stopped part-way left them half deleted.
        if not self.stopped:
            self.sweep_projects(marked_projects(self.client), announce=False, fan_out=fan_out)
        if not self.stopped:
            self.sweep_projects(
                expired_projects(self.client, self.project_cutoff), announce=True, fan_out=fan_out
            )
        if not self.stopped:
            self.delete_old(old_events(self.client, self.event_cutoff), "events_deleted")
        if not self.stopped:
            self.delete_old(old_problems(self.client, self.problem_cutoff), "problems_deleted")
        if not self.stopped:
            self.delete_old(expired_limits(self.client, self.now), "limits_deleted")
        if not self.stopped:
            self.delete_old(expired_limits(self.client, self.now, schema.RATE_LIMITS), "limits_deleted")
        self.report.complete = not self.stopped and not self.left_over
        self.report.elapsed_ms = self.elapsed_ms()
        return self.report


def sweep(
    client: Client,
    settings: Settings,
    *,
    now: datetime | None = None,
    clock: Callable[[], float] = time.monotonic,
    dry_run: bool = False,
    progress: Progress | None = None,
    commit: Commit = _commit_with_deadline,
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
    run = _Pass(
        client,
        settings,
        now or datetime.now(UTC),
        clock,
        dry_run,
        progress,
        commit,
        workers,
        enqueue,
        settings.sweep_inline_projects,
    )
    report = run.run()
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
    commit: Commit = _commit_with_deadline,
) -> SweepReport:
    """Delete one expired project with its versions: the task of the sweep's fan-out.

    The same rules as an inline sweep: the project is deleted only while it is marked (or still
    expired, and then marked first), in commits of at most 500 writes with the project document
    last, within SWEEP_BUDGET_S. `complete` is false when the budget or contention stopped it
    part-way; running it again resumes. A project that is gone or was active again is left alone.
    """
    run = _Pass(client, settings, now or datetime.now(UTC), clock, False, None, commit, 1)
    run.sweep_project(client.collection(schema.PROJECTS).document(project_id))
    run.report.complete = not run.stopped and not run.left_over
    run.report.elapsed_ms = run.elapsed_ms()
    state = "complete" if run.report.complete else "stopped with work left"
    log.info("purge of project %s %s", project_id, state, extra={"json_fields": run.report.log_fields()})
    return run.report
