"""`settle_charges` handler: the settlement job (Cloud Scheduler, every 10 minutes) refunds
generations left `charged` by a killed process, exactly once each, through `lib.settlement`.

It stops before its budget (4 minutes of the function's 5) and leaves the rest to the next run;
a charge that keeps conflicting is deferred the same way. One log line reports each pass.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from functions.lib import db, logs, operations
from functions.lib.config import get_settings
from functions.lib.settlement import settle_stale_charges

log = logging.getLogger("settlement")
BUDGET_S = 240


def run() -> dict[str, Any]:
    logs.configure()
    deadline = time.monotonic() + BUDGET_S
    client = db.get_client()
    report = settle_stale_charges(client, get_settings(), has_time=lambda: time.monotonic() < deadline)
    operations.record_run(client, operations.SETTLEMENT, report.body())
    log.info(
        "settlement pass %s",
        "complete" if report.complete else "left work",
        extra={"json_fields": report.body()},
    )
    return report.body()
