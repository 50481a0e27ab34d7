"""Product analytics: an `analytics_events` document plus one structured log line per event.

Events are staged in the batch of the step they describe, so recording one costs no round trip
and an event exists exactly when its step committed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from functions.lib import db
from functions.lib.schema import EVENTS

if TYPE_CHECKING:
    from google.cloud.firestore import Client, WriteBatch

log = logging.getLogger("analytics")

GENERATION_SUCCEEDED = "generation_succeeded"
CREDITS_REFUNDED = "credits_refunded"
CREDITS_PURCHASED = "credits_purchased"
CREDITS_REVERSED = "credits_reversed"
CREDITS_REINSTATED = "credits_reinstated"
PERIOD_GRANTED = "period_granted"


def stage_event(
    client: Client,
    batch: WriteBatch,
    type: str,
    uid: str | None,
    properties: dict[str, Any],
    *,
    event_id: str | None = None,
) -> None:
    """Stage an event in `batch`. A deterministic `event_id` keeps a retried step from logging twice."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    ref = client.collection(EVENTS).document(event_id) if event_id else client.collection(EVENTS).document()
    doc = {
        "type": type,
        "userId": uid,
        "properties": properties,
        "createdAt": SERVER_TIMESTAMP,
        "shard": db.shard_of(ref.id),
    }
    if event_id:
        batch.set(ref, doc)
    else:
        batch.create(ref, doc)


def emitted(type: str, uid: str | None, properties: dict[str, Any]) -> None:
    """The log line for an event whose step committed (call after the commit)."""
    log.info("analytics event", extra={"json_fields": {"event": type, "uid": uid, **properties}})
