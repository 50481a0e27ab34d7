"""Stripe events kept for operators: `stripe_event_problems/{eventId}`.

An event is kept when it cannot be applied now: a permanent problem (no uid, a pack not in the
catalog, the wrong `livemode`) or a refund or dispute whose purchase is not recorded (yet). What is
kept is what a replay needs and no personal data: the buyer's email, name, phone and addresses never
reach this collection (`minimal_event`). The sweep deletes these documents after
PROBLEM_RETENTION_DAYS. See docs/ARCHITECTURE.md, "Stripe events".
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from functions.lib import db
from functions.lib.schema import PROBLEMS

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentReference, WriteBatch

log = logging.getLogger(__name__)

OPEN, RESOLVED = "open", "resolved"

_EVENT_FIELDS = ("id", "object", "type", "livemode", "created", "api_version")
# Every field of a Checkout Session, Charge, Refund or Dispute that `payments` reads, and no other.
_OBJECT_FIELDS = (
    "id",
    "object",
    "livemode",
    "status",
    "payment_status",
    "payment_intent",
    "charge",
    "amount",
    "amount_total",
    "amount_refunded",
    "currency",
    # Subscriptions and their invoices (ids, amounts, periods: no personal data).
    "mode",
    "customer",
    "subscription",
    "invoice",
    "latest_invoice",
    "billing_reason",
    "amount_paid",
    "cancel_at_period_end",
    "current_period_start",
    "current_period_end",
    "ended_at",
    "period",
    "proration",
    "price",
    "plan",
    "type",
)
_METADATA_FIELDS = ("userId", "packageId", "planId")
# Nested objects a subscription event's handling reads, kept with only the fields above.
_NESTED = (
    "parent",
    "subscription_details",
    "subscription_item_details",
    "pricing",
    "price_details",
    "payment",
)
_LISTS = ("lines", "items")


def id_of(value: Any) -> Any:
    """An expanded reference (`{"id": ..., ...}`) reduced to its id; anything else as it is."""
    return value.get("id") if isinstance(value, dict) else value


def _minimal_object(obj: dict[str, Any]) -> dict[str, Any]:
    kept = {key: id_of(obj[key]) for key in _OBJECT_FIELDS if key in obj}
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        kept["metadata"] = {key: metadata[key] for key in _METADATA_FIELDS if key in metadata}
    for name in ("refunds", *_LISTS):
        listed = obj.get(name)
        if isinstance(listed, dict) and isinstance(listed.get("data"), list):
            kept[name] = {"data": [_minimal_object(r) for r in listed["data"] if isinstance(r, dict)]}
    for name in _NESTED:
        if isinstance(obj.get(name), dict):
            kept[name] = _minimal_object(obj[name])
    period = obj.get("period")
    if isinstance(period, dict):
        kept["period"] = {k: period.get(k) for k in ("start", "end")}
    return kept


def minimal_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event with only what handling it reads: no customer details, billing or shipping data."""
    kept = {key: event[key] for key in _EVENT_FIELDS if key in event}
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if isinstance(obj, dict):
        kept["data"] = {"object": _minimal_object(obj)}
    return kept


def payload_of(event: dict[str, Any]) -> str:
    """The minimal event as stored: JSON text, not a map (lossless, and free of Firestore's rules
    for field names)."""
    return json.dumps(minimal_event(event), sort_keys=True)


def problem_ref(client: Client, event_id: str) -> DocumentReference:
    return client.collection(PROBLEMS).document(event_id)


def stage_problem(
    client: Client,
    batch: WriteBatch,
    event: dict[str, Any],
    reason: str,
    message: str,
    *,
    uid: str | None = None,
    payment_intent: str | None = None,
) -> None:
    """Stage the event as an open problem (a repeat delivery counts up `deliveries`)."""
    from google.cloud.firestore import SERVER_TIMESTAMP, Increment

    event_id = str(event.get("id"))
    fields: dict[str, Any] = {
        "eventId": event_id,
        "type": event.get("type"),
        "reason": reason,
        "message": message,
        "payload": payload_of(event),
        "status": OPEN,
        "deliveries": Increment(1),
        "updatedAt": SERVER_TIMESTAMP,
    }
    if uid is not None:
        fields["userId"] = uid
    if payment_intent is not None:
        fields["paymentIntentId"] = payment_intent
    batch.set(problem_ref(client, event_id), fields, merge=True)


def store(
    client: Client, event: dict[str, Any], reason: str, message: str, *, uid: str | None = None
) -> None:
    """Keep an event that cannot be applied, where operators look."""
    batch = client.batch()
    stage_problem(client, batch, event, reason, message, uid=uid)
    batch.commit(**db.rpc())
    log.warning(
        "stripe event stored for operators",
        extra={
            "json_fields": {
                "stripeEventId": event.get("id"),
                "eventType": event.get("type"),
                "reason": reason,
                "detail": message,
            }
        },
    )


def stage_resolved(client: Client, batch: WriteBatch, event_id: str, resolution: str) -> None:
    """Stage marking a stored event `resolved`, in the commit that finally applied it."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    batch.set(
        problem_ref(client, event_id),
        {
            "status": RESOLVED,
            "resolution": resolution,
            "resolvedAt": SERVER_TIMESTAMP,
            "updatedAt": SERVER_TIMESTAMP,
        },
        merge=True,
    )


def load(client: Client, event_id: str) -> dict[str, Any] | None:
    """The stored (minimal) event, or None when nothing is stored under `event_id` (or only a
    `resolved` mark, written after the sweep had deleted the event)."""
    snap = problem_ref(client, event_id).get(**db.rpc())
    text = (snap.to_dict() or {}).get("payload") if snap.exists else None
    if not isinstance(text, str):
        return None
    payload = json.loads(text)
    return payload if isinstance(payload, dict) else None
