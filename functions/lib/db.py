"""Firestore access: one lazy client per process, and the optimistic commit that money paths use.

Why optimistic commits instead of `@transactional`: a Firestore transaction costs a BeginTransaction
round trip, and on the emulator contending transactions wait on a 2 s lock. A plan that reads with
plain gets and commits one batch whose writes carry preconditions (`create` for new ids, the
update time as read for existing documents) is serializable for the documents it writes, and a
conflict costs one fast failed commit instead of a lock wait. The plan never calls the network
beyond Firestore, so re-running it is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from functions.lib.config import get_settings
from functions.lib.errors import Contention, Unavailable
from functions.lib.once import once
from functions.lib.schema import USERS

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentReference, DocumentSnapshot, Query, WriteBatch

log = logging.getLogger(__name__)
T = TypeVar("T")
# Commit(batch): how a bulk batch is committed; tests and benchmarks pass one that counts writes.
Commit = Callable[["WriteBatch"], object]
MAX_COMMIT_WRITES = 500
MAX_ATTEMPTS = 12
DELETE_ATTEMPTS = 10
RPC_TIMEOUT_S = 10.0


@once
def rpc() -> dict[str, Any]:
    """Keyword arguments for every Firestore call: a bounded retry of transient errors.

    Without them a read against an unreachable Firestore retries for minutes (measured: a
    `get_all` with only `timeout=5` still hung at 100 s), so an outage would hang requests until
    the function's own timeout instead of answering a retryable 503. 10 s leaves room for a slow
    first call (a cold emulator JVM under load took over 5 s) and stays far below every timeout.
    """
    from google.api_core import exceptions as gexc
    from google.api_core.retry import Retry, if_exception_type

    transient = if_exception_type(gexc.ServiceUnavailable, gexc.InternalServerError, gexc.DeadlineExceeded)
    return {
        "retry": Retry(predicate=transient, initial=0.05, maximum=0.5, multiplier=2, timeout=RPC_TIMEOUT_S),
        "timeout": RPC_TIMEOUT_S,
    }


@once
def get_client() -> Client:
    """The process's Firestore client, created on first use (never at import)."""
    from google.cloud import firestore

    settings = get_settings()
    if settings.firestore_emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return firestore.Client(project=settings.project, credentials=AnonymousCredentials())
    return firestore.Client(project=settings.project)


class Moved(Exception):
    """Raised by a plan whose reads disagree because another writer committed between them: decide
    again from fresh reads, as after a failed precondition."""


@dataclass
class Plan(Generic[T]):
    """What one attempt decided: a batch to commit (None for a read-only answer) and the result.

    The result is either known now (`result`) or built from the commit time by `then`; the commit
    time is the update time of every document the batch wrote (useful as a later precondition).
    """

    result: T | None = None
    batch: WriteBatch | None = None
    then: Callable[[datetime], T] | None = None


def get_all(client: Client, refs: list[DocumentReference]) -> list[DocumentSnapshot]:
    """Snapshots in the order of `refs` (get_all streams them back in any order)."""
    by_path = {snap.reference.path: snap for snap in client.get_all(refs, **rpc())}
    return [by_path[ref.path] for ref in refs]


def pages(
    query: Query | list[Query], page_size: int = 100, *, read_time: datetime | None = None
) -> Iterator[DocumentSnapshot]:
    """Every result of `query` (which must have a total order), `page_size` at a time; of each in
    turn for a list (the shards of one query, `sharded`).

    Each page is its own short RPC continuing after the last snapshot of the one before, so no
    stream stays open across work done in between and memory holds one page. With `read_time`,
    every page reads the database as it was at that moment (within the last hour).
    """
    if isinstance(query, list):
        for one in query:
            yield from pages(one, page_size, read_time=read_time)
        return
    cursor: DocumentSnapshot | None = None
    while True:
        page_query = query.limit(page_size) if cursor is None else query.start_after(cursor).limit(page_size)
        page = list(page_query.stream(read_time=read_time, **rpc()))
        yield from page
        if len(page) < page_size:
            return
        cursor = page[-1]


# Firestore sustains about 500 writes/s into an index whose values only grow (a server timestamp):
# every write lands at the end of one key range. Collections written by `generate` (generations,
# projects, analytics events) carry `shard` (0..INDEX_SHARDS-1, from the document id) and the
# queries on their timestamps lead with it, so those writes spread over 16 ranges (docs/ARCHITECTURE.md,
# "Indexes and hot spots").
INDEX_SHARDS = 16


def shard_of(doc_id: str) -> int:
    """The index shard of a document: stable for its id, uniform over INDEX_SHARDS."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) % INDEX_SHARDS


def sharded(build: Callable[[int], Query]) -> list[Query]:
    """One query per index shard (`build(shard)`); together they find what the unsharded one would."""
    return [build(shard) for shard in range(INDEX_SHARDS)]


SHARDED_COLLECTIONS = ("generations", "projects", "analytics_events")


def backfill_shards(
    client: Client,
    collection: str,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Give every document of `collection` written before index shards existed its `shard`, in commits
    of at most 500 (without it the sharded queries of the sweep and settlement never find it).
    Pages by document name, which needs no index; idempotent. Returns how many it set (or would)."""
    done = seen = 0
    batch, pending = client.batch(), 0
    for snap in pages(
        client.collection(collection).order_by("__name__").select(["shard"]), MAX_COMMIT_WRITES
    ):
        seen += 1
        if isinstance((snap.to_dict() or {}).get("shard"), int):
            continue
        done += 1
        if dry_run:
            continue
        batch.update(snap.reference, {"shard": shard_of(snap.id)})
        pending += 1
        if pending == MAX_COMMIT_WRITES:
            commit_batch(batch)
            batch, pending = client.batch(), 0
            if progress is not None:
                progress(seen, done)
    if pending:
        commit_batch(batch)
    if progress is not None:
        progress(seen, done)
    return done


def count(query: Query | list[Query]) -> int:
    """A count aggregation: one RPC per query (per shard for a list), no documents read into memory."""
    if isinstance(query, list):
        return sum(count(one) for one in query)
    results: Any = query.count().get(**rpc())
    return int(results[0][0].value)


def read_time(client: Client) -> datetime:
    """The database's current time: the read time of a one-document read (it need not exist)."""
    snap = client.collection(USERS).document("read-time-probe").get(field_paths=["credits"], **rpc())
    at: datetime = snap.read_time
    return at


def commit_batch(batch: WriteBatch) -> object:
    """The default `Commit`: one Commit RPC under the bounded retry of `rpc()`."""
    return batch.commit(**rpc())


def drain(
    client: Client,
    query: Query,
    write: Callable[[WriteBatch, DocumentReference], object],
    *,
    commit: Commit | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Apply `write(batch, ref)` to every document `query` finds, in commits of at most 500 writes.

    `write` must take the document out of the query (delete it, or change the field the query
    filters on): each round asks the query again from its start, so no cursor outlives a commit,
    memory holds one round, and a run that stopped part-way resumes by running again. Returns
    the number of documents written; `progress(total)` hears each commit.
    """
    done = 0
    previous: set[str] = set()
    while True:
        refs = [snap.reference for snap in query.limit(MAX_COMMIT_WRITES).stream(**rpc())]
        if not refs:
            return done
        paths = {ref.path for ref in refs}
        if paths & previous:
            raise RuntimeError(f"drain: a write left documents in the query ({sorted(paths & previous)[0]})")
        batch = client.batch()
        for ref in refs:
            write(batch, ref)
        (commit or commit_batch)(batch)
        done += len(refs)
        previous = paths
        if progress is not None:
            progress(done)


def delete_existing(
    client: Client, refs: list[DocumentReference], *, commit: Commit | None = None
) -> list[DocumentReference]:
    """Delete up to 500 documents in one commit, each only while it exists; return those it deleted.

    Every delete carries an `exists` precondition: a commit racing another deleter fails instead of
    deleting a document "twice", and is retried with the documents still there, so a caller counts
    exactly what it deleted. Raises `Contention` when other writers keep winning.
    """
    from google.api_core import exceptions as gexc

    assert len(refs) <= MAX_COMMIT_WRITES
    must_exist = client.write_option(exists=True)
    for _ in range(DELETE_ATTEMPTS):
        if not refs:
            return []
        batch = client.batch()
        for ref in refs:
            batch.delete(ref, option=must_exist)
        try:
            (commit or commit_batch)(batch)
        except (gexc.NotFound, gexc.FailedPrecondition):
            # Another deleter was first with some of these: delete (and count) only those still there.
            refs = [
                snap.reference
                for snap in client.get_all(refs, field_paths=["createdAt"], **rpc())
                if snap.exists
            ]
            continue
        return refs
    raise Contention("Other writers kept deleting the same documents; the next run will finish.")


def precondition(client: Client, snap: DocumentSnapshot) -> Any:
    """The write option that makes a write fail if `snap`'s document changed since it was read."""
    return client.write_option(last_update_time=snap.update_time)


def where(field: str, op: str, value: Any) -> Any:
    """A query filter (`query.where(filter=db.where(...))`), imported only when a query is built."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(field, op, value)


def _unavailable_errors() -> tuple[type[Exception], ...]:
    """Errors meaning Firestore could not be reached or answer now: retry later. Beyond an outage or
    a timeout: a quota or too much contention (RESOURCE_EXHAUSTED), an aborted read, and credentials
    that could not be fetched (the metadata server did not answer)."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    return (
        gexc.ServiceUnavailable,
        gexc.DeadlineExceeded,
        gexc.InternalServerError,
        gexc.RetryError,
        gexc.ResourceExhausted,
        gexc.Aborted,
        auth_exc.TransportError,
    )


def commit_optimistically(plan: Callable[[], Plan[T]], *, attempts: int = MAX_ATTEMPTS) -> T:
    """Run `plan` (reads, then a batch with preconditions) until its batch commits.

    A failed precondition or an existing `create` id means another writer won: re-read and decide
    again. The plan sees the winner's writes, so a repeat of a deterministic ledger id answers from
    what is stored instead of writing twice. Exhausted attempts raise `Contention` (retryable,
    nothing written); a Firestore outage raises `Unavailable`.
    """
    from google.api_core import exceptions as gexc

    for attempt in range(attempts):
        try:
            decided = plan()
            if decided.batch is not None:
                results = decided.batch.commit(**rpc())
                if decided.then is not None:
                    return decided.then(results[0].update_time)
            return cast(T, decided.result)
        except (gexc.FailedPrecondition, gexc.Conflict, Moved):
            # Conflict covers ALREADY_EXISTS and ABORTED; jittered backoff spreads out the losers.
            time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
        except _unavailable_errors() as exc:
            log.warning("firestore unavailable: %s", type(exc).__name__)
            raise Unavailable() from exc
    raise Contention()


def firestore_unavailable(exc: BaseException) -> bool:
    """True for errors that mean Firestore could not be reached (retry later), not a bad request."""
    return isinstance(exc, _unavailable_errors())
