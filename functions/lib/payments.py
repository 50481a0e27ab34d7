"""Stripe payments in the ledger: credit a paid Checkout Session exactly once; take credits back on
refunds and disputes, and give them back when a refund fails or a dispute is won. The rules, the
event table and why any order or repetition of events moves credits exactly once are in
docs/ARCHITECTURE.md, "Stripe events".

In code: `credit_checkout_session` writes `purchase_{sessionId}` and opens the payment's record
(`payments/{paymentIntentId}`); `on_refund`, `on_charge_refunded` and `on_dispute` turn an event into
a change of the record (`refund_seen`, `charge_refunded`, `dispute_seen`), and `settle_payment`
commits the record with the one ledger entry that takes it to its `PaymentRecord.target()`, or parks
the event until the purchase exists. `handle_event` dispatches by `EventType` (`handler_of`);
permanent problems are stored (`lib/problems.py`) and answered 200, transient ones raise
`Unavailable` (503, Stripe retries). No Stripe API call here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from functions.lib import analytics, clock, db, ids, ledger, problems, schema
from functions.lib.config import Settings
from functions.lib.errors import NotFound
from functions.lib.schema import PAYMENTS
from functions.lib.wallet import DEFAULT_PRIORITY, PAID, Grant

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentSnapshot, WriteBatch

log = logging.getLogger(__name__)


class EventType(StrEnum):
    """The Stripe event types the webhook handles (`_HANDLERS` and `_subscription_handler`); any
    other is answered `ignored`. The endpoint's events to enable: docs/STRIPE.md."""

    SESSION_COMPLETED = "checkout.session.completed"
    SESSION_ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
    CHARGE_REFUNDED = "charge.refunded"
    REFUND_CREATED = "refund.created"
    REFUND_UPDATED = "refund.updated"
    REFUND_FAILED = "refund.failed"
    # API versions before 2024-10-28 announce a refund's failure or cancellation only with this one.
    CHARGE_REFUND_UPDATED = "charge.refund.updated"
    DISPUTE_CREATED = "charge.dispute.created"
    DISPUTE_CLOSED = "charge.dispute.closed"
    # Subscriptions (lib/subscriptions.py).
    SUB_CREATED = "customer.subscription.created"
    SUB_UPDATED = "customer.subscription.updated"
    SUB_DELETED = "customer.subscription.deleted"
    INVOICE_PAID = "invoice.paid"
    INVOICE_FAILED = "invoice.payment_failed"
    INVOICE_PAYMENT_PAID = "invoice_payment.paid"


class Action(StrEnum):
    """What a delivery did (`Outcome.action`): the webhook answers it as `outcome`, and a stored
    event that applies keeps it as its `resolution`."""

    CREDITED = "credited"
    AWAITING_PAYMENT = "awaiting_payment"
    REVERSED = "reversed"
    REINSTATED = "reinstated"
    UNCHANGED = "unchanged"
    PARKED = "parked"
    # Subscription events (lib/subscriptions.py).
    RECORDED = "recorded"
    ENDED = "ended"
    GRANTED = "granted"
    LINKED = "linked"
    # Any event.
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    PROBLEM = "problem"


class Reason(StrEnum):
    """Why an event was stored for an operator (`stripe_event_problems/{id}.reason`, and the
    webhook's `problem`): a permanent problem, or a refund or dispute parked before its purchase."""

    MALFORMED_EVENT = "malformed_event"
    LIVEMODE_MISMATCH = "livemode_mismatch"
    NO_USER = "no_user"
    UNKNOWN_PACK = "unknown_pack"
    PRICE_MISMATCH = "price_mismatch"
    NOT_PAID = "not_paid"
    SESSION_REUSED = "session_reused"
    PAYMENT_REUSED = "payment_reused"
    UNKNOWN_PAYMENT_AMOUNT = "unknown_payment_amount"
    LEDGER_ID_TAKEN = "ledger_id_taken"
    PURCHASE_NOT_FOUND = "purchase_not_found"
    # Subscription events (lib/subscriptions.py).
    NOT_OUR_SUBSCRIPTION = "not_our_subscription"
    SUBSCRIPTION_REUSED = "subscription_reused"
    INVOICE_REUSED = "invoice_reused"
    UNKNOWN_PLAN = "unknown_plan"
    PERIOD_UNKNOWN = "period_unknown"


# A refund's status, as Stripe names it, to what it means for the credits.
ACTIVE, FAILED = "active", "failed"
_REFUND_STATUS = {
    "pending": ACTIVE,
    "requires_action": ACTIVE,
    "succeeded": ACTIVE,
    "failed": FAILED,
    "canceled": FAILED,
}
# A dispute's credits are taken back while it is open or lost, and given back when it is won (an
# inquiry that closes without a chargeback, `warning_closed`, took no money either).
OPEN, WON, LOST = "open", "won", "lost"
# `prevented` (Visa RDR): the dispute was resolved with a refund, whose own events take back its share.
_DISPUTE_CLOSED = {"won": WON, "warning_closed": WON, "prevented": WON, "lost": LOST}


@dataclass(frozen=True)
class Outcome:
    """What handling one event did; `credits` is the signed change to the balance by this delivery."""

    action: Action
    uid: str | None = None
    credits: int = 0
    balance: int | None = None
    problem: Reason | None = None


class EventProblem(Exception):
    """A permanent problem with an event: Stripe's retries cannot fix it, an operator can."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# The payment's record ------------------------------------------------------------------------


@dataclass
class PaymentRecord:
    """`payments/{paymentIntentId}`: what Stripe told us about one payment, and what it gave back."""

    uid: str | None = None
    purchase_id: str | None = None
    credits: int = 0
    amount: int | None = None  # what the buyer paid, in the currency's smallest unit
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {amount, status}
    charge_refunded: int = 0  # the highest cumulative `amount_refunded` seen
    disputes: dict[str, str] = field(default_factory=dict)  # id -> open | won | lost
    reversed_credits: int = 0  # net credits taken back so far
    parked: list[str] = field(default_factory=list)  # ids of events waiting for the purchase
    parked_events: dict[str, str] = field(default_factory=dict)  # id -> the event (problems.payload_of)

    @classmethod
    def of(cls, snap: DocumentSnapshot) -> PaymentRecord:
        data = snap.to_dict() or {} if snap.exists else {}
        return cls(
            uid=data.get("userId"),
            purchase_id=data.get("purchaseId"),
            credits=int(data.get("credits") or 0),
            amount=data.get("amount"),
            refunds=dict(data.get("refunds") or {}),
            charge_refunded=int(data.get("chargeRefunded") or 0),
            disputes=dict(data.get("disputes") or {}),
            reversed_credits=int(data.get("reversedCredits") or 0),
            parked=list(data.get("parked") or []),
            parked_events=dict(data.get("parkedEvents") or {}),
        )

    def fields(self) -> dict[str, Any]:
        return {
            "userId": self.uid,
            "purchaseId": self.purchase_id,
            "credits": self.credits,
            "amount": self.amount,
            "refunds": self.refunds,
            "chargeRefunded": self.charge_refunded,
            "disputes": self.disputes,
            "reversedCredits": self.reversed_credits,
            "parked": self.parked,
            "parkedEvents": self.parked_events,
        }

    @property
    def purchased(self) -> bool:
        return self.uid is not None

    def refunded_amount(self) -> int:
        """Money refunded for good, as far as we know.

        Refunds known by id count unless they failed. `charge.refunded` reports a cumulative figure
        without ids (older API versions send nothing else); it may already include a refund whose
        own event is still on its way, so it counts too, less the refunds known to have failed.
        The larger of the two is what has been refunded.
        """
        by_id = sum(r["amount"] for r in self.refunds.values() if r["status"] == ACTIVE)
        failed = sum(r["amount"] for r in self.refunds.values() if r["status"] == FAILED)
        return int(max(by_id, self.charge_refunded - failed, 0))

    def target(self) -> int:
        """How many credits the purchase must have given back now."""
        if any(status in (OPEN, LOST) for status in self.disputes.values()):
            return self.credits
        if not self.amount or self.amount <= 0:
            raise EventProblem(
                Reason.UNKNOWN_PAYMENT_AMOUNT,
                "the payment's amount is unknown, so a refund cannot be shared out",
            )
        refunded = min(self.refunded_amount(), self.amount)
        return self.credits * refunded // self.amount


# How an event changes a record: True if it did (the change is made on the record passed in).
Change = Callable[[PaymentRecord], bool]


def refund_seen(refund_id: str, amount: int, status: str) -> Change:
    def change(record: PaymentRecord) -> bool:
        known = record.refunds.get(refund_id)
        if known is not None and (known["status"] == FAILED or known["status"] == status):
            return False  # a failed refund stays failed: a stale `pending` cannot revive it
        record.refunds[refund_id] = {"amount": amount, "status": status}
        return True

    return change


def charge_refunded(amount_refunded: int, charge_amount: int) -> Change:
    def change(record: PaymentRecord) -> bool:
        changed = False
        if not record.amount:
            record.amount, changed = charge_amount, True
        if amount_refunded > record.charge_refunded:
            record.charge_refunded, changed = amount_refunded, True
        return changed

    return change


def dispute_seen(dispute_id: str, status: str) -> Change:
    def change(record: PaymentRecord) -> bool:
        known = record.disputes.get(dispute_id)
        if known == status or known in (WON, LOST):
            return False  # closed is final: a late `created` does not reopen it
        record.disputes[dispute_id] = status
        return True

    return change


# Reading events ------------------------------------------------------------------------------


def _doc_id(value: Any, what: str, *, reason: Reason = Reason.MALFORMED_EVENT) -> str:
    """`value` if it can name a Firestore document (the one rule, `ids.is_doc_id`), else an EventProblem."""
    if not ids.is_doc_id(value):
        raise EventProblem(reason, f"the event has no usable {what}")
    return value


def _object_id(value: Any, what: str) -> str:
    """The id of a reference that Stripe sends either as an id or as an expanded object."""
    return _doc_id(problems.id_of(value), what)


def _money(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EventProblem(Reason.MALFORMED_EVENT, f"the event has no usable {what}")
    return value


# Purchases -----------------------------------------------------------------------------------


def check_price(expected: int | None, currency: str | None, charged: Any, charged_in: Any, what: str) -> None:
    """A price_mismatch problem unless Stripe charged the catalog's price (no check without one): a
    session or invoice for another amount (a changed Stripe price, a hand-made session) credits nothing."""
    if expected is not None and (charged != expected or charged_in != currency):
        raise EventProblem(
            Reason.PRICE_MISMATCH,
            f"Stripe charged {charged} {charged_in} for {what}, not the catalog's {expected} {currency}: "
            "nothing was credited",
        )


@dataclass(frozen=True)
class _Credited:
    outcome: Outcome
    record: PaymentRecord  # as read: its parked events are applied after the purchase


def credit_checkout_session(
    client: Client, settings: Settings, session: dict[str, Any], event_id: str
) -> Outcome:
    """Credit a paid Checkout Session's pack exactly once (`purchase_{sessionId}`), then apply any
    refund or dispute of its payment that arrived first.

    The uid and pack come from the metadata that `checkout` set; the credits from the server's
    own catalog. The user document is created on a first purchase.
    """

    session_id = _object_id(session.get("id"), "Checkout Session id")
    metadata = session.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    uid = _doc_id(metadata.get("userId"), "metadata.userId", reason=Reason.NO_USER)
    pack_id = metadata.get("packageId")
    pack = settings.credit_packs.get(pack_id) if isinstance(pack_id, str) else None
    if pack is None:
        raise EventProblem(
            Reason.UNKNOWN_PACK, f"metadata.packageId {pack_id!r} is not in the credit pack catalog"
        )
    payment_intent = (
        _object_id(session["payment_intent"], "payment intent") if session.get("payment_intent") else None
    )
    amount = session.get("amount_total")
    check_price(pack.amount, pack.currency, amount, session.get("currency"), f"pack {pack.id}")
    entry_id = ledger.entry_id(ledger.PURCHASE, session_id)
    entry_ref = client.collection(schema.LEDGER).document(entry_id)
    user_ref = client.collection(schema.USERS).document(uid)
    record_ref = client.collection(PAYMENTS).document(payment_intent) if payment_intent else None
    props = {"sessionId": session_id, "packageId": pack.id, "credits": pack.credits}

    def plan() -> db.Plan[_Credited]:
        user, existing, *maybe_record = db.get_all(
            client, [user_ref, entry_ref, *([record_ref] if record_ref else [])]
        )
        record = PaymentRecord.of(maybe_record[0]) if maybe_record else PaymentRecord()
        if existing.exists:
            if existing.get("userId") != uid:
                raise EventProblem(Reason.SESSION_REUSED, f"{entry_id} was credited to another user")
            return db.Plan(_Credited(Outcome(Action.DUPLICATE, uid, 0, ledger.balance_of(user)), record))
        if record.purchased:
            raise EventProblem(
                Reason.PAYMENT_REUSED,
                f"payment intent {payment_intent} already paid for {record.purchase_id}",
            )
        batch = client.batch()
        book = ledger.Book(client, batch, user, clock.now())
        expires = book.now + timedelta(days=pack.expires_in_days) if pack.expires_in_days else None
        grant = Grant(
            entry_id, pack.credits, pack.credits, PAID, DEFAULT_PRIORITY, f"pack:{pack.id}", book.now, expires
        )
        book.add_grant(
            ledger.PURCHASE,
            session_id,
            grant,
            {
                "stripeSessionId": session_id,
                "stripePaymentIntentId": payment_intent,
                "stripeEventId": event_id,
                "packageId": pack.id,
            },
        )
        balance = book.close()
        if record_ref is not None:
            opened = replace(
                record,
                uid=uid,
                purchase_id=entry_id,
                credits=pack.credits,
                amount=amount if isinstance(amount, int) else None,
            )
            stage_record(client, batch, record_ref, maybe_record[0], opened)
        analytics.stage_event(client, batch, analytics.CREDITS_PURCHASED, uid, props, event_id=entry_id)
        return db.Plan(_Credited(Outcome(Action.CREDITED, uid, pack.credits, balance), record), batch)

    credited = db.commit_optimistically(plan)
    if credited.outcome.action == Action.CREDITED:
        analytics.emitted(analytics.CREDITS_PURCHASED, uid, props)
    for parked_id in credited.record.parked:
        apply_parked(client, settings, parked_id, credited.record.parked_events.get(parked_id))
    return credited.outcome


def stage_record(
    client: Client, batch: WriteBatch, ref: Any, snap: DocumentSnapshot, record: PaymentRecord
) -> None:
    """Write the record in `batch`, under a precondition on the version read (or `create`)."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    if snap.exists:
        batch.update(
            ref, {**record.fields(), "updatedAt": SERVER_TIMESTAMP}, option=db.precondition(client, snap)
        )
    else:
        batch.create(ref, {**record.fields(), "createdAt": SERVER_TIMESTAMP, "updatedAt": SERVER_TIMESTAMP})


def apply_parked(client: Client, settings: Settings, event_id: str, payload: str | None) -> None:
    """Apply a parked event: the stored problem when it is still there (marked resolved with it),
    else the record's own copy (the sweep deleted the problem after its retention)."""
    event = problems.load(client, event_id)
    stored = event is not None
    if event is None and payload is not None:
        event = json.loads(payload)
    if not isinstance(event, dict):
        log.error("parked stripe event %s is not stored; an operator must look at it", event_id)
        return
    handle_event(client, settings, event, stored=stored)


# Refunds and disputes -------------------------------------------------------------------------


def settle_payment(
    client: Client,
    event: dict[str, Any],
    payment_intent: str,
    change: Change,
    *,
    ref: str,
    metadata: dict[str, Any],
    stored: bool = False,
    unpark: bool = True,
) -> Outcome:
    """Apply one change to the payment's record and move the credits it implies, in one commit.

    `ref` names the ledger entry (`reversal_{ref}` or `reinstatement_{ref}`). Before the purchase is
    recorded the event is parked instead. `stored` marks the stored copy `resolved` in the same
    commit (a parked event applied by its purchase, or an operator's replay). `unpark` takes the
    event off the parked list with this change; an event of several changes does so with its last.
    """
    event_id = str(event.get("id"))
    record_ref = client.collection(PAYMENTS).document(payment_intent)

    def plan() -> db.Plan[Outcome]:
        snap = record_ref.get(**db.rpc())
        record = PaymentRecord.of(snap)
        if not record.purchased:
            return _park(client, event, snap, record)
        changed = replace(
            record,
            refunds=dict(record.refunds),
            disputes=dict(record.disputes),
            parked=list(record.parked),
            parked_events=dict(record.parked_events),
        )
        moved = change(changed)
        if unpark and event_id in changed.parked:  # also when it changes nothing: it is applied now
            changed.parked.remove(event_id)
            changed.parked_events.pop(event_id, None)
        delta = changed.target() - record.reversed_credits if moved else 0
        changed.reversed_credits += delta
        batch = client.batch()
        if changed != record:
            stage_record(client, batch, record_ref, snap, changed)
        outcome = _move_credits(
            client,
            batch,
            record,
            snap,
            delta,
            ref,
            {**metadata, "stripePaymentIntentId": payment_intent, "stripeEventId": event_id},
        )
        if not moved:
            outcome = replace(outcome, action=Action.DUPLICATE)
        if stored:
            problems.stage_resolved(client, batch, event_id, outcome.action)
        return db.Plan(outcome, batch if changed != record or stored else None)

    outcome = db.commit_optimistically(plan)
    if outcome.credits:
        kind = ledger.REVERSAL if outcome.credits < 0 else ledger.REINSTATEMENT
        analytics.emitted(
            _ANALYTICS[kind],
            outcome.uid,
            {"entryId": ledger.entry_id(kind, ref), "credits": outcome.credits, **metadata},
        )
        if outcome.balance is not None and outcome.balance < 0:
            log.warning(
                "a reversal took the balance below zero",
                extra={
                    "json_fields": {
                        "uid": outcome.uid,
                        "paymentIntentId": payment_intent,
                        "balance": outcome.balance,
                    }
                },
            )
    return outcome


_ANALYTICS = {ledger.REVERSAL: analytics.CREDITS_REVERSED, ledger.REINSTATEMENT: analytics.CREDITS_REINSTATED}


def _move_credits(
    client: Client,
    batch: WriteBatch,
    record: PaymentRecord,
    snap: DocumentSnapshot,
    delta: int,
    ref: str,
    metadata: dict[str, Any],
) -> Outcome:
    """Stage the ledger entry that takes back (`delta` > 0) or gives back credits; read the balance.

    `record` is what `snap` (the record as this step read it) holds.
    """
    assert record.uid is not None
    user_ref = client.collection(schema.USERS).document(record.uid)
    if not delta:
        return Outcome(Action.UNCHANGED, record.uid, 0, ledger.balance_of(user_ref.get(**db.rpc())))
    kind = ledger.REVERSAL if delta > 0 else ledger.REINSTATEMENT
    entry_id = ledger.entry_id(kind, ref)
    entry_ref = client.collection(schema.LEDGER).document(entry_id)
    user, existing, record_now = db.get_all(client, [user_ref, entry_ref, snap.reference])
    if existing.exists:
        if record_now.update_time != snap.update_time:
            # Another delivery of this change committed between the two reads: decide again.
            raise db.Moved()
        # Each record change writes its own id, so this means the record and the ledger disagree (a
        # hand edit?): store the event for an operator instead of retrying a commit that must fail.
        raise EventProblem(
            Reason.LEDGER_ID_TAKEN, f"{entry_id} exists although the payment's record does not account for it"
        )
    entry_meta = {**metadata, "purchaseId": record.purchase_id}
    book = ledger.Book(client, batch, user, clock.now())
    assert record.purchase_id is not None  # recorded with the purchase: its grant's id
    if delta > 0:
        book.reverse(ref, record.purchase_id, delta, entry_meta)
    else:
        [(grant, ended)] = ledger.ended_grants(client, record.uid, [record.purchase_id], book.wallet).values()
        book.reinstate(ref, grant, ended, -delta, entry_meta)
    balance = book.close()
    props = {"entryId": entry_id, "credits": -delta, **metadata}
    analytics.stage_event(client, batch, _ANALYTICS[kind], record.uid, props, event_id=entry_id)
    return Outcome(Action.REVERSED if delta > 0 else Action.REINSTATED, record.uid, -delta, balance)


def _park(
    client: Client, event: dict[str, Any], snap: DocumentSnapshot, record: PaymentRecord
) -> db.Plan[Outcome]:
    """Keep the event on the payment's record until its purchase is credited."""
    event_id = str(event.get("id"))
    if event_id in record.parked:
        return db.Plan(Outcome(Action.PARKED))
    record.parked.append(event_id)
    record.parked_events[event_id] = problems.payload_of(event)
    batch = client.batch()
    stage_record(client, batch, snap.reference, snap, record)
    message = "no purchase is recorded for this payment (yet); it applies when the purchase is credited"
    problems.stage_problem(
        client, batch, event, Reason.PURCHASE_NOT_FOUND, message, payment_intent=snap.reference.id
    )
    return db.Plan(Outcome(Action.PARKED, problem=Reason.PURCHASE_NOT_FOUND), batch)


def _refund_status(refund: dict[str, Any]) -> str:
    status = _REFUND_STATUS.get(str(refund.get("status")))
    if status is None:
        raise EventProblem(
            Reason.MALFORMED_EVENT, f"the refund has an unknown status {refund.get('status')!r}"
        )
    return status


def on_refund(
    client: Client, refund: dict[str, Any], event: dict[str, Any], stored: bool, *, unpark: bool = True
) -> Outcome:
    """`refund.created` / `refund.updated` / `refund.failed`: one refund, by id, with its status."""
    refund_id = _doc_id(refund.get("id"), "refund id")
    payment_intent = _object_id(refund.get("payment_intent"), "payment intent")
    change = refund_seen(refund_id, _money(refund.get("amount"), "refund amount"), _refund_status(refund))
    meta = {
        "stripeRefundId": refund_id,
        "stripeChargeId": problems.id_of(refund.get("charge")),
        "reason": "refund",
    }
    return settle_payment(
        client, event, payment_intent, change, ref=refund_id, metadata=meta, stored=stored, unpark=unpark
    )


def on_charge_refunded(
    client: Client, charge: dict[str, Any], event: dict[str, Any], stored: bool
) -> Outcome:
    """`charge.refunded`: the refunds it lists (older API versions) by id, then its cumulative
    `amount_refunded`, which may announce a refund before the refund's own event."""
    charge_id = _doc_id(charge.get("id"), "charge id")
    payment_intent = _object_id(charge.get("payment_intent"), "payment intent")
    amount, refunded = (
        _money(charge.get("amount"), "charge amount"),
        _money(charge.get("amount_refunded"), "amount_refunded"),
    )
    if amount <= 0 or refunded > amount:
        raise EventProblem(
            Reason.MALFORMED_EVENT, "the charge's amount_refunded is not between 0 and its amount"
        )
    listed = charge.get("refunds")
    outcomes = []
    for refund in listed.get("data", []) if isinstance(listed, dict) else []:
        if isinstance(refund, dict):
            listed_refund = {**refund, "payment_intent": payment_intent, "charge": charge_id}
            outcomes.append(on_refund(client, listed_refund, event, stored, unpark=False))
    meta = {"stripeChargeId": charge_id, "reason": "refund"}
    change = charge_refunded(refunded, amount)
    outcomes.append(
        settle_payment(
            client, event, payment_intent, change, ref=f"{charge_id}_{refunded}", metadata=meta, stored=stored
        )
    )
    return _combined(outcomes)


def on_dispute(client: Client, dispute: dict[str, Any], event: dict[str, Any], stored: bool) -> Outcome:
    """`charge.dispute.created` takes back what is left; `charge.dispute.closed` gives it back when won."""
    dispute_id = _doc_id(dispute.get("id"), "dispute id")
    payment_intent = _object_id(dispute.get("payment_intent"), "payment intent")
    if event.get("type") == EventType.DISPUTE_CREATED:
        status = OPEN
    elif (status_or_none := _DISPUTE_CLOSED.get(str(dispute.get("status")))) is not None:
        status = status_or_none
    else:
        raise EventProblem(Reason.MALFORMED_EVENT, f"the closed dispute has status {dispute.get('status')!r}")
    meta = {
        "stripeDisputeId": dispute_id,
        "stripeChargeId": problems.id_of(dispute.get("charge")),
        "reason": "dispute",
    }
    return settle_payment(
        client,
        event,
        payment_intent,
        dispute_seen(dispute_id, status),
        ref=dispute_id,
        metadata=meta,
        stored=stored,
    )


def _combined(outcomes: list[Outcome]) -> Outcome:
    """One outcome for an event that made several changes: the sum of what they moved."""
    moved = [o for o in outcomes if o.credits]
    last = (moved or outcomes)[-1]
    return replace(last, credits=sum(o.credits for o in outcomes))


# Dispatch ------------------------------------------------------------------------------------


def _on_session_completed(
    client: Client, settings: Settings, session: dict[str, Any], event: dict[str, Any], stored: bool
) -> Outcome:
    if session.get("mode") == "subscription":
        # Credits come from the subscription's paid invoices (`invoice.paid`), never from its session.
        return Outcome(Action.IGNORED)
    status = session.get("payment_status")
    if status == "paid":
        return credit_checkout_session(client, settings, session, str(event.get("id")))
    if status == "unpaid":
        # A delayed payment method: `checkout.session.async_payment_succeeded` credits it later.
        return Outcome(Action.AWAITING_PAYMENT)
    raise EventProblem(
        Reason.NOT_PAID, f"the completed session has payment_status {status!r}; nothing was credited"
    )


Handler = Callable[["Client", Settings, dict[str, Any], dict[str, Any], bool], Outcome]


def _without_settings(on: Callable[[Client, dict[str, Any], dict[str, Any], bool], Outcome]) -> Handler:
    """A handler of a refund, charge or dispute event (`on(client, object, event, stored)`)."""
    return lambda client, _settings, obj, event, stored: on(client, obj, event, stored)


_HANDLERS: dict[EventType, Handler] = {
    EventType.SESSION_COMPLETED: _on_session_completed,
    EventType.SESSION_ASYNC_SUCCEEDED: lambda client, settings, session, event, _stored: (
        credit_checkout_session(client, settings, session, str(event.get("id")))
    ),
    EventType.CHARGE_REFUNDED: _without_settings(on_charge_refunded),
    EventType.REFUND_CREATED: _without_settings(on_refund),
    EventType.REFUND_UPDATED: _without_settings(on_refund),
    EventType.REFUND_FAILED: _without_settings(on_refund),
    EventType.CHARGE_REFUND_UPDATED: _without_settings(on_refund),
    EventType.DISPUTE_CREATED: _without_settings(on_dispute),
    EventType.DISPUTE_CLOSED: _without_settings(on_dispute),
}


def _subscription_handler(type: EventType) -> Handler | None:
    """Subscription events live in `lib.subscriptions`, which builds on this module (imported here
    on first use, so the two do not import each other at load time)."""
    from functions.lib import subscriptions as subs

    return {
        EventType.SUB_CREATED: subs.on_subscription,
        EventType.SUB_UPDATED: subs.on_subscription,
        EventType.SUB_DELETED: subs.on_subscription,
        EventType.INVOICE_PAID: subs.grant_period,
        EventType.INVOICE_FAILED: subs.on_invoice_failed,
        EventType.INVOICE_PAYMENT_PAID: subs.link_payment,
    }.get(type)


def handler_of(type: Any) -> Handler | None:
    """The handler of an event's `type`; None for a type the webhook does not handle."""
    try:
        known = EventType(type)
    except ValueError:
        return None
    return _HANDLERS.get(known) or _subscription_handler(known)


def _uid_named(obj: Any) -> str | None:
    """The uid an event's object names, to file a stored problem under its user (so export and
    erasure find it): the object's metadata, or an invoice's subscription metadata snapshot."""
    if not isinstance(obj, dict):
        return None
    metadata = obj.get("metadata")
    uid = metadata.get("userId") if isinstance(metadata, dict) else None
    if uid is None and obj.get("object") == "invoice":
        from functions.lib import subscriptions as subs

        uid = subs.invoice_subscription(obj)[1].get("userId")
    return uid if isinstance(uid, str) else None


def handle_event(
    client: Client, settings: Settings, event: dict[str, Any], *, stored: bool = False
) -> Outcome:
    """Apply one verified Stripe event; the same for a webhook delivery, a parked event and a replay.

    Unknown types are ignored. Permanent problems are stored for operators and answered as an
    outcome; transient failures raise (`Unavailable`), so the delivery is retried. `stored`: the
    event comes from `stripe_event_problems`, and is marked resolved when it applies.
    """
    handler = handler_of(event.get("type"))
    if handler is None:
        return Outcome(Action.IGNORED)
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    try:
        if event.get("livemode") is not (settings.stripe_mode == "live"):
            mode = "live" if event.get("livemode") else "test"
            raise EventProblem(
                Reason.LIVEMODE_MISMATCH,
                f"a {mode}-mode event reached a {settings.stripe_mode}-mode deployment",
            )
        if not isinstance(obj, dict):
            raise EventProblem(Reason.MALFORMED_EVENT, "the event has no data.object")
        return handler(client, settings, obj, event, stored)
    except EventProblem as problem:
        uid = _uid_named(obj)
        problems.store(
            client, event, problem.reason, problem.message, uid=uid if isinstance(uid, str) else None
        )
        return Outcome(Action.PROBLEM, problem=problem.reason)


def replay_problem(client: Client, settings: Settings, event_id: str) -> Outcome:
    """Run a stored event again (after its cause was fixed); when it applies, it is marked resolved."""
    event = problems.load(client, event_id)
    if event is None:
        raise NotFound(f"No stored Stripe event {event_id}.")
    outcome = handle_event(client, settings, event, stored=True)
    if outcome.action not in (Action.PROBLEM, Action.PARKED):
        # Purchases and subscription events write no problem state of their own (refunds and
        # disputes do, in their commit; marking again changes nothing): mark the stored copy here.
        batch = client.batch()
        problems.stage_resolved(client, batch, event_id, outcome.action)
        batch.commit(**db.rpc())
    return outcome
