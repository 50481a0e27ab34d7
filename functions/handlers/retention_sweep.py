"""`retention_sweep` handler: any POST (Cloud Scheduler's nightly call) runs one sweep pass.

No Firebase token: the function is declared private (`invoker="private"`) and Cloud Run lets in
only the scheduler's service account, whose OIDC token it verifies before we run. When a task
queue is reachable and the night is large, the pass fans out to `purgeProject` (lib/retention.py).
"""

from __future__ import annotations

from typing import Any

from functions.edge import Call, endpoint
from functions.lib import db, operations
from functions.lib.config import get_settings
from functions.lib.retention import sweep
from functions.lib.tasks import purge_queue


@endpoint("retention_sweep", methods=("POST",), cors=False)
def handle(call: Call) -> dict[str, Any]:
    """POST -> {complete, projectsDeleted, versionsDeleted, commits, maxCommitWrites, refundsSettled,
    elapsedMs, projectsEnqueued?}."""
    settings, client = get_settings(), db.get_client()
    queue = purge_queue(settings)
    body = sweep(client, settings, enqueue=queue.enqueue if queue else None).body()
    operations.record_run(client, operations.SWEEP, body)
    return body
