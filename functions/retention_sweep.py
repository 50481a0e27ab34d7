"""`retention_sweep` handler: any POST (Cloud Scheduler's nightly call) runs one sweep pass.

No Firebase token: the function is deployed private (`--no-allow-unauthenticated`) and Cloud Run
lets in only the scheduler's service account, whose OIDC token it verifies before we run.
"""

from __future__ import annotations

from typing import Any

from functions.http import Call, endpoint
from functions.lib import db
from functions.lib.config import get_settings
from functions.lib.retention import sweep


@endpoint("retention_sweep", methods=("POST",), cors=False)
def handle(call: Call) -> dict[str, Any]:
    """POST -> {complete, projectsDeleted, versionsDeleted, commits, maxCommitWrites, refundsSettled, elapsedMs}."""
    return sweep(db.get_client(), get_settings()).body()
