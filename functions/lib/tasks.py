"""The purge task queue: the sweep's fan-out enqueues one task per expired project on the queue of
the `purgeProject` task queue function (firebase-admin's `functions.task_queue`).

Two facts this relies on, checked against the libraries' source:
- firebase-admin (Python) sends the payload given to `enqueue` as the task's whole JSON body, and
  firebase-functions' task handler accepts only the callable protocol's `{"data": ...}` body ("Request
  body is missing data" otherwise), so the payload is wrapped in `data` here. The Cloud Tasks
  emulator forwards the body as given, exactly as Cloud Tasks does.
- Each task carries the purgeProject function's URL (`TaskOptions(uri=...)`, as Firebase's guide for
  2nd-gen task functions does): Cloud Tasks signs the task's OIDC token for that URL, and Cloud Run
  accepts a token only for one of its own URLs. Without a uri firebase-admin sends the task to
  `https://REGION-PROJECT.cloudfunctions.net/FUNCTION`, an audience Cloud Run does not accept.
  deploy.sh reads the URL from the deployed function (PURGE_TASK_URL); the Cloud Tasks emulator
  posts to whatever URL the task names.
- A task named like an existing (or recently run) one is refused (409), so a task name derived from
  the project and the night makes a repeat enqueue harmless.
- Against the Cloud Tasks emulator, firebase-admin 7.7 enqueues a named task and then fails to parse
  the emulator's answer (it strips a leading "/" that the emulator does not send for named tasks:
  "Invalid resource name format."). The task is queued by then, so that one error counts as
  enqueued when emulated; in production the answer parses.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from functions.lib.config import Settings
from functions.lib.deployment import PURGE_FUNCTION
from functions.lib.errors import Unavailable

log = logging.getLogger("retention")

# Longer than the task function's 540 s timeout, so Cloud Tasks never gives up on a running task.
DISPATCH_DEADLINE_S = 600


def task_id(project_id: str, night: str) -> str:
    """A queue-safe task name (letters, digits, hyphens) for one project on one night."""
    return "purge-" + hashlib.sha256(f"{project_id}\n{night}".encode()).hexdigest()[:40]


class PurgeQueue:
    """Enqueues purge tasks; `enqueue(project_id)` is False when the task was already there."""

    def __init__(
        self, queue: Any, *, uri: str | None = None, emulated: bool = False, clock: Any = None
    ) -> None:
        self._queue = queue
        self._uri = uri
        self._emulated = emulated
        self._now = clock or (lambda: datetime.now(UTC))

    def enqueue(self, project_id: str) -> bool:
        from firebase_admin import exceptions, functions

        night = self._now().strftime("%Y-%m-%d")
        options = functions.TaskOptions(
            task_id=task_id(project_id, night),
            dispatch_deadline_seconds=DISPATCH_DEADLINE_S,
            uri=self._uri,
        )
        try:
            self._queue.enqueue({"data": {"projectId": project_id}}, options)
        except (exceptions.AlreadyExistsError, exceptions.ConflictError):
            return False
        except exceptions.FirebaseError as exc:  # an HTTP error or none at all (unreachable, timed out)
            raise Unavailable(f"Cloud Tasks did not take the purge of {project_id}: {exc}") from exc
        except ValueError as exc:
            if not (self._emulated and str(exc) == "Invalid resource name format."):
                raise
        return True


def purge_queue(settings: Settings) -> PurgeQueue | None:
    """The purge queue when one is reachable (deployed, or the Cloud Tasks emulator), else None.
    Deployed without PURGE_TASK_URL there is none: its tasks would be refused (401) on every attempt."""
    if not settings.task_queue:
        return None
    emulated = settings.cloud_tasks_emulator_host is not None
    if settings.purge_task_url is None and not emulated:
        log.warning("PURGE_TASK_URL is not set: the sweep deletes every project itself (no fan-out)")
        return None
    from firebase_admin import functions

    from functions.lib.auth import firebase_app

    queue = functions.task_queue(
        f"locations/{settings.region}/functions/{PURGE_FUNCTION}", app=firebase_app()
    )
    return PurgeQueue(queue, uri=settings.purge_task_url, emulated=emulated)
