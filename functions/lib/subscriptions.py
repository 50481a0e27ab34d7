"""Subscriptions on Stripe Billing: what Stripe last told us about each one (`subscriptions/{id}`),
and the period credits of its paid invoices (docs/ARCHITECTURE.md, "Subscriptions").

Credits come only from paid invoices. `invoice.paid` of a subscription invoice grants
`period_{invoiceId}` once (`create` on the entry id, in the commit that raises the balance), whatever
the order or repetition of the events around it:

- `subscription_create` / `subscription_cycle`: the plan's credits (its `trialCredits` for a $0
  trial invoice), paid, expiring at the line's period end plus PERIOD_GRACE_H, so the hour between a
  renewal and its invoice's payment never leaves the subscriber without credits. The grant ends the
  subscription's earlier period grants in the same commit: up to the plan's `rollover` of what they
  still hold carries into `rollover_{invoiceId}` (expiring with the new grant), the rest is written
  off (`expiry_{grantId}_period_{invoiceId}`).
- `subscription_update` (an upgrade invoiced at once, `always_invoice`): the difference in plan
  credits for the unused part of the period, rounded down, never below 0. Downgrades wait for the
  next cycle; `customer.subscription.updated` grants nothing.

`customer.subscription.created/updated/deleted` and `invoice.payment_failed` keep the subscription's
document current (the newest event by `created` wins; an older one changes nothing). `deleted` also
writes the subscription's live period and rollover grants off at once (`void_{grantId}`, which
keeps them ended for a later refund). A refund or dispute of an invoice's payment reverses that
period's grant through the payment's record (`payments.PaymentRecord`, with the period grant as its
purchase); the link from payment to invoice comes from the events themselves, `invoice.payment_intent`
before API 2025-03-31.basil and `invoice_payment.paid` from basil on. No Stripe API call here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from functions.lib import db
from functions.lib.schema import SUBSCRIPTIONS, USERS

if TYPE_CHECKING:
    from google.cloud.firestore import Client

log = logging.getLogger(__name__)

# Stripe's statuses of a subscription that still bills (or is about to): one of these blocks a second
# checkout for a plan. `incomplete` is left out: its first payment never went through, and Stripe
# expires it after 23 hours.
LIVE_STATUSES = ("active", "trialing", "past_due")


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
