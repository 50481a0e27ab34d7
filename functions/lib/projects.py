"""Deleting one project with all its versions: the one routine that the retention sweep, its purge
task and a user's erasure share (docs/ARCHITECTURE.md, "Retention" and "A user's data").

Versions are listed page by page with ListDocuments (names only, one response per page; a query
streams one message per document and cost 4-8x the client CPU, measured in bench/bench_retention.py)
and deleted in commits of at most 500 writes: 499 versions, and the project document rides in the
final commit. Memory holds one page and one chunk, never all ids. The project document goes last,
so a run that stops part-way leaves the project, and whatever found it finds it again. Every delete
carries an `exists` precondition (`db.delete_existing`): a commit racing another deleter fails and
is retried with the documents still there, so each caller counts exactly what it deleted.

Which project may be deleted is the caller's decision, taken before it calls: the sweep and the
purge task only one they have marked (`retention.mark_for_deletion`: still expired, or marked by an
earlier pass), erasure only what its query on `ownerId` finds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from functions.lib import db, schema

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentReference


@dataclass(frozen=True, kw_only=True)
class Committed:
    """One commit of a project's deletion."""

    versions: int  # the versions it deleted
    versions_so_far: int  # the versions this deletion has deleted, this commit included
    last: bool  # the final commit, the one that carries the project document
    project_deleted: bool  # the final commit deleted the project document (not someone else first)


@dataclass
class Deletion:
    """What `delete_project` did."""

    versions_deleted: int = 0
    project_deleted: bool = False
    finished: bool = False  # False: `has_time` said no before the final commit


def delete_project(
    client: Client,
    project_ref: DocumentReference,
    *,
    commit: db.Commit = db.commit_batch,
    has_time: Callable[[], bool] = lambda: True,
    on_commit: Callable[[Committed], None] | None = None,
) -> Deletion:
    """Delete the project's versions, then the project document (module docstring).

    `commit` commits each batch (callers count them); `has_time()` is asked before each commit, and
    a no stops the deletion there (`finished` false; the next call resumes); `on_commit` hears each
    commit. Raises `Contention` when other writers keep deleting the same documents.
    """
    done = Deletion()

    def delete(refs: list[DocumentReference], *, last: bool) -> None:
        deleted = db.delete_existing(client, refs, commit=commit)
        project_deleted = last and any(ref.path == project_ref.path for ref in deleted)
        versions = len(deleted) - int(project_deleted)
        done.versions_deleted += versions
        done.project_deleted = project_deleted
        if on_commit is not None:
            on_commit(
                Committed(
                    versions=versions,
                    versions_so_far=done.versions_deleted,
                    last=last,
                    project_deleted=project_deleted,
                )
            )

    chunk: list[DocumentReference] = []
    for ref in project_ref.collection(schema.VERSIONS).list_documents(
        page_size=db.MAX_COMMIT_WRITES, **db.rpc()
    ):
        chunk.append(ref)
        if len(chunk) < db.MAX_COMMIT_WRITES:
            continue
        # 500 in hand: delete 499 and keep one back, so the final commit (which must carry the
        # project document) never exceeds 500 writes, even when exactly 500 versions remain.
        if not has_time():
            return done
        delete(chunk[:-1], last=False)
        chunk = chunk[-1:]
    if not has_time():
        return done
    delete([*chunk, project_ref], last=True)
    done.finished = True
    return done
