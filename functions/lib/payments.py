"""Stripe purchases in the ledger: credit a paid Checkout Session exactly once, take credits back on
refunds and disputes, and keep every event that cannot be applied for operators.

Exactly-once comes from deterministic ids and preconditions, never from a query before a write:
- A purchase is `credit_transactions/purchase_{checkoutSessionId}`, created (`create` fails if it
  exists) in the commit that raises the balance. Redeliveries, concurrent deliveries and the two
  event types that can carry one session (`completed`, `async_payment_succeeded`) all map to it.
- A refund reversal is `reversal_{chargeId}_{amountRefunded}`: a Charge carries its cumulative
  refunded amount, which names each partial refund. A dispute reversal is `reversal_{disputeId}`.
- What a purchase has given back so far lives in `payments/{paymentIntentId}`, written in the
  reversal's own commit: `create` for the first reversal, then updates under a precondition on
  the version read. Two reversals of one purchase racing each other therefore serialize, and
  `reversedCredits` (credits taken back plus any shortfall) never exceeds the purchase's credits:
  a refund and then a dispute of the same payment take the credits back once.

Refunds and disputes find their purchase through `metadata.stripePaymentIntentId` on the purchase
entry. That lookup is a query, but it only locates an immutable document; the write that follows
is guarded by the ids and preconditions above.

A reversal never drives a balance below zero: it takes what is there and records the rest as
`shortfall` on the reversal entry and as `shortfallCredits` on the payment, for operators.

Permanent problems (no uid, a pack not in the catalog) cannot be fixed by Stripe's retries: the
whole event goes to `stripe_event_problems/{eventId}` and the webhook answers 200. A refund or
dispute of a payment with no recorded purchase is stored the same way but answered 503, so Stripe
keeps retrying while the purchase's own delivery may still be in flight. Transient ones (Firestore unreachable, contention) raise
`Unavailable`, so the webhook answers 503 and Stripe retries for up to three days.
`replay_problem` runs a stored event again once an operator has fixed its cause.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from functions.lib import analytics, db, ledger
from functions.lib.config import Settings
from functions.lib.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentSnapshot

log = logging.getLogger(__name__)

PAYMENTS = "payments"
PURCHASE_NOT_FOUND = "purchase_not_found"
PROBLEMS = "stripe_event_problems"

SESSION_COMPLETED = "checkout.session.completed"
SESSION_ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
CHARGE_REFUNDED = "charge.refunded"
DISPUTE_CREATED = "charge.dispute.created"

# What a delivery did (`Outcome.action`).
CREDITED, DUPLICATE, AWAITING_PAYMENT = "credited", "duplicate", "awaiting_payment"
REVERSED, NOTHING_TO_REVERSE, IGNORED, PROBLEM = "reversed", "nothing_to_reverse", "ignored", "problem"


@dataclass(frozen=True)
class Outcome:
    """What handling one event did; `credits` is the signed change to the balance by this delivery."""

    action: str
    uid: str | None = None
    credits: int = 0
    balance: int | None = None
    shortfall: int = 0
    problem: str | None = None


class EventProblem(Exception):
    """A permanent problem with an event: Stripe's retries cannot fix it, an operator can."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _doc_id(value: Any, what: str, *, reason: str = "malformed_event") -> str:
    """`value` if it can name a Firestore document (part), else an EventProblem."""
    if not isinstance(value, str) or not value or len(value) > 500 or "/" in value or value in (".", "..") or value.startswith("__"):
        raise EventProblem(reason, f"the event has no usable {what}")
    return value


def _object_id(value: Any, what: str) -> str:
    """The id of a reference that Stripe sends either as an id or as an expanded object."""
    return _doc_id(value.get("id") if isinstance(value, dict) else value, what)


def credit_checkout_session(client: Client, settings: Settings, session: dict[str, Any], event_id: str) -> Outcome:
    """Credit a paid Checkout Session's pack exactly once (`purchase_{sessionId}`).

    The uid and pack come from the metadata that `checkout` set; the credits from the server's
    own catalog. The user document is created on a first purchase.
    """
    session_id = _object_id(session.get("id"), "Checkout Session id")
    metadata = session.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    uid = _doc_id(metadata.get("userId"), "metadata.userId", reason="no_user")
    pack_id = metadata.get("packageId")
    pack = settings.credit_packs.get(pack_id) if isinstance(pack_id, str) else None
    if pack is None:
        raise EventProblem("unknown_pack", f"metadata.packageId {pack_id!r} is not in the credit pack catalog")
    payment_intent = session.get("payment_intent")
    entry_metadata = {
        "stripeSessionId": session_id,
        "stripePaymentIntentId": _object_id(payment_intent, "payment intent") if payment_intent else None,
        "stripeEventId": event_id,
        "packageId": pack.id,
    }
    props = {"sessionId": session_id, "packageId": pack.id, "credits": pack.credits}
    entry_id = ledger.entry_id(ledger.PURCHASE, session_id)
    posted = ledger.post(
        client, uid, type=ledger.PURCHASE, ref=session_id, amount=pack.credits, metadata=entry_metadata,
        also=lambda batch: analytics.stage_event(client, batch, analytics.CREDITS_PURCHASED, uid, props, event_id=entry_id),
    )  # fmt: skip
    if not posted.applied:
        return Outcome(DUPLICATE, uid, 0, posted.balance)
    analytics.emitted(analytics.CREDITS_PURCHASED, uid, props)
    return Outcome(CREDITED, uid, pack.credits, posted.balance)


def _find_purchase(client: Client, payment_intent: str) -> DocumentSnapshot:
    """The purchase entry paid by `payment_intent` (index: metadata.stripePaymentIntentId, type)."""
    query = (
        client.collection(ledger.LEDGER)
        .where(filter=db.where("metadata.stripePaymentIntentId", "==", payment_intent))
        .where(filter=db.where("type", "==", ledger.PURCHASE))
        .limit(1)
    )
    for snap in query.stream(**db.rpc()):
        return snap
    raise EventProblem(PURCHASE_NOT_FOUND, f"no purchase was credited for payment intent {payment_intent}")


# How many credits a reversal claims, given the payment's reversal state and the purchase's credits.
Claim = Callable[[dict[str, Any], int], int]


def _reverse(
    client: Client, event_id: str, payment_intent: str, *, ref: str, claim: Claim, state: dict[str, Any], metadata: dict[str, Any]
) -> Outcome:
    """Take back what `claim` says, once (`reversal_{ref}`), capped by what the purchase still has
    to give back and by the balance; the reversal state in `payments/{paymentIntentId}` moves in
    the same commit."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    purchase = _find_purchase(client, payment_intent)
    bought = purchase.to_dict() or {}
    uid, credits, pack_id = str(bought["userId"]), int(bought["amount"]), (bought.get("metadata") or {}).get("packageId")
    entry_ref = client.collection(ledger.LEDGER).document(ledger.entry_id(ledger.REVERSAL, ref))
    user_ref = client.collection(ledger.USERS).document(uid)
    payment_ref = client.collection(PAYMENTS).document(payment_intent)

    def plan() -> db.Plan[Outcome]:
        user, payment, existing = db.get_all(client, [user_ref, payment_ref, entry_ref])
        balance = ledger.balance_of(user)
        if existing.exists:
            return db.Plan(Outcome(DUPLICATE, uid, 0, balance))
        stored = payment.to_dict() or {}
        reversed_before = int(stored.get("reversedCredits") or 0)
        owed = min(claim(stored, credits), credits - reversed_before)
        if owed <= 0:
            return db.Plan(Outcome(NOTHING_TO_REVERSE, uid, 0, balance))
        taken = min(owed, balance)
        shortfall = owed - taken
        batch = client.batch()
        after = ledger.stage_entry(
            client, batch, user, type=ledger.REVERSAL, ref=ref, amount=-taken,
            metadata={**metadata, "stripePaymentIntentId": payment_intent, "stripeEventId": event_id,
                      "purchaseId": purchase.id, "packageId": pack_id, "shortfall": shortfall or None},
        )  # fmt: skip
        fields = {
            **state,
            "reversedCredits": reversed_before + owed,
            "shortfallCredits": int(stored.get("shortfallCredits") or 0) + shortfall,
            "reversalIds": [*stored.get("reversalIds", []), entry_ref.id],
            "updatedAt": SERVER_TIMESTAMP,
        }
        if payment.exists:
            batch.update(payment_ref, fields, option=db.precondition(client, payment))
        else:
            batch.create(
                payment_ref, {"userId": uid, "purchaseId": purchase.id, "credits": credits, "createdAt": SERVER_TIMESTAMP, **fields}
            )
        props = {"reversalId": entry_ref.id, "paymentIntentId": payment_intent, "credits": taken, "shortfall": shortfall, **metadata}
        analytics.stage_event(client, batch, analytics.CREDITS_REVERSED, uid, props, event_id=entry_ref.id)
        return db.Plan(Outcome(REVERSED, uid, -taken, after, shortfall), batch)

    outcome = db.commit_optimistically(plan)
    if outcome.action == REVERSED:
        analytics.emitted(analytics.CREDITS_REVERSED, uid, {"reversalId": entry_ref.id, "credits": -outcome.credits, **metadata})
        if outcome.shortfall:
            log.warning(
                "reversal exceeded the balance; shortfall recorded",
                extra={
                    "json_fields": {
                        "uid": uid,
                        "paymentIntentId": payment_intent,
                        "reversalId": entry_ref.id,
                        "shortfall": outcome.shortfall,
                    }
                },
            )
    return outcome


def reverse_refund(client: Client, charge: dict[str, Any], event_id: str) -> Outcome:
    """`charge.refunded`: take back the refunded share of the purchase, pro rata and cumulative.

    Each delivery carries the charge's total refunded so far; the payment remembers the largest
    total applied, so each partial refund is applied once and an older one arriving late adds nothing.
    """
    charge_id = _doc_id(charge.get("id"), "charge id")
    payment_intent = _object_id(charge.get("payment_intent"), "payment intent")
    amount, refunded = charge.get("amount"), charge.get("amount_refunded")
    if not isinstance(amount, int) or not isinstance(refunded, int) or amount <= 0 or not 0 < refunded <= amount:
        raise EventProblem("malformed_event", "the charge has no usable amount and amount_refunded")

    def refunded_share(stored: dict[str, Any], credits: int) -> int:
        before = int(stored.get("refundedAmount") or 0)
        if refunded <= before:
            return 0
        return credits * refunded // amount - credits * before // amount

    return _reverse(
        client, event_id, payment_intent, ref=f"{charge_id}_{refunded}", claim=refunded_share,
        state={"refundedAmount": refunded, "chargeAmount": amount},
        metadata={"stripeChargeId": charge_id, "reason": "refund"},
    )  # fmt: skip


def reverse_dispute(client: Client, dispute: dict[str, Any], event_id: str) -> Outcome:
    """`charge.dispute.created`: take back whatever the purchase has not given back yet."""
    dispute_id = _doc_id(dispute.get("id"), "dispute id")
    payment_intent = _object_id(dispute.get("payment_intent"), "payment intent")
    charge = dispute.get("charge")
    return _reverse(
        client, event_id, payment_intent, ref=dispute_id, claim=lambda _stored, credits: credits, state={},
        metadata={"stripeDisputeId": dispute_id, "stripeChargeId": charge.get("id") if isinstance(charge, dict) else charge, "reason": "dispute"},
    )  # fmt: skip


def _on_session_completed(client: Client, settings: Settings, session: dict[str, Any], event_id: str) -> Outcome:
    status = session.get("payment_status")
    if status == "paid":
        return credit_checkout_session(client, settings, session, event_id)
    if status == "unpaid":
        # A delayed payment method: `checkout.session.async_payment_succeeded` credits it later.
        return Outcome(AWAITING_PAYMENT)
    raise EventProblem("not_paid", f"the completed session has payment_status {status!r}; nothing was credited")


_HANDLERS: dict[str, Callable[[Client, Settings, dict[str, Any], str], Outcome]] = {
    SESSION_COMPLETED: _on_session_completed,
    SESSION_ASYNC_SUCCEEDED: credit_checkout_session,
    CHARGE_REFUNDED: lambda client, _settings, charge, event_id: reverse_refund(client, charge, event_id),
    DISPUTE_CREATED: lambda client, _settings, dispute, event_id: reverse_dispute(client, dispute, event_id),
}


def handle_event(client: Client, settings: Settings, event: dict[str, Any]) -> Outcome:
    """Apply one verified Stripe event; the same for a webhook delivery and an operator's replay.

    Unknown types are ignored. Permanent problems are stored for operators and answered as an
    outcome; transient failures raise (`Unavailable`), so the delivery is retried.
    """
    event_id, event_type = str(event.get("id")), str(event.get("type"))
    handler = _HANDLERS.get(event_type)
    if handler is None:
        return Outcome(IGNORED)
    try:
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise EventProblem("malformed_event", "the event has no data.object")
        return handler(client, settings, obj, event_id)
    except EventProblem as problem:
        _store_problem(client, event, problem)
        if problem.reason == PURCHASE_NOT_FOUND:
            # Most likely the purchase's own delivery is still being retried: answering 200 would
            # let the buyer keep refunded credits. Stripe retries this for up to three days; the
            # stored copy lets an operator replay it after that (a replay of an event that has
            # since applied changes nothing).
            raise Unavailable(
                "No purchase is recorded for this payment yet; retry later.", retry_after_s=60, problem=problem.reason
            ) from None
        return Outcome(PROBLEM, problem=problem.reason)


def _store_problem(client: Client, event: dict[str, Any], problem: EventProblem) -> None:
    """Keep the whole event, as received, where operators look (`stripe_event_problems/{eventId}`)."""
    from google.cloud.firestore import SERVER_TIMESTAMP, Increment

    event_id = str(event.get("id"))
    client.collection(PROBLEMS).document(event_id).set(
        {
            "eventId": event_id,
            "type": event.get("type"),
            "reason": problem.reason,
            "message": problem.message,
            # JSON text, not a map: lossless, and free of Firestore's rules for field names.
            "payload": json.dumps(event, sort_keys=True),
            "status": "open",
            "deliveries": Increment(1),
            "updatedAt": SERVER_TIMESTAMP,
        },
        merge=True,
        **db.rpc(),
    )
    log.warning(
        "stripe event stored for operators",
        extra={
            "json_fields": {"stripeEventId": event_id, "eventType": event.get("type"), "reason": problem.reason, "detail": problem.message}
        },
    )


def replay_problem(client: Client, settings: Settings, event_id: str) -> Outcome:
    """Run a stored problem event again (after its cause was fixed); a success marks it resolved."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    ref = client.collection(PROBLEMS).document(event_id)
    snap = ref.get(**db.rpc())
    if not snap.exists:
        raise NotFound(f"No stored Stripe event {event_id}.")
    outcome = handle_event(client, settings, json.loads(snap.get("payload")))
    if outcome.action != PROBLEM:
        ref.update({"status": "resolved", "resolution": outcome.action, "resolvedAt": SERVER_TIMESTAMP}, **db.rpc())
    return outcome
