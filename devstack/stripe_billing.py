"""Stripe Billing as the local Stripe double plays it: subscriptions started by a paid
subscription-mode Checkout Session, and a test-clock-like set of lifecycle steps, each answering the
events Stripe would send for it, in Stripe's order (API 2025-03-31.basil and later shapes).

    billing = Billing(prices={"price_pro_1000": 1900})
    events = billing.subscribe(session, "price_pro_1000")      # the Pay button of a subscription session
    events = billing.act(sub_id, "renew")                       # the next period, its invoice paid
    events = billing.act(sub_id, "upgrade", price="price_max")  # invoiced at once (always_invoice)

Steps (`ACTIONS`): `renew` (the next period and its paid invoice; a subscription set to cancel at
period end ends instead), `fail_payment` (the next period, its invoice's payment failing: past_due),
`retry_payment` (that open invoice paid), `upgrade` (a dearer price now, the prorated difference
invoiced at once), `downgrade` (a cheaper price, nothing invoiced: the next renewal bills it),
`cancel_at_period_end`, `resume`, `cancel_now`.

Each subscription has its own clock: it starts at the real time and `renew` moves it to the end of
the period, as a test clock advanced there would. Local only: nothing here is deployed.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devstack import stripe_events as se

ACTIONS = (
    "renew",
    "fail_payment",
    "retry_payment",
    "upgrade",
    "downgrade",
    "cancel_at_period_end",
    "resume",
    "cancel_now",
)
PERIOD_S = 30 * se.DAY


class BillingError(Exception):
    """A step that does not apply to the subscription as it is (status 400 or 404 on the double)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Subscription:
    obj: dict[str, Any]  # the Subscription object as Stripe holds it now
    clock: Callable[[], int]  # the double's time (Unix seconds)
    offset: int = 0  # seconds this subscription's clock runs ahead of the double's
    open_invoice: dict[str, Any] | None = None  # a renewal invoice whose payment failed

    @property
    def item(self) -> dict[str, Any]:
        item: dict[str, Any] = self.obj["items"]["data"][0]
        return item

    @property
    def price(self) -> str:
        return str(self.item["price"]["id"])

    @property
    def period(self) -> tuple[int, int]:
        return int(self.item["current_period_start"]), int(self.item["current_period_end"])

    def now(self) -> int:
        return self.clock() + self.offset


class Billing:
    def __init__(self, prices: dict[str, int], clock: Callable[[], int] | None = None) -> None:
        """`clock`: the time subscriptions start at and run on (the real time when None); each
        subscription's clock then runs ahead of it by what its steps moved it."""
        self.prices = prices  # price id -> unit amount in cents (shared with the double)
        self.clock = clock or (lambda: int(time.time()))
        self.subscriptions: dict[str, Subscription] = {}
        self._lock = threading.Lock()

    def amount(self, price: str) -> int:
        return self.prices.get(price, se.DEFAULT_AMOUNT)

    def of_customer(self, customer: str | None) -> list[dict[str, Any]]:
        """The customer's subscriptions as Stripe holds them, newest first."""
        subs = [s.obj for s in self.subscriptions.values() if s.obj["customer"] == customer]
        return sorted(subs, key=lambda s: s["created"], reverse=True)

    def subscribe(self, session: dict[str, Any], price: str) -> list[dict[str, Any]]:
        """A subscription-mode session paid: the subscription, its first invoice paid, and the events
        `checkout.session.completed`, `customer.subscription.created`, `invoice.paid`
        (`subscription_create`) and `invoice_payment.paid`."""
        metadata = dict(session.get("subscription_data", {}).get("metadata", {}))
        customer = str(session["customer"])
        sub_id = se.new_id("sub")
        start = self.clock()
        obj = se.subscription(
            sub_id,
            metadata.get("userId"),
            metadata.get("planId"),
            price,
            customer=customer,
            period_start=start,
            period_end=start + PERIOD_S,
        )
        obj["metadata"] = metadata
        sub = Subscription(obj, self.clock)
        invoice, pi = self._invoice(sub, "subscription_create", [self._line(price, start, start + PERIOD_S)])
        obj["latest_invoice"] = invoice["id"]
        completed = {
            **session,
            "status": "complete",
            "payment_status": "paid",
            "subscription": sub_id,
            "invoice": invoice["id"],
            "customer_details": se.checkout_session("x", None, None)["customer_details"],
        }
        with self._lock:
            self.subscriptions[sub_id] = sub
        paid = se.invoice_payment(invoice["id"], pi, invoice["amount_paid"])
        events = [
            se.event("checkout.session.completed", completed),
            se.event("customer.subscription.created", copy.deepcopy(obj)),
            se.event("invoice.paid", invoice),
            se.event("invoice_payment.paid", paid),
        ]
        return _at(sub, events)

    def act(self, sub_id: str, action: str, price: str | None = None) -> list[dict[str, Any]]:
        """One lifecycle step of a subscription: the events Stripe sends for it, in its order."""
        if action not in ACTIONS:
            raise BillingError(400, f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        with self._lock:
            sub = self.subscriptions.get(sub_id)
            if sub is None:
                raise BillingError(404, f"No such subscription: '{sub_id}'")
            if sub.obj["status"] == "canceled":
                raise BillingError(400, f"subscription {sub_id} is canceled")
            if action in ("upgrade", "downgrade") and not price:
                raise BillingError(400, f"{action} needs a price")
            events: list[dict[str, Any]] = getattr(self, "_" + action)(sub, *([price] if price else []))
            return _at(sub, events)

    # -- the steps ---------------------------------------------------------------------------

    def _renew(self, sub: Subscription) -> list[dict[str, Any]]:
        if sub.obj["cancel_at_period_end"]:
            return self._end(sub, at=sub.period[1])
        events, invoice, pi = self._next_period(sub)
        return [
            *events,
            se.event("invoice.paid", invoice),
            se.event("invoice_payment.paid", se.invoice_payment(invoice["id"], pi, invoice["amount_paid"])),
        ]

    def _fail_payment(self, sub: Subscription) -> list[dict[str, Any]]:
        if sub.obj["cancel_at_period_end"]:
            return self._end(sub, at=sub.period[1])
        events, invoice, _ = self._next_period(sub)
        failed = {**invoice, "status": "open", "amount_paid": 0, "amount_remaining": invoice["amount_due"]}
        sub.open_invoice = failed
        past_due = self._updated(sub, status="past_due")
        return [*events, se.event("invoice.payment_failed", failed), past_due]

    def _retry_payment(self, sub: Subscription) -> list[dict[str, Any]]:
        failed = sub.open_invoice
        if failed is None:
            raise BillingError(400, f"subscription {sub.obj['id']} has no invoice awaiting payment")
        sub.open_invoice = None
        paid = {**failed, "status": "paid", "amount_paid": failed["amount_due"], "amount_remaining": 0}
        paid["attempt_count"] = int(failed.get("attempt_count") or 1) + 1
        pi = se.new_id("pi")
        return [
            se.event("invoice.paid", paid),
            se.event("invoice_payment.paid", se.invoice_payment(paid["id"], pi, paid["amount_paid"])),
            self._updated(sub, status="active"),
        ]

    def _upgrade(self, sub: Subscription, price: str) -> list[dict[str, Any]]:
        """The portal's upgrade with `always_invoice`: the price changes now, and an invoice bills the
        unused time of the old price (a credit line) and the rest of the period at the new one."""
        old = sub.price
        if self.amount(price) <= self.amount(old):
            raise BillingError(400, f"{price} does not cost more than {old}: that is a downgrade")
        start, end = sub.period
        change = min(max(sub.now(), start), end - 1)
        share = (end - change) / (end - start)
        lines = [
            self._line(old, change, end, -round(self.amount(old) * share), proration=True),
            self._line(price, change, end, round(self.amount(price) * share), proration=True),
        ]
        sub.item["price"] = {**sub.item["price"], "id": price}
        updated = self._updated(sub, previous={"items": {"data": [{"price": {"id": old}}]}})
        invoice, pi = self._invoice(sub, "subscription_update", lines)
        return [
            updated,
            *self._drafted(invoice),
            se.event("invoice.paid", invoice),
            se.event("invoice_payment.paid", se.invoice_payment(invoice["id"], pi, invoice["amount_paid"])),
        ]

    def _downgrade(self, sub: Subscription, price: str) -> list[dict[str, Any]]:
        """A cheaper price from the next period on (no proration): only the subscription changes."""
        old = sub.price
        if self.amount(price) >= self.amount(old):
            raise BillingError(400, f"{price} does not cost less than {old}: that is an upgrade")
        sub.item["price"] = {**sub.item["price"], "id": price}
        return [self._updated(sub, previous={"items": {"data": [{"price": {"id": old}}]}})]

    def _cancel_at_period_end(self, sub: Subscription) -> list[dict[str, Any]]:
        sub.obj |= {"cancel_at_period_end": True, "cancel_at": sub.period[1], "canceled_at": sub.now()}
        return [self._updated(sub, previous={"cancel_at_period_end": False, "cancel_at": None})]

    def _resume(self, sub: Subscription) -> list[dict[str, Any]]:
        if not sub.obj["cancel_at_period_end"]:
            raise BillingError(400, f"subscription {sub.obj['id']} is not set to cancel")
        sub.obj |= {"cancel_at_period_end": False, "cancel_at": None, "canceled_at": None}
        return [self._updated(sub, previous={"cancel_at_period_end": True})]

    def _cancel_now(self, sub: Subscription) -> list[dict[str, Any]]:
        return self._end(sub, at=sub.now())

    # -- the pieces ----------------------------------------------------------------------------

    def _end(self, sub: Subscription, at: int) -> list[dict[str, Any]]:
        sub.offset += max(0, at - sub.now())
        sub.obj |= {"status": "canceled", "ended_at": at, "canceled_at": sub.obj["canceled_at"] or at}
        return [se.event("customer.subscription.deleted", copy.deepcopy(sub.obj))]

    def _next_period(self, sub: Subscription) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
        """The clock at the period's end: the subscription moves to the next period, whose invoice is
        drafted and finalized (`customer.subscription.updated`, `invoice.created`,
        `invoice.finalized`); the invoice and its PaymentIntent, to be paid or fail."""
        old_start, start = sub.period[0], sub.period[1]
        end = start + PERIOD_S
        sub.offset += max(0, start - sub.now())
        sub.item.update(current_period_start=start, current_period_end=end)
        invoice, pi = self._invoice(sub, "subscription_cycle", [self._line(sub.price, start, end)])
        sub.obj["latest_invoice"] = invoice["id"]
        previous = {"items": {"data": [{"current_period_start": old_start, "current_period_end": start}]}}
        return [self._updated(sub, previous=previous), *self._drafted(invoice)], invoice, pi

    def _updated(
        self, sub: Subscription, *, status: str | None = None, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if status is not None:
            previous = {"status": sub.obj["status"]}
            sub.obj["status"] = status
        event = se.event("customer.subscription.updated", copy.deepcopy(sub.obj))
        event["data"]["previous_attributes"] = previous or {}
        return event

    def _drafted(self, invoice: dict[str, Any]) -> list[dict[str, Any]]:
        draft = {**invoice, "status": "draft", "amount_paid": 0, "amount_remaining": invoice["amount_due"]}
        return [
            se.event("invoice.created", draft),
            se.event("invoice.finalized", {**draft, "status": "open"}),
        ]

    def _line(
        self, price: str, start: int, end: int, amount: int | None = None, *, proration: bool = False
    ) -> dict[str, Any]:
        amount = self.amount(price) if amount is None else amount
        return se.invoice_line(price, amount, start, end, proration=proration)

    def _invoice(
        self, sub: Subscription, reason: str, lines: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], str]:
        """A paid invoice of the subscription (its metadata snapshot included) and its PaymentIntent."""
        metadata = sub.obj["metadata"]
        invoice = se.invoice(
            se.new_id("in"),
            sub.obj["id"],
            metadata.get("userId"),
            metadata.get("planId"),
            lines,
            billing_reason=reason,
            customer=sub.obj["customer"],
        )
        invoice["parent"]["subscription_details"]["metadata"] = dict(metadata)
        invoice["created"] = sub.now()
        return invoice, se.new_id("pi")


def _at(sub: Subscription, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of one step, created at the subscription's time (as Stripe's would be when the
    step happens), so "the newest event wins" orders them as Stripe's own `created` would."""
    for event in events:
        event["created"] = sub.now()
    return events
