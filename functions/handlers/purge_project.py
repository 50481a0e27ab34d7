"""`purgeProject` handler: one task of the sweep's fan-out deletes one expired project.

Cloud Tasks calls it (with the sweep's OIDC token; the function is private) with the callable
body `{"data": {"projectId": ...}}`. An unfinished purge (time budget) raises, so the task answers
500 and Cloud Tasks retries it with backoff, resuming the marked project; a malformed task is
logged and acknowledged, since retrying it cannot help.
"""

from __future__ import annotations

import logging
from typing import Any

from functions.lib import db, ids, logs
from functions.lib.config import get_settings
from functions.lib.retention import purge_project

log = logging.getLogger("purge")


class PurgeUnfinished(RuntimeError):
    """The budget stopped the purge with versions left: the task fails so Cloud Tasks retries it."""


def handle(data: Any) -> dict[str, Any]:
    logs.configure()
    project_id = data.get("projectId") if isinstance(data, dict) else None
    if not ids.is_doc_id(project_id):
        log.error("purge task without a valid projectId: %r", data)
        return {"error": "invalid_task"}
    report = purge_project(db.get_client(), get_settings(), project_id)
    if not report.complete:
        raise PurgeUnfinished(
            f"project {project_id}: stopped with versions left after {report.versions_deleted}; retrying"
        )
    return {"projectId": project_id, **report.body()}
