"""Subscriptions on Stripe Billing: what Stripe last told us about each one (`subscriptions/{id}`),
and the period credits of its paid invoices. The event table, rollover, upgrades, and why any order
or repetition of events grants each invoice once: docs/ARCHITECTURE.md, "Subscriptions".

In code: `on_subscription` and `on_invoice_failed` keep the subscription's document current (the
newest event by `created` wins); `award_of` reads what a paid invoice grants (`Award`: the period,
a trial, an upgrade's prorated difference), `grant_period` commits it with the earlier periods'
ending and rollover, and `link_payment` links the invoice's payment so refunds and disputes reverse
the period's grant through the payment's record (`lib/payments.py`). Both payload shapes are read:
API 2025-03-31.basil and later, and the earlier one. No Stripe API call here. A subscription whose
user was erased (`erased` on its document) is over for good: its later events are answered
`ignored` and write nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from functions.lib import analytics, clock, db, ids, ledger, problems
from functions.lib.config import Plan, Settings
from functions.lib.payments import (
    Action,
    EventProblem,
    EventType,
    Outcome,
    PaymentRecord,
    Reason,
    apply_parked,
    check_price,
    stage_record,
)
from functions.lib.schema import INVOICES, LEDGER, PAYMENTS, SUBSCRIPTIONS, USERS
from functions.lib.wallet import DEFAULT_PRIORITY, PAID, Grant

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentSnapshot, WriteBatch

log = logging.getLogger(__name__)

# Stripe's statuses of a subscription that still bills (or is about to): one of these blocks a second
# checkout for a plan. `incomplete` is left out: its first payment never went through, and Stripe
# expires it after 23 hours.
LIVE_STATUSES = ("active", "trialing", "past_due")
# `subscriptions/{id}.periodGrants`: the grants of the subscription's current period (its period
# grant, the rollover, upgrades), so the next period or the end finds the spent ones too.
PERIOD_GRANTS = "periodGrants"


def live_subscription(client: Client, uid: str) -> dict[str, Any] | None:
    """The user's live subscription as stored (with its `id`), or None.

    One single-field query on `userId`: a user has a handful of subscriptions at most, so the status
    is filtered here rather than by a composite index.
    """
    query = client.collection(SUBSCRIPTIONS).where(filter=db.where("userId", "==", uid))
    live = [
        (snap.to_dict() or {}) | {"id": snap.id}
        for snap in query.stream(**db.rpc())
        if (snap.to_dict() or {}).get("status") in LIVE_STATUSES
    ]
    live.sort(key=lambda s: s.get("eventCreated") or 0, reverse=True)
    return live[0] if live else None


def customer_of(client: Client, uid: str) -> str | None:
    """The user's Stripe customer id: the one recorded on the user, else their subscriptions'."""
    user = client.collection(USERS).document(uid).get(**db.rpc())
    known = (user.to_dict() or {}).get("stripeCustomerId") if user.exists else None
    if isinstance(known, str) and known:
        return known
    query = client.collection(SUBSCRIPTIONS).where(filter=db.where("userId", "==", uid))
    for snap in query.stream(**db.rpc()):
        customer = (snap.to_dict() or {}).get("customerId")
        if isinstance(customer, str) and customer:
            return customer
    return None


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def public(sub: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored subscription as its user sees it (`credits` GET)."""
    if sub is None:
        return None
    return {
        "id": sub.get("id"),
        "planId": sub.get("planId"),
        "status": sub.get("status"),
        "currentPeriodStart": _iso(sub.get("currentPeriodStart")),
        "currentPeriodEnd": _iso(sub.get("currentPeriodEnd")),
        "cancelAtPeriodEnd": bool(sub.get("cancelAtPeriodEnd")),
    }


def at(seconds: Any) -> datetime | None:
    """A Stripe timestamp (Unix seconds) as an aware datetime; None when there is none."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        return None
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    def grant_expiry(self, grace_h: int) -> datetime:
        return self.end + timedelta(hours=grace_h)


# Reading Stripe's objects (both payload shapes) -------------------------------------------------

SUBSCRIPTION_SOURCE = "subscription:"
# On `subscriptions/{id}` once its user was erased (`lib/user_data.py`): its events change nothing.
ERASED = "erased"


def source_of(sub_id: str) -> str:
    """The `source` of every grant a subscription gives (period, upgrade, rollover)."""
    return SUBSCRIPTION_SOURCE + sub_id


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def invoice_subscription(invoice: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The invoice's subscription id and its metadata snapshot: `parent.subscription_details` from API
    2025-03-31.basil on, `subscription` / `subscription_details` before. (None, {}) for an invoice
    that bills no subscription."""
    details = _dict(_dict(invoice.get("parent")).get("subscription_details"))
    if details:
        sub = details.get("subscription")
    else:
        sub, details = invoice.get("subscription"), _dict(invoice.get("subscription_details"))
    sub_id = _dict(sub).get("id") if isinstance(sub, dict) else sub
    return (sub_id if isinstance(sub_id, str) else None), _dict(details.get("metadata"))


def line_price(line: dict[str, Any]) -> str | None:
    """A line's price id: `pricing.price_details.price` (basil on), `price` or `plan` (before)."""
    price = _dict(_dict(line.get("pricing")).get("price_details")).get("price")
    if price is None:
        price = line.get("price") or line.get("plan")
    price = _dict(price).get("id") if isinstance(price, dict) else price
    return price if isinstance(price, str) else None


def line_proration(line: dict[str, Any]) -> bool:
    """Whether a line is a proration: `parent.subscription_item_details.proration` (basil on),
    `proration` (before)."""
    item = _dict(_dict(line.get("parent")).get("subscription_item_details"))
    return bool(item.get("proration") if item else line.get("proration"))


def line_period(line: dict[str, Any]) -> Period | None:
    """The service period a line bills: `lines[].period` (not the invoice's `period_start/end`, which
    only bound its invoice items)."""
    period = _dict(line.get("period"))
    start, end = at(period.get("start")), at(period.get("end"))
    return Period(start, end) if start is not None and end is not None and end > start else None


def lines_of(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    data = _dict(invoice.get("lines")).get("data")
    return [line for line in data if isinstance(line, dict)] if isinstance(data, list) else []


def subscription_period(sub: dict[str, Any]) -> Period | None:
    """A subscription's current period: on its items from basil on, on the subscription before."""
    items = _dict(sub.get("items")).get("data")
    first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    start = at(first.get("current_period_start") or sub.get("current_period_start"))
    end = at(first.get("current_period_end") or sub.get("current_period_end"))
    return Period(start, end) if start is not None and end is not None else None


def subscription_price(sub: dict[str, Any]) -> str | None:
    items = _dict(sub.get("items")).get("data")
    first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    return line_price(first)


# customer.subscription.* and invoice.payment_failed: the subscription's document --------------


def _uid_of(metadata: dict[str, Any]) -> str:
    """Our uid in a subscription's metadata; a subscription this app never sold has none."""
    uid = metadata.get("userId")
    if not ids.is_doc_id(uid):
        raise EventProblem(
            Reason.NOT_OUR_SUBSCRIPTION, "the subscription carries no userId of ours: nothing was credited"
        )
    return str(uid)


def _event_created(event: dict[str, Any]) -> int:
    created = event.get("created")
    return created if isinstance(created, int) and not isinstance(created, bool) else 0


def _subscription_fields(
    settings: Settings, sub: dict[str, Any], event: dict[str, Any], uid: str
) -> dict[str, Any]:
    """`subscriptions/{id}` as a subscription event tells it."""
    deleted = event.get("type") == EventType.SUB_DELETED
    created = _event_created(event)
    period = subscription_period(sub)
    price = subscription_price(sub)
    plan = settings.plan_of_price(price) if price else None
    plan_id = plan.id if plan else _dict(sub.get("metadata")).get("planId")
    customer = problems_id(sub.get("customer"))
    fields: dict[str, Any] = {
        "userId": uid,
        "planId": plan_id if isinstance(plan_id, str) else None,
        "status": "canceled" if deleted else sub.get("status"),
        "currentPeriodStart": period.start if period else None,
        "currentPeriodEnd": period.end if period else None,
        "cancelAtPeriodEnd": bool(sub.get("cancel_at_period_end")),
        "latestInvoiceId": problems_id(sub.get("latest_invoice")),
        "customerId": customer if isinstance(customer, str) else None,
        "eventCreated": created,
        "eventId": event.get("id"),
    }
    if deleted:
        fields["endedAt"] = at(sub.get("ended_at")) or at(created)
        fields[PERIOD_GRANTS] = []
    return fields


def on_subscription(
    client: Client, settings: Settings, sub: dict[str, Any], event: dict[str, Any], stored: bool
) -> Outcome:
    """`customer.subscription.created/updated/deleted`: store what Stripe says, newest event winning;
    `deleted` also writes off the subscription's live grants at once (`void_{grantId}`)."""
    sub_id = sub.get("id")
    if not ids_ok(sub_id):
        raise EventProblem(Reason.MALFORMED_EVENT, "the event has no usable subscription id")
    uid = _uid_of(_dict(sub.get("metadata")))
    deleted = event.get("type") == EventType.SUB_DELETED
    created = _event_created(event)
    fields = _subscription_fields(settings, sub, event, uid)
    sub_ref = client.collection(SUBSCRIPTIONS).document(str(sub_id))
    user_ref = client.collection(USERS).document(uid)
    source = source_of(str(sub_id))

    def plan_() -> db.Plan[Outcome]:
        from google.cloud.firestore import SERVER_TIMESTAMP

        snap, user = db.get_all(client, [sub_ref, user_ref])
        known = (snap.to_dict() or {}) if snap.exists else {}
        if known.get(ERASED):
            return db.Plan(Outcome(Action.IGNORED))
        if not _owned(known, uid):
            raise EventProblem(Reason.SUBSCRIPTION_REUSED, f"subscription {sub_id} belongs to another user")
        if created < int(known.get("eventCreated") or 0) or known.get("endedAt"):
            # An older event, or anything after the end (`deleted` is final): what we have is newer.
            return db.Plan(Outcome(Action.DUPLICATE, uid))
        batch = client.batch()
        write = {**fields, "updatedAt": SERVER_TIMESTAMP}
        if snap.exists:
            batch.update(sub_ref, write, option=db.precondition(client, snap))
        else:
            batch.create(sub_ref, {**write, "createdAt": SERVER_TIMESTAMP})
        credits, balance = 0, ledger.balance_of(user)
        if deleted and user.exists:
            book = ledger.Book(client, batch, user, clock.now())
            for grant in _subscription_grants(client, book, known, source):
                credits -= book.void(grant.id, "subscription ended")
            if book.touched:
                balance = book.close()
        return db.Plan(Outcome(Action.ENDED if deleted else Action.RECORDED, uid, credits, balance), batch)

    return db.commit_optimistically(plan_)


def _owned(known: dict[str, Any], uid: str) -> bool:
    """Whether the stored subscription is (or may become) this user's."""
    return known.get("userId") in (None, uid)


def _subscription_grants(
    client: Client, book: ledger.Book, known: dict[str, Any], source: str
) -> list[Grant]:
    """The subscription's grants a new period or its end must end: the live ones that hold credits,
    then those of its current period (`periodGrants`) that are out of the wallet as read (spent) and
    not yet ended. Ending a spent one (an entry of 0) makes a refund that brings credits back to it
    later write those off, as for the grants that still held credits (`ledger.ended_grants`)."""
    live = [g for g in book.wallet.grants if g.source == source and g.remaining > 0]
    listed = known.get(PERIOD_GRANTS) if _owned(known, book.uid) else None
    read = ledger.wallet_of(book.user)
    out = (
        [g for g in listed if isinstance(g, str) and read.find(g) is None] if isinstance(listed, list) else []
    )
    if not out:
        return live
    found = ledger.ended_grants(client, book.uid, out, read).values()
    return live + [grant for grant, ended in found if not ended]


def on_invoice_failed(
    client: Client, settings: Settings, invoice: dict[str, Any], event: dict[str, Any], stored: bool
) -> Outcome:
    """`invoice.payment_failed`: nothing is granted; the subscription's document notes the failure."""
    sub_id, metadata = invoice_subscription(invoice)
    if sub_id is None or not ids_ok(sub_id):
        return Outcome(Action.IGNORED)
    uid = _uid_of(metadata)
    if not _note_invoice(client, sub_id, uid, invoice, event, "payment_failed"):
        return Outcome(Action.IGNORED)
    return Outcome(Action.RECORDED, uid)


def _note_invoice(
    client: Client, sub_id: str, uid: str, invoice: dict[str, Any], event: dict[str, Any], status: str
) -> bool:
    """Record the subscription's latest invoice and its outcome (the newest invoice event wins);
    False, writing nothing, for a subscription whose user was erased."""
    ref = client.collection(SUBSCRIPTIONS).document(sub_id)

    def plan_() -> db.Plan[bool]:
        snap = ref.get(**db.rpc())
        if (snap.to_dict() or {}).get(ERASED):
            return db.Plan(False)
        batch = client.batch()
        _stage_invoice_note(client, batch, snap, uid, invoice, event, status)
        return db.Plan(True, batch)

    return db.commit_optimistically(plan_)


def _stage_invoice_note(
    client: Client,
    batch: WriteBatch,
    snap: DocumentSnapshot,
    uid: str,
    invoice: dict[str, Any],
    event: dict[str, Any],
    status: str,
    also: dict[str, Any] | None = None,
) -> None:
    """Stage the subscription document's latest invoice (when this event is the newest) and the
    fields in `also` (on this user's subscription only), always under a precondition on the version
    read: a grant's commit then fails, and decides again, when a `deleted` committed in between."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    known = (snap.to_dict() or {}) if snap.exists else {}
    created = _event_created(event)
    owned = _owned(known, uid)
    fields: dict[str, Any] = {"updatedAt": SERVER_TIMESTAMP, **((also or {}) if owned else {})}
    if owned and created >= int(known.get("invoiceEventCreated") or 0):
        fields |= {
            "latestInvoiceId": invoice.get("id"),
            "latestInvoiceStatus": status,
            "invoiceEventCreated": created,
        }
    if snap.exists:
        batch.update(snap.reference, fields, option=db.precondition(client, snap))
    else:
        batch.create(snap.reference, {**fields, "userId": uid, "createdAt": SERVER_TIMESTAMP})


def ids_ok(value: Any) -> bool:
    return ids.is_doc_id(value)


def problems_id(value: Any) -> Any:
    return problems.id_of(value)


# invoice.paid: the period's credits, once per invoice -------------------------------------------


class BillingReason(StrEnum):
    """The invoice's `billing_reason`s that grant credits (`Award.kind`, the grant's `billingReason`)."""

    CREATE = "subscription_create"
    CYCLE = "subscription_cycle"
    UPDATE = "subscription_update"


@dataclass(frozen=True)
class Award:
    """What a paid subscription invoice grants: `credits` of `plan`, until `expires_at`."""

    kind: BillingReason
    plan: Plan
    credits: int
    period: Period
    expires_at: datetime
    trial: bool = False


def _plan_of(settings: Settings, price: str | None, metadata: dict[str, Any]) -> Plan:
    """The plan a line bills: by its price first (the portal changes a subscription's price, never
    its metadata), else the metadata's planId."""
    plan = settings.plan_of_price(price) if price else None
    if plan is None:
        plan_id = metadata.get("planId")
        plan = settings.plans.get(plan_id) if isinstance(plan_id, str) else None
    if plan is None:
        raise EventProblem(
            Reason.UNKNOWN_PLAN, f"price {price!r} is not a plan of PLANS: nothing was credited"
        )
    return plan


def award_of(
    settings: Settings, invoice: dict[str, Any], metadata: dict[str, Any], known_period: Period | None
) -> Award | None:
    """What the paid invoice grants; None for a billing reason that grants nothing (manual invoices,
    thresholds). `known_period` is the subscription's current period as stored (for upgrades)."""
    reason = invoice.get("billing_reason")
    lines = lines_of(invoice)
    if reason in (BillingReason.CREATE, BillingReason.CYCLE):
        line = next((li for li in lines if not line_proration(li) and line_period(li)), None)
        period = line_period(line) if line else None
        if line is None or period is None:
            raise EventProblem(Reason.MALFORMED_EVENT, "the invoice has no subscription line with a period")
        plan = _plan_of(settings, line_price(line), metadata)
        paid = invoice.get("amount_paid")
        trial = reason == BillingReason.CREATE and paid == 0
        if not trial:
            check_price(
                plan.amount, plan.currency, line.get("amount"), invoice.get("currency"), f"plan {plan.id}"
            )
        credits = plan.trial_credits if trial else plan.credits
        return Award(
            BillingReason(reason), plan, credits, period, period.grant_expiry(settings.period_grace_h), trial
        )
    if reason == BillingReason.UPDATE:
        up = [li for li in lines if line_proration(li) and (li.get("amount") or 0) > 0 and line_period(li)]
        down = [li for li in lines if line_proration(li) and (li.get("amount") or 0) < 0]
        if not up:
            raise EventProblem(
                Reason.MALFORMED_EVENT, "the upgrade invoice has no proration line for the new price"
            )
        new = _plan_of(settings, line_price(up[0]), {})
        old = _plan_of(settings, line_price(down[0]), {}) if down else None
        unused = line_period(up[0])
        assert unused is not None
        if known_period is None or known_period.end != unused.end:
            raise EventProblem(
                Reason.PERIOD_UNKNOWN,
                "the subscription's current period is not known yet; replay after its update arrives",
            )
        whole = (known_period.end - known_period.start).total_seconds()
        left = (unused.end - unused.start).total_seconds()
        diff = new.credits - (old.credits if old else 0)
        credits = max(0, int(diff * left // whole)) if whole > 0 else 0
        return Award(BillingReason.UPDATE, new, credits, unused, unused.grant_expiry(settings.period_grace_h))
    return None


@dataclass(frozen=True)
class Committed:
    """A commit's outcome, and the payment events it unparked (run after the commit)."""

    outcome: Outcome
    parked: dict[str, str | None]

    def unpark(self, client: Client, settings: Settings) -> Outcome:
        """Apply the unparked events (each in its own commit), then answer the outcome."""
        for parked_id, payload in self.parked.items():
            apply_parked(client, settings, parked_id, payload)
        return self.outcome


def grant_period(
    client: Client, settings: Settings, invoice: dict[str, Any], event: dict[str, Any], stored: bool
) -> Outcome:
    """`invoice.paid` of a subscription invoice: grant `period_{invoiceId}` once, end the earlier
    periods' grants (rollover), and open the payment's record when the payment is known."""
    sub_id, metadata = invoice_subscription(invoice)
    if sub_id is None:
        return Outcome(Action.IGNORED)  # a one-off invoice: nothing of ours
    invoice_id = invoice.get("id")
    if not ids_ok(invoice_id) or not ids_ok(sub_id):
        raise EventProblem(Reason.MALFORMED_EVENT, "the event has no usable invoice or subscription id")
    uid = _uid_of(metadata)
    ident = ledger.entry_id(ledger.PERIOD, str(invoice_id))
    source = source_of(sub_id)
    paid = invoice.get("amount_paid")
    paid = paid if isinstance(paid, int) and not isinstance(paid, bool) and paid > 0 else 0
    direct_pi = problems_id(invoice.get("payment_intent"))  # before basil only
    customer = problems_id(invoice.get("customer"))
    user_ref = client.collection(USERS).document(uid)
    entry_ref = client.collection(LEDGER).document(ident)
    sub_ref = client.collection(SUBSCRIPTIONS).document(sub_id)
    link_ref = client.collection(INVOICES).document(str(invoice_id))

    def plan_() -> db.Plan[Committed]:

        user, existing, sub_snap, link = db.get_all(client, [user_ref, entry_ref, sub_ref, link_ref])
        if (sub_snap.to_dict() or {}).get(ERASED):
            return db.Plan(Committed(Outcome(Action.IGNORED), {}))
        if existing.exists:
            if existing.get("userId") != uid:
                raise EventProblem(Reason.INVOICE_REUSED, f"{ident} was granted to another user")
            return db.Plan(Committed(Outcome(Action.DUPLICATE, uid, 0, ledger.balance_of(user)), {}))
        known = (sub_snap.to_dict() or {}) if sub_snap.exists else {}
        start, end = known.get("currentPeriodStart"), known.get("currentPeriodEnd")
        award = award_of(settings, invoice, metadata, Period(start, end) if start and end else None)
        if award is None:
            return db.Plan(Committed(Outcome(Action.IGNORED, uid), {}))
        linked = (link.to_dict() or {}) if link.exists else {}
        pi = direct_pi if ids_ok(direct_pi) else linked.get("paymentIntentId")
        record_snap = client.collection(PAYMENTS).document(pi).get(**db.rpc()) if pi and paid else None
        batch = client.batch()
        book = ledger.Book(client, batch, user, clock.now())
        grant = Grant(
            ident, award.credits, award.credits, PAID, DEFAULT_PRIORITY, source, book.now, award.expires_at
        )
        ours = _subscription_grants(client, book, known, source)
        meta = {
            "stripeInvoiceId": invoice_id,
            "stripeSubscriptionId": sub_id,
            "stripeEventId": event.get("id"),
            "planId": award.plan.id,
            "billingReason": award.kind,
            "trial": award.trial or None,
            "periodStart": award.period.start.isoformat(),
            "periodEnd": award.period.end.isoformat(),
        }
        book.add_grant(ledger.PERIOD, str(invoice_id), grant, meta)
        current = _end_periods(book, ours, award, str(invoice_id), ended=bool(known.get("endedAt")))
        balance = book.close({"stripeCustomerId": customer} if ids_ok(customer) else None)
        link_fields = {"userId": uid, "grantId": ident, "credits": award.credits, "amountPaid": paid}
        if pi:
            link_fields["paymentIntentId"] = pi
        _stage_link(client, batch, link, link_fields)
        also = {PERIOD_GRANTS: sorted(current)} if current is not None else None
        _stage_invoice_note(client, batch, sub_snap, uid, invoice, event, "paid", also)
        parked = (
            _open_record(client, batch, record_snap, uid, ident, award.credits, paid) if record_snap else {}
        )
        props = {"invoiceId": invoice_id, "planId": award.plan.id, "credits": award.credits}
        analytics.stage_event(client, batch, analytics.PERIOD_GRANTED, uid, props, event_id=ident)
        return db.Plan(
            Committed(Outcome(Action.GRANTED, uid, balance - ledger.balance_of(user), balance), parked), batch
        )

    return db.commit_optimistically(plan_).unpark(client, settings)


def _end_periods(
    book: ledger.Book, ours: list[Grant], award: Award, invoice_id: str, *, ended: bool
) -> set[str] | None:
    """After a period grant lands: the subscription's earlier grants end, spent ones included (up to
    the plan's rollover of what they hold carried into `rollover_{invoiceId}`), unless this grant is
    itself over: the subscription has ended, or a later period was granted first (events out of
    order). The grants of the subscription's current period now; None when this grant changed none.
    """
    ident = ledger.entry_id(ledger.PERIOD, invoice_id)
    later = [g for g in ours if g.expires_at is not None and g.expires_at > award.expires_at]
    if ended or (later and award.kind != BillingReason.UPDATE):
        book.void(ident, "subscription ended" if ended else "a later period was granted")
        return None
    if award.kind == BillingReason.UPDATE:
        return {ident, *(g.id for g in ours)}  # an upgrade adds to the current period, whose grants stay
    earlier = [g for g in ours if g.expires_at is None or g.expires_at < award.expires_at]
    # Grants ending with this one stay: an upgrade paid in the hour before this period's invoice.
    current = {ident, *(g.id for g in ours if g not in earlier)}
    held = sum(g.remaining for g in earlier)
    for old in earlier:
        book.end_grant(old.id, f"period ended: {ident}")
    carried = min(held, award.plan.rollover)
    if carried:
        rid = ledger.entry_id(ledger.ROLLOVER, invoice_id)
        source = earlier[0].source
        roll = Grant(rid, carried, carried, PAID, DEFAULT_PRIORITY, source, book.now, award.expires_at)
        meta = {"stripeInvoiceId": invoice_id, "fromGrants": [g.id for g in earlier], "planId": award.plan.id}
        book.add_grant(ledger.ROLLOVER, invoice_id, roll, meta)
        current.add(rid)
    return current


def _open_record(
    client: Client,
    batch: WriteBatch,
    snap: DocumentSnapshot,
    uid: str,
    grant_id: str,
    credits: int,
    paid: int,
) -> dict[str, str | None]:
    """Open the payment's record for an invoice's grant (its "purchase"), keeping what refunds and
    disputes parked on it; the parked events to apply after the commit."""
    record = PaymentRecord.of(snap)
    if record.purchased:
        raise EventProblem(
            Reason.PAYMENT_REUSED, f"payment intent {snap.reference.id} already paid for {record.purchase_id}"
        )
    opened = replace(record, uid=uid, purchase_id=grant_id, credits=credits, amount=paid)
    stage_record(client, batch, snap.reference, snap, opened)
    return {pid: record.parked_events.get(pid) for pid in record.parked}


def _stage_link(client: Client, batch: WriteBatch, snap: DocumentSnapshot, fields: dict[str, Any]) -> None:
    """`invoices/{invoiceId}`: the invoice's grant and payment, written by whichever of `invoice.paid`
    and `invoice_payment.paid` comes first and completed by the other, under a precondition on the
    version read, so one of two racing deliveries always sees the other's half."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    if snap.exists:
        batch.update(
            snap.reference, {**fields, "updatedAt": SERVER_TIMESTAMP}, option=db.precondition(client, snap)
        )
    else:
        batch.create(snap.reference, {**fields, "createdAt": SERVER_TIMESTAMP, "updatedAt": SERVER_TIMESTAMP})


def link_payment(
    client: Client, settings: Settings, payment: dict[str, Any], event: dict[str, Any], stored: bool
) -> Outcome:
    """`invoice_payment.paid` (API 2025-03-31.basil on): which PaymentIntent paid which invoice. With
    the invoice's grant known, the payment's record opens (and applies any refund parked on it)."""
    invoice_id = problems_id(payment.get("invoice"))
    detail = _dict(payment.get("payment"))
    pi = problems_id(detail.get("payment_intent"))
    if detail.get("type") not in (None, "payment_intent") or not ids_ok(pi):
        return Outcome(Action.IGNORED)  # paid out of band or by another method: no refund can reach us
    if not ids_ok(invoice_id):
        raise EventProblem(Reason.MALFORMED_EVENT, "the invoice payment names no usable invoice")
    link_ref = client.collection(INVOICES).document(str(invoice_id))
    record_ref = client.collection(PAYMENTS).document(str(pi))

    def plan_() -> db.Plan[Committed]:
        link, record_snap = db.get_all(client, [link_ref, record_ref])
        linked = (link.to_dict() or {}) if link.exists else {}
        record = PaymentRecord.of(record_snap)
        uid = linked.get("userId")
        if linked.get("paymentIntentId") == pi and (record.purchased or not linked.get("grantId")):
            return db.Plan(Committed(Outcome(Action.DUPLICATE, uid), {}))
        batch = client.batch()
        _stage_link(client, batch, link, {"paymentIntentId": pi})
        parked: dict[str, str | None] = {}
        grant_id, paid = linked.get("grantId"), int(linked.get("amountPaid") or 0)
        if grant_id and paid and not record.purchased:
            credits = int(linked.get("credits") or 0)
            parked = _open_record(client, batch, record_snap, str(uid), grant_id, credits, paid)
        return db.Plan(Committed(Outcome(Action.LINKED, uid), parked), batch)

    return db.commit_optimistically(plan_).unpark(client, settings)
