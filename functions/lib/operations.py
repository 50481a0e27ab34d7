"""What an operator needs at a glance (`python -m functions.admin status`), and the record of the
last sweep and settlement runs it shows (`operations/{sweep|settlement}`, written at the end of
each real run; dry runs record nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from functions.lib import clock, db, generations, ledger, problems, schema, settlement
from functions.lib.config import Settings

if TYPE_CHECKING:
    from google.cloud.firestore import Client

SWEEP, SETTLEMENT = "sweep", "settlement"
# How far ahead `status` looks for grants about to expire.
EXPIRING_WITHIN = timedelta(days=1)
# Open problem events listed by id (all are counted).
LISTED = 5


def record_run(client: Client, kind: str, body: dict[str, Any]) -> None:
    """Keep what a sweep or settlement run did, for `status` (one small write per run)."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    client.collection(schema.OPERATIONS).document(kind).set(
        {**body, "kind": kind, "finishedAt": SERVER_TIMESTAMP}, **db.rpc()
    )


@dataclass
class Status:
    open_problems: int = 0
    problem_ids: list[str] = field(default_factory=list)
    stale_charges: int = 0
    expiring_users: int = 0
    past_due: int = 0
    runs: dict[str, dict[str, Any] | None] = field(default_factory=dict)


def status(client: Client, settings: Settings, now: datetime | None = None) -> Status:
    """Counts an operator acts on, each from one aggregation (no documents read in bulk)."""
    at = now or clock.now()
    found = Status()
    open_problems = client.collection(schema.PROBLEMS).where(filter=db.where("status", "==", problems.OPEN))
    found.open_problems = db.count(open_problems)
    found.problem_ids = [snap.id for snap in open_problems.select([]).limit(LISTED).stream(**db.rpc())]
    cutoff = generations.stale_cutoff(settings, now)
    found.stale_charges = db.count(settlement.stale_charges(client, cutoff))
    found.expiring_users = db.count(ledger.expiring_users(client, at + EXPIRING_WITHIN))
    past_due = client.collection(schema.SUBSCRIPTIONS).where(filter=db.where("status", "==", "past_due"))
    found.past_due = db.count(past_due)
    for kind in (SWEEP, SETTLEMENT):
        snap = client.collection(schema.OPERATIONS).document(kind).get(**db.rpc())
        found.runs[kind] = snap.to_dict() if snap.exists else None
    return found
