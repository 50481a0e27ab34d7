"""A reference model of every balance, grant and debt, driven by a hypothesis state machine against the
real domain functions and the Firestore emulator.

The model is plain Python, written apart from the production code: what Stripe has told the backend
about each payment (refunds by id with their amounts and failures, the largest cumulative
`amount_refunded`, disputes and how they closed), which purchases were credited, and each user's
grants (amount, remaining, category, priority, expiry on a clock the test controls) and debt. From
that alone it says what each user must hold (docs/ARCHITECTURE.md, "Grants" and "Stripe events"):
charges draw in spend order from unexpired grants, refunds give draws back (nothing to a grant that
expired or was voided), a reversal takes from its purchase's grant and the rest becomes debt, a new
grant or a reinstatement repays debt first.

Steps: subscriptions to a plan (Stripe's four events in any order), renewals at the period's end on
the model's clock, which Stripe's periods run on (in Stripe's order or the reverse: the period grant,
the earlier period ending with up to the plan's rollover carried; late when the clock already passed
the end, after the grants expired),
renewals whose payment fails (nothing granted) and is then retried, upgrades from one plan to
another (their invoice's five events in any order: the prorated difference in plan credits, the
period's grants kept) and downgrades (nothing until the next renewal bills the cheaper plan),
immediate cancellations, refunds and disputes of a paid invoice's payment (its period's grant,
then debt; a won dispute gives back, debt first);
purchases (duplicated, both session event types, unpaid ones; one pack expires), refunds
announced by `refund.created` and by `charge.refunded` in either order, refund failures, disputes
opened, won and lost, operator grants with any terms, voids, the clock moving on, generations that
succeed, fail or crash, settlement passes and sweeps, and steps run concurrently in threads (a refund
racing its purchase, a sweep racing a late completion, a charge racing an expiry write-off, a crashed
charge's refund racing a reversal of the same grant). After every step each user's unexpired grants'
remaining, debt and spendable balance must equal the model's, and the stored ledger must agree with
itself (credits == sum of entries == grants + debt).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devstack import stripe_events as se
from tests.helpers import TERMS, assert_ledger_consistent

# Minutes of the suite's time (browsers, served stacks, emulator start-ups): `scripts/test --fast` skips them.
pytestmark = pytest.mark.slow

USERS = ("ann", "bo", "cy")
PAYMENTS = 4  # a small pool, so duplicates and several events per payment happen often
PACKS = {"starter": 100, "creator": 500}
CREATOR_EXPIRES = timedelta(days=3)  # the model's catalog: creator packs expire, starter packs never
AMOUNT = 1000  # what each payment cost, in cents
COST = {"initial": 50, "iteration": 25}
# Two plans: subscribers start on pro and move to max (an upgrade, its prorated difference invoiced
# at once) and back (a downgrade, billed from the next renewal). Two initial generations spend a pro
# period exactly, so spent period grants (which must still end with their period) are common.
PLANS = {
    "pro": {"credits": 100, "rollover": 30, "amount": 1500, "price": "price_prop_pro"},
    "max": {"credits": 300, "rollover": 60, "amount": 3000, "price": "price_prop_max"},
}
PLAN_OF_PRICE = {plan["price"]: plan for plan in PLANS.values()}
PERIOD_GRACE = timedelta(hours=72)

_env: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _bind(emulator: Any, db: Any, settings: Any) -> None:
    _env.update(emulator=emulator, db=db, settings=settings)


class FailingProvider:
    def generate(self, prompt: str) -> str:
        from functions.lib.models import ModelError

        raise ModelError("model_unavailable")


@dataclass
class Payment:
    """One Checkout payment: what Stripe did (the truth) and what it told the backend (the model's input)."""

    n: int
    credited: bool = False
    issued: list[tuple[str, int]] = field(default_factory=list)  # refunds Stripe made: (id, amount)
    failed: set[str] = field(default_factory=set)
    told_refunds: dict[str, bool] = field(default_factory=dict)  # refund id -> failed, as announced
    told_cumulative: int = 0
    disputes: dict[str, str] = field(default_factory=dict)  # id -> open | won | lost
    applied: int = 0  # credits the model has taken back for this payment so far (net)

    @property
    def uid(self) -> str:
        return USERS[self.n % len(USERS)]

    @property
    def pack(self) -> str:
        return "starter" if self.n % 2 else "creator"

    @property
    def pi(self) -> str:
        return f"pi_prop_{self.n}"

    @property
    def charge(self) -> str:
        return f"ch_prop_{self.n}"

    @property
    def grant_id(self) -> str:
        return f"purchase_cs_prop_{self.n}"

    def amount_of(self, refund_id: str) -> int:
        return dict(self.issued)[refund_id]

    def truly_refunded(self) -> int:
        """What Stripe's Charge reports as `amount_refunded` now: refunds made and not failed."""
        return sum(amount for rid, amount in self.issued if rid not in self.failed)

    def taken_back(self) -> int:
        """The credits this payment must have given back, from what the backend was told."""
        credits = PACKS[self.pack]
        if any(status in ("open", "lost") for status in self.disputes.values()):
            return credits
        by_id = sum(self.amount_of(rid) for rid, failed in self.told_refunds.items() if not failed)
        failed = sum(self.amount_of(rid) for rid, failed in self.told_refunds.items() if failed)
        refunded = min(AMOUNT, max(by_id, self.told_cumulative - failed, 0))
        return credits * refunded // AMOUNT


@dataclass
class SubPayment:
    """A paid subscription invoice: its period grant and what refunds of its payment took back."""

    uid: str
    grant_id: str
    pi: str
    charge: str
    credits: int  # what the invoice granted
    amount: int  # what it charged, in cents
    refunded: int = 0  # cents
    applied: int = 0  # credits taken back so far
    dispute: str | None = None  # open | won | lost

    def taken_back(self) -> int:
        if self.dispute in ("open", "lost"):
            return self.credits
        return self.credits * min(self.refunded, self.amount) // self.amount


@dataclass
class ModelGrant:
    id: str
    remaining: int
    category: str
    priority: int
    expires_at: datetime | None
    created_at: datetime
    ended: bool = False  # voided, or written off when the next period landed
    source: str = ""


@dataclass
class ModelWallet:
    """One user's grants and debt, by the rules as written in the docs, expiring eagerly: a grant
    past its expiry is gone here at once (the backend writes it off lazily, before any movement)."""

    grants: dict[str, ModelGrant] = field(default_factory=dict)
    debt: int = 0

    def alive(self, g: ModelGrant, now: datetime) -> bool:
        return not g.ended and (g.expires_at is None or now < g.expires_at)

    def live(self, now: datetime) -> dict[str, int]:
        return {g.id: g.remaining for g in self.grants.values() if self.alive(g, now) and g.remaining > 0}

    def spendable(self, now: datetime) -> int:
        return sum(self.live(now).values()) + self.debt

    def add(self, g: ModelGrant) -> None:
        repay = min(g.remaining, -self.debt)
        self.debt += repay
        g.remaining -= repay
        self.grants[g.id] = g

    def draw(self, cost: int, now: datetime) -> dict[str, int]:
        order = sorted(
            (g for g in self.grants.values() if self.alive(g, now) and g.remaining > 0),
            key=lambda g: (
                g.priority,
                g.expires_at is None,
                g.expires_at or now,
                g.category == "paid",
                g.created_at,
                g.id,
            ),
        )
        draws, left = {}, cost
        for g in order:
            take = min(left, g.remaining)
            if take:
                draws[g.id], g.remaining, left = take, g.remaining - take, left - take
        assert left == 0
        return draws

    def give_back(self, gid: str, credits: int, now: datetime) -> None:
        g = self.grants[gid]
        if self.alive(g, now):
            g.remaining += credits

    def take(self, gid: str, credits: int, now: datetime) -> None:
        g = self.grants[gid]
        from_grant = min(credits, g.remaining) if self.alive(g, now) else 0
        g.remaining -= from_grant
        self.debt -= credits - from_grant

    def reinstate(self, gid: str, credits: int, now: datetime) -> None:
        repay = min(credits, -self.debt)
        self.debt += repay
        self.give_back(gid, credits - repay, now)


GRANT_TERMS = {
    "category": st.sampled_from(["promotional", "paid"]),
    # Few values, and the packs' own (priority 50; never, or 72 hours for creator packs), so grants
    # often tie on priority and expiry and the later keys of the spend order decide.
    "priority": st.sampled_from([50, 50, 10]),
    "expires_in_hours": st.sampled_from([None, 72, 24]),
}


class Credits(RuleBasedStateMachine):
    @initialize(first=st.lists(st.fixed_dictionaries(GRANT_TERMS), min_size=len(USERS), max_size=len(USERS)))
    def setup(self, first: list[dict[str, Any]]) -> None:
        """Each user starts with one operator grant of random terms, so early steps already spend."""
        from devstack.stripe_billing import Billing
        from functions.lib import clock, terms
        from functions.lib.breaker import CircuitBreaker
        from functions.lib.config import CreditPack, Plan

        _env["emulator"].clear()
        self.db = _env["db"]
        base = _env["settings"]
        packs = {
            "starter": CreditPack("starter", PACKS["starter"], base.credit_packs["starter"].price),
            "creator": CreditPack(
                "creator", PACKS["creator"], base.credit_packs["creator"].price, CREATOR_EXPIRES.days
            ),
        }
        # The money invariants, not the abuse limits (tests/test_generate_limits.py), are under test here.
        self.settings = replace(
            base,
            credit_packs=packs,
            plans={
                plan_id: Plan(plan_id, plan["price"], plan["credits"], plan["rollover"])
                for plan_id, plan in PLANS.items()
            },
            period_grace_h=int(PERIOD_GRACE.total_seconds() // 3600),
            generate_concurrency=10**6,
            generate_limit=10**6,
            generate_failure_limit=10**6,
        )
        self.breaker = CircuitBreaker(10**6, 1, 1)
        # The subscriptions' invoices carry Stripe's (real) times: the model's clock starts there.
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.clock = contextlib.ExitStack()
        self.clock.enter_context(clock.frozen(self.now))
        # Stripe's periods run on the model's clock: a subscription starts now, and renews at its
        # period's end (the `renew` steps move the clock there first).
        self.billing = Billing(
            {plan["price"]: plan["amount"] for plan in PLANS.values()}, lambda: int(self.now.timestamp())
        )
        self.subscribed: dict[str, str] = {}  # uid -> live subscription id
        self.plan_of: dict[str, str] = {}  # uid -> the plan its live subscription is billed at
        self.invoices: list[SubPayment] = []
        for uid in USERS:
            terms.accept(self.db, uid, TERMS, TERMS)
        self.payments = [Payment(n) for n in range(PAYMENTS)]
        self.wallets = {uid: ModelWallet() for uid in USERS}
        # generation id -> (uid, draws) while `charged`: a crashed charge the settlement will refund
        self.crashed: dict[str, tuple[str, dict[str, int]]] = {}
        self.projects: dict[str, list[str]] = {uid: [] for uid in USERS}
        self.grants_made = 0
        self.later = datetime.now(UTC) + timedelta(seconds=self.settings.stale_charge_after_s + 60)
        for uid, grant_terms in zip(USERS, first, strict=True):
            self.operator_grant(uid, 60, **grant_terms)

    def teardown(self) -> None:
        if hasattr(self, "clock"):
            self.clock.close()

    # The model's clock ------------------------------------------------------------------------------

    def move_clock(self, to: datetime) -> None:
        from functions.lib import clock

        self.now = to
        clock.set_to(to)

    @rule(hours=st.sampled_from([12, 30]))
    def time_passes(self, hours: int) -> None:
        self.move_clock(self.now + timedelta(hours=hours))

    # Payments: the backend's events, and what they move in the model ----------------------------------

    def deliver(self, event: dict[str, Any]) -> None:
        from functions.lib import payments

        outcome = payments.handle_event(self.db, self.settings, event)
        assert outcome.action != payments.Action.PROBLEM, outcome

    def sync(self, p: Payment) -> None:
        """Bring the model up to what the backend was told of `p`: its grant once it is credited, then
        the difference between what it must have taken back and what the model took so far."""
        wallet = self.wallets[p.uid]
        if not p.credited:
            return
        if p.grant_id not in wallet.grants:
            expires = self.now + CREATOR_EXPIRES if p.pack == "creator" else None
            wallet.add(ModelGrant(p.grant_id, PACKS[p.pack], "paid", 50, expires, self.now))
        delta = p.taken_back() - p.applied
        if delta > 0:
            wallet.take(p.grant_id, delta, self.now)
        elif delta < 0:
            wallet.reinstate(p.grant_id, -delta, self.now)
        p.applied += delta

    def purchase_event(self, p: Payment, kind: str) -> dict[str, Any]:
        session = f"cs_prop_{p.n}"
        if kind == "async":
            return se.async_payment_succeeded(session, p.uid, p.pack, p.pi)
        return se.checkout_completed(session, p.uid, p.pack, p.pi, paid=kind == "completed")

    @rule(n=st.integers(0, PAYMENTS - 1), kind=st.sampled_from(["completed", "async", "unpaid"]))
    def purchase(self, n: int, kind: str) -> None:
        p = self.payments[n]
        self.deliver(self.purchase_event(p, kind))
        p.credited = p.credited or kind != "unpaid"
        self.sync(p)

    def new_refund(self, p: Payment, share: float) -> tuple[str, int] | None:
        room = AMOUNT - p.truly_refunded()
        if room <= 0:
            return None
        refund = (f"re_prop_{p.n}_{len(p.issued)}", max(1, int(room * share)))
        p.issued.append(refund)
        return refund

    def refund_created(self, p: Payment, refund_id: str) -> dict[str, Any]:
        p.told_refunds.setdefault(refund_id, False)
        return se.refund_event("refund.created", refund_id, p.charge, p.pi, p.amount_of(refund_id), "pending")

    @rule(
        n=st.integers(0, PAYMENTS - 1),
        share=st.sampled_from([0.25, 0.5, 1.0]),
        announce=st.sampled_from(["refund", "charge", "both"]),
    )
    def refund(self, n: int, share: float, announce: str) -> None:
        p = self.payments[n]
        made = self.new_refund(p, share)
        if made is None:
            return
        if announce in ("refund", "both"):
            self.deliver(self.refund_created(p, made[0]))
        if announce in ("charge", "both"):
            self.announce_cumulative(n)
        self.sync(p)

    @rule(n=st.integers(0, PAYMENTS - 1))
    def announce_cumulative(self, n: int) -> None:
        """`charge.refunded` with the charge's refunded total as Stripe reports it now."""
        p = self.payments[n]
        total = p.truly_refunded()
        if total == 0:
            return
        p.told_cumulative = max(p.told_cumulative, total)
        self.deliver(se.charge_refunded(p.charge, p.pi, AMOUNT, total))
        self.sync(p)

    @rule(n=st.integers(0, PAYMENTS - 1), data=st.data())
    def refund_fails(self, n: int, data: st.DataObject) -> None:
        p = self.payments[n]
        open_refunds = [rid for rid, _ in p.issued if rid not in p.failed]
        if not open_refunds:
            return
        rid = data.draw(st.sampled_from(open_refunds))
        p.failed.add(rid)
        p.told_refunds[rid] = True
        self.deliver(se.refund_event("refund.failed", rid, p.charge, p.pi, p.amount_of(rid), "failed"))
        self.sync(p)

    @rule(n=st.integers(0, PAYMENTS - 1), step=st.sampled_from(["created", "won", "lost"]))
    def dispute(self, n: int, step: str) -> None:
        p = self.payments[n]
        dispute_id = f"dp_prop_{n}"
        known = p.disputes.get(dispute_id)
        if step == "created":
            self.deliver(se.dispute_created(dispute_id, p.charge, p.pi, AMOUNT))
            if known is None:
                p.disputes[dispute_id] = "open"
        else:
            self.deliver(se.dispute_closed(dispute_id, p.charge, p.pi, step, AMOUNT))
            if known in (None, "open"):
                p.disputes[dispute_id] = step
        self.sync(p)

    # Subscriptions -----------------------------------------------------------------------------------

    def deliver_in(self, events: list[dict[str, Any]], order: list[int]) -> None:
        """Deliver `events` in the drawn order (a permutation of their indexes, the rest after)."""
        rest = [i for i in range(len(events)) if i not in order]
        for i in [*order, *rest]:
            self.deliver(events[i])

    def to_period_end(self, sub_id: str) -> None:
        """The clock on to the subscription's period end, where Stripe renews it (a subscription whose
        end the clock already passed renews late: its grants may have expired meanwhile)."""
        end = datetime.fromtimestamp(self.billing.subscriptions[sub_id].period[1], UTC)
        self.move_clock(max(self.now, end))

    @precondition(lambda self: bool(getattr(self, "subscribed", None)))
    @rule(data=st.data(), hours=st.sampled_from([1, 48, 100]))
    def a_period_ends_before_its_renewal_is_paid(self, data: st.DataObject, hours: int) -> None:
        """The clock past a subscriber's period end with no renewal paid yet: its grants hold for
        PERIOD_GRACE (72 h), then expire."""
        uid = data.draw(st.sampled_from(sorted(self.subscribed)))
        self.to_period_end(self.subscribed[uid])
        self.move_clock(self.now + timedelta(hours=hours))

    def period_granted(self, uid: str, events: list[dict[str, Any]], *, late: bool = False) -> None:
        """The model's side of one paid subscription invoice (subscription_create or _cycle): the
        period's grant (it repays debt first), then every earlier grant of the subscription ends (a
        spent one too: credits a refund brings back to it later are written off), up to the plan's
        rollover of what they held carried into a rollover grant. An invoice paid `late`, after a
        later period's, ends at once instead (what it repaid of the debt stays repaid)."""
        paid, [line] = self.paid_invoice(events)
        plan = PLAN_OF_PRICE[line["pricing"]["price_details"]["price"]]
        wallet, source = self.wallets[uid], self.source(paid)
        ours = [g for g in wallet.grants.values() if g.source == source and wallet.alive(g, self.now)]
        end = datetime.fromtimestamp(line["period"]["end"], UTC) + PERIOD_GRACE
        gid = f"period_{paid['id']}"
        grant = ModelGrant(gid, plan["credits"], "paid", 50, end, self.now, source=source)
        wallet.add(grant)
        self.invoice_paid(uid, gid, events, plan["credits"])
        if late:
            grant.ended = True
            return
        held = sum(g.remaining for g in ours)
        for g in ours:
            g.ended = True
        if min(held, plan["rollover"]):
            rid = f"rollover_{paid['id']}"
            wallet.add(ModelGrant(rid, min(held, plan["rollover"]), "paid", 50, end, self.now, source=source))

    def paid_invoice(self, events: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        [paid] = [e["data"]["object"] for e in events if e["type"] == "invoice.paid"]
        return paid, paid["lines"]["data"]

    def source(self, invoice: dict[str, Any]) -> str:
        return f"subscription:{invoice['parent']['subscription_details']['subscription']}"

    def invoice_paid(self, uid: str, gid: str, events: list[dict[str, Any]], credits: int) -> None:
        """Remember a paid invoice, for its refunds and disputes."""
        [link] = [e["data"]["object"] for e in events if e["type"] == "invoice_payment.paid"]
        pi, amount = link["payment"]["payment_intent"], link["amount_paid"]
        self.invoices.append(SubPayment(uid, gid, pi, f"ch_{pi}", credits, amount))

    @rule(uid=st.sampled_from(USERS), order=st.permutations(range(4)))
    def subscribe(self, uid: str, order: list[int]) -> None:
        """Checkout of the plan paid: Stripe's four events in any order."""
        if uid in self.subscribed:
            return
        meta = {"userId": uid, "planId": "pro"}
        session = {
            "id": se.new_id("cs_sub"),
            "object": "checkout.session",
            "mode": "subscription",
            "customer": f"cus_{uid}",
            "client_reference_id": uid,
            "metadata": meta,
            "subscription_data": {"metadata": meta},
            "livemode": False,
        }
        events = self.billing.subscribe(session, PLANS["pro"]["price"])
        self.deliver_in(events, order)
        self.subscribed[uid] = events[1]["data"]["object"]["id"]
        self.plan_of[uid] = "pro"
        self.period_granted(uid, events)

    @precondition(lambda self: bool(getattr(self, "subscribed", None)))
    @rule(data=st.data(), reverse=st.booleans())
    def renew(self, data: st.DataObject, reverse: bool) -> None:
        """A subscriber's next period's invoice paid (Stripe's order, or the reverse)."""
        self.renew_one(data.draw(st.sampled_from(sorted(self.subscribed))), reverse)

    def renew_one(self, uid: str, reverse: bool) -> None:
        self.to_period_end(self.subscribed[uid])
        events = self.billing.act(self.subscribed[uid], "renew")
        for event in reversed(events) if reverse else events:
            self.deliver(event)
        self.period_granted(uid, events)

    @precondition(lambda self: bool(getattr(self, "subscribed", None)))
    @rule(data=st.data())
    def two_renewals_arrive_out_of_order(self, data: st.DataObject) -> None:
        """Two periods renew, the clock at each one's end, and the later one's events are delivered
        first: the later period ends the earlier grants (rollover as usual), and the earlier
        invoice, paid after it, is granted and written off in one commit."""
        uid = data.draw(st.sampled_from(sorted(self.subscribed)))
        sub_id = self.subscribed[uid]
        self.to_period_end(sub_id)
        first = self.billing.act(sub_id, "renew")
        self.to_period_end(sub_id)
        second = self.billing.act(sub_id, "renew")
        for event in second:
            self.deliver(event)
        self.period_granted(uid, second)
        for event in first:
            self.deliver(event)
        self.period_granted(uid, first, late=True)

    @precondition(lambda self: bool(getattr(self, "subscribed", None)))
    @rule(data=st.data(), reverse=st.booleans())
    def charges_are_open_when_the_period_renews(self, data: st.DataObject, reverse: bool) -> None:
        """Two generations crash (charged, their refunds still to come; often the whole pro period),
        the period renews, then the settlement job refunds them: what goes back to a period grant
        that has ended is written off, a spent one's too."""
        uid = data.draw(st.sampled_from(sorted(self.subscribed)))
        for _ in range(2):
            self.generate(uid, "crashes", iterate=False)
        self.renew_one(uid, reverse)
        self.settlement_job()

    @precondition(lambda self: bool(getattr(self, "subscribed", None)))
    @rule(data=st.data(), reverse=st.booleans())
    def a_renewal_fails_then_its_payment_is_retried(self, data: st.DataObject, reverse: bool) -> None:
        """A renewal whose payment fails grants nothing (the subscription goes past_due); the retried
        payment's `invoice.paid` then grants that period as a renewal would."""
        uid = data.draw(st.sampled_from(sorted(self.subscribed)))
        sub_id = self.subscribed[uid]
        self.to_period_end(sub_id)
        for event in self.billing.act(sub_id, "fail_payment"):
            self.deliver(event)
        self.every_grant_debt_and_balance_equals_the_model()  # the store too: the failure granted nothing
        events = self.billing.act(sub_id, "retry_payment")
        for event in reversed(events) if reverse else events:
            self.deliver(event)
        self.period_granted(uid, events)

    @precondition(lambda self: bool(getattr(self, "subscribed", None)))
    @rule(data=st.data())
    def cancel_now(self, data: st.DataObject) -> None:
        """`customer.subscription.deleted`: the subscription's grants are voided, spent ones too."""
        uid = data.draw(st.sampled_from(sorted(self.subscribed)))
        sub_id = self.subscribed.pop(uid)
        del self.plan_of[uid]
        for event in self.billing.act(sub_id, "cancel_now"):
            self.deliver(event)
        wallet = self.wallets[uid]
        for g in wallet.grants.values():
            if g.source == f"subscription:{sub_id}" and wallet.alive(g, self.now):
                g.ended = True

    @precondition(lambda self: bool(getattr(self, "subscribed", None)))
    @rule(data=st.data(), order=st.permutations(range(5)))
    def change_plan(self, data: st.DataObject, order: list[int]) -> None:
        """From pro, an upgrade to max in the portal (`always_invoice`): the subscription's price
        changes now, and its `subscription_update` invoice's `invoice.paid` grants the difference in
        plan credits for the unused part of the period (rounded down), expiring with the period; the
        period's grants stay. Stripe's five events in any order. From max, a downgrade: one
        `customer.subscription.updated`, nothing granted; the next renewal grants pro's credits."""
        uid = data.draw(st.sampled_from(sorted(self.subscribed)))
        sub_id = self.subscribed[uid]
        if self.now.timestamp() >= self.billing.subscriptions[sub_id].period[1]:
            return  # the period is over: Stripe would have renewed it first
        if self.plan_of[uid] == "max":
            for event in self.billing.act(sub_id, "downgrade", PLANS["pro"]["price"]):
                self.deliver(event)
            self.plan_of[uid] = "pro"
            return
        events = self.billing.act(sub_id, "upgrade", PLANS["max"]["price"])
        self.deliver_in(events, order)
        self.plan_of[uid] = "max"
        paid, lines = self.paid_invoice(events)
        [new] = [li for li in lines if li["amount"] > 0]
        start, end = new["period"]["start"], new["period"]["end"]
        period_start, period_end = self.billing.subscriptions[sub_id].period  # Stripe's current period
        assert period_end == end
        left, length = end - start, period_end - period_start
        credits = (PLANS["max"]["credits"] - PLANS["pro"]["credits"]) * left // length
        gid = f"period_{paid['id']}"
        expires = datetime.fromtimestamp(end, UTC) + PERIOD_GRACE
        self.wallets[uid].add(
            ModelGrant(gid, credits, "paid", 50, expires, self.now, source=self.source(paid))
        )
        self.invoice_paid(uid, gid, events, credits)

    @rule(data=st.data(), share=st.sampled_from([0.5, 1.0]))
    def refund_an_invoice(self, data: st.DataObject, share: float) -> None:
        """A refund of a paid invoice's payment: that period's grant gives back its share (what the
        grant no longer holds becomes debt)."""
        if not self.invoices:
            return
        inv = data.draw(st.sampled_from(self.invoices))
        room = inv.amount - inv.refunded
        if room <= 0:
            return
        amount = max(1, int(room * share))
        inv.refunded += amount
        rid = f"re_{inv.pi}_{inv.refunded}"
        self.deliver(se.refund_event("refund.created", rid, inv.charge, inv.pi, amount, "pending"))
        self.settle_invoice(inv)

    def settle_invoice(self, inv: SubPayment) -> None:
        """What the invoice's period grant gives back or gets back now, by the purchase rules."""
        delta = inv.taken_back() - inv.applied
        if delta > 0:
            self.wallets[inv.uid].take(inv.grant_id, delta, self.now)
        elif delta < 0:
            self.wallets[inv.uid].reinstate(inv.grant_id, -delta, self.now)
        inv.applied += delta

    @rule(data=st.data(), step=st.sampled_from(["created", "won", "lost"]))
    def dispute_an_invoice(self, data: st.DataObject, step: str) -> None:
        """A dispute of a paid invoice's payment: open or lost takes the period's credits back, won
        gives them back (debt first)."""
        if not self.invoices:
            return
        inv = data.draw(st.sampled_from(self.invoices))
        dispute_id = f"dp_{inv.pi}"
        if step == "created":
            self.deliver(se.dispute_created(dispute_id, inv.charge, inv.pi, inv.amount))
            inv.dispute = inv.dispute or "open"
        else:
            self.deliver(se.dispute_closed(dispute_id, inv.charge, inv.pi, step, inv.amount))
            if inv.dispute in (None, "open"):
                inv.dispute = step
        self.settle_invoice(inv)

    # Operator grants and voids ------------------------------------------------------------------------

    @rule(
        uid=st.sampled_from(USERS),
        amount=st.sampled_from([10, 30, 60]),
        **GRANT_TERMS,
    )
    def operator_grant(
        self, uid: str, amount: int, category: str, priority: int, expires_in_hours: int | None
    ) -> None:
        from functions.lib import ledger

        self.grants_made += 1
        gid = f"op{self.grants_made}"
        days = expires_in_hours / 24 if expires_in_hours is not None else None
        ledger.grant(
            self.db, uid, gid, amount, "model", category=category, priority=priority, expires_in_days=days
        )
        expires = self.now + timedelta(hours=expires_in_hours) if expires_in_hours is not None else None
        self.wallets[uid].add(ModelGrant(f"grant_{gid}", amount, category, priority, expires, self.now))

    @rule(uid=st.sampled_from(USERS), data=st.data())
    def void(self, uid: str, data: st.DataObject) -> None:
        from functions.lib import ledger

        grants = sorted(self.wallets[uid].grants)
        if not grants:
            return
        gid = data.draw(st.sampled_from(grants))
        ledger.void(self.db, uid, gid, "model")
        self.wallets[uid].grants[gid].ended = True

    # Generations ----------------------------------------------------------------------------------

    def request(self, uid: str, iterate: bool) -> Any:
        from functions.lib import generations

        project = self.projects[uid][-1] if iterate and self.projects[uid] else None
        return generations.GenerationRequest(uid, "prompt", project)

    def expect_charge(self, uid: str, req: Any, attempt: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
        """Run `attempt`; the model says whether it may charge (402 exactly when the spendable balance
        is short) and what it draws. Returns the result and the model's draws."""
        from functions.lib.errors import InsufficientCredits

        cost = COST[req.kind]
        wallet = self.wallets[uid]
        affordable = wallet.spendable(self.now) >= cost
        try:
            result = attempt()
        except InsufficientCredits as short:
            assert not affordable and short.details["balance"] == wallet.spendable(self.now)
            return None, {}
        assert affordable
        return result, wallet.draw(cost, self.now)

    def drawn(self, generation_id: str) -> dict[str, int]:
        return dict(self.db.collection("generations").document(generation_id).get().get("draws"))

    @rule(
        uid=st.sampled_from(USERS),
        fate=st.sampled_from(["succeeds", "fails", "crashes"]),
        iterate=st.booleans(),
    )
    def generate(self, uid: str, fate: str, iterate: bool) -> None:
        from functions.lib import generations
        from functions.lib.errors import GenerationFailed
        from functions.lib.models import OfflineProvider

        req = self.request(uid, iterate)
        if fate == "crashes":  # charged, then the process dies before the model answers
            charged, draws = self.expect_charge(
                uid, req, lambda: generations.charge(self.db, self.settings, req)
            )
            if charged is not None:
                assert self.drawn(charged.generation_id) == draws
                self.crashed[charged.generation_id] = (uid, draws)
            return
        provider = OfflineProvider() if fate == "succeeds" else FailingProvider()

        def attempt() -> Any:
            try:
                return generations.generate(self.db, self.settings, provider, req, self.breaker)
            except GenerationFailed as failed:
                return failed

        done, draws = self.expect_charge(uid, req, attempt)
        if isinstance(done, GenerationFailed):
            for gid, credits in draws.items():
                self.wallets[uid].give_back(gid, credits, self.now)
        elif done is not None and req.kind == "initial":
            self.projects[uid].append(done.project_id)

    def refund_crashed(self) -> None:
        for uid, draws in self.crashed.values():
            for gid, credits in draws.items():
                self.wallets[uid].give_back(gid, credits, self.now)
        self.crashed.clear()

    @rule()
    def settlement_job(self) -> None:
        from functions.lib import settlement

        settlement.settle_stale_charges(self.db, self.settings, now=self.later)
        self.refund_crashed()
        self.assert_nothing_overdue(USERS)

    @rule()
    def sweep(self) -> None:
        from functions.lib.retention import sweep

        sweep(self.db, self.settings, now=self.later)
        self.refund_crashed()
        self.assert_nothing_overdue(USERS)

    # Concurrent steps -----------------------------------------------------------------------------

    def race(self, *steps: Callable[[], Any]) -> list[Any]:
        start = threading.Barrier(len(steps))

        def run(step: Callable[[], Any]) -> Any:
            start.wait(timeout=10)
            return step()

        with ThreadPoolExecutor(len(steps)) as pool:
            return [f.result() for f in [pool.submit(run, step) for step in steps]]

    @rule(n=st.integers(0, PAYMENTS - 1), kind=st.sampled_from(["completed", "async"]))
    def refund_races_its_purchase(self, n: int, kind: str) -> None:
        p = self.payments[n]
        made = self.new_refund(p, 0.5)
        if made is None:
            return
        purchase, refund = self.purchase_event(p, kind), self.refund_created(p, made[0])
        self.race(lambda: self.deliver(purchase), lambda: self.deliver(refund))
        p.credited = True
        self.sync(p)

    @rule(uid=st.sampled_from(USERS))
    def sweep_races_a_late_completion(self, uid: str) -> None:
        from functions.lib import generations, settlement
        from functions.lib.errors import GenerationFailed

        req = self.request(uid, iterate=False)
        charged, draws = self.expect_charge(uid, req, lambda: generations.charge(self.db, self.settings, req))
        if charged is None:
            return

        def complete() -> None:
            with contextlib.suppress(GenerationFailed):  # the settlement refunded it first
                generations.complete(self.db, charged, "late output")

        self.race(complete, lambda: settlement.settle_stale_charges(self.db, self.settings, now=self.later))
        status = self.db.collection("generations").document(charged.generation_id).get().get("status")
        assert status in ("succeeded", "refunded")
        if status == "refunded":
            self.crashed[charged.generation_id] = (uid, draws)
        self.refund_crashed()  # the pass also refunded every older crashed charge

    @rule(uid=st.sampled_from(USERS))
    def a_charge_races_an_expiry_write_off(self, uid: str) -> None:
        """The clock stops at the very second a grant expires; a charge and the settlement job that
        writes it off run together."""
        from functions.lib import generations, settlement
        from functions.lib.errors import InsufficientCredits

        wallet = self.wallets[uid]
        expiring = sorted(
            g.expires_at
            for g in wallet.grants.values()
            if wallet.alive(g, self.now) and g.remaining > 0 and g.expires_at is not None
        )
        if not expiring:
            return
        self.move_clock(expiring[0])
        req = self.request(uid, iterate=False)

        def charge() -> Any:
            try:
                return generations.charge(self.db, self.settings, req)
            except InsufficientCredits:
                return None

        charged, _ = self.race(charge, lambda: settlement.settle_stale_charges(self.db, self.settings))
        affordable = wallet.spendable(self.now) >= COST["initial"]
        assert (charged is not None) == affordable
        if charged is not None:
            draws = wallet.draw(COST["initial"], self.now)
            assert self.drawn(charged.generation_id) == draws
            self.crashed[charged.generation_id] = (uid, draws)
        self.assert_nothing_overdue([uid])

    @rule(n=st.integers(0, PAYMENTS - 1))
    def a_crashed_charges_refund_races_a_reversal_of_its_grant(self, n: int) -> None:
        """A crashed charge drew from a purchase's grant; its settlement and a refund of that purchase
        run together. Either order is a correct serialization, and the two can differ (what the grant
        holds when the reversal takes its share): the store must match one of them."""
        import copy

        from functions.lib import generations, settlement

        p = self.payments[n]
        wallet = self.wallets[p.uid]
        if not p.credited or wallet.spendable(self.now) < COST["initial"] or p.truly_refunded() >= AMOUNT:
            return
        self.settlement_job()  # older crashed charges first: only this one races
        req = self.request(p.uid, iterate=False)
        charged = generations.charge(self.db, self.settings, req)
        draws = wallet.draw(COST["initial"], self.now)
        assert self.drawn(charged.generation_id) == draws
        self.crashed[charged.generation_id] = (p.uid, draws)
        made = self.new_refund(p, 0.5)
        assert made is not None
        event = self.refund_created(p, made[0])
        self.race(
            lambda: settlement.settle_stale_charges(self.db, self.settings, now=self.later),
            lambda: self.deliver(event),
        )
        wallets, applied, crashed = copy.deepcopy(self.wallets), p.applied, dict(self.crashed)
        self.refund_crashed()
        self.sync(p)
        refund_first = self.wallets
        self.wallets, p.applied, self.crashed = wallets, applied, crashed
        self.sync(p)
        self.refund_crashed()
        self.wallets = refund_first if self.matches(refund_first) else self.wallets

    # After every step -----------------------------------------------------------------------------

    def stored(self, uid: str) -> dict[str, Any]:
        return self.db.collection("users").document(uid).get().to_dict() or {}

    def unexpired(self, data: dict[str, Any]) -> dict[str, int]:
        return {
            g["id"]: g["remaining"]
            for g in data.get("grants", [])
            if g["expiresAt"] is None or self.now < g["expiresAt"]
        }

    def matches(self, wallets: dict[str, ModelWallet]) -> bool:
        for uid in USERS:
            data = self.stored(uid)
            if (
                self.unexpired(data) != wallets[uid].live(self.now)
                or data.get("debt", 0) != wallets[uid].debt
            ):
                return False
        return True

    def assert_nothing_overdue(self, uids: Any) -> None:
        """Whoever wrote expiries off left no live grant past its expiry."""
        for uid in uids:
            grants = self.stored(uid).get("grants", [])
            assert all(g["expiresAt"] is None or self.now < g["expiresAt"] for g in grants), (uid, grants)

    @invariant()
    def every_grant_debt_and_balance_equals_the_model(self) -> None:
        if not hasattr(self, "db"):
            return
        for uid in USERS:
            data, wallet = self.stored(uid), self.wallets[uid]
            assert self.unexpired(data) == wallet.live(self.now), uid
            assert data.get("debt", 0) == wallet.debt, uid
            assert sum(self.unexpired(data).values()) + data.get("debt", 0) == wallet.spendable(self.now)
        assert_ledger_consistent(self.db)

    @precondition(lambda self: hasattr(self, "db"))
    @invariant()
    def once_every_refund_is_announced_the_model_is_stripes_truth(self) -> None:
        """The model's rule converges: told every refund by id and every failure, without disputes,
        a payment has given back exactly the refunded share of what Stripe really refunded."""
        for p in self.payments:
            told_all = p.told_refunds == {rid: rid in p.failed for rid, _ in p.issued}
            if told_all and not p.disputes:
                assert p.taken_back() == PACKS[p.pack] * p.truly_refunded() // AMOUNT

    @precondition(lambda self: hasattr(self, "db"))
    @invariant()
    def no_purchase_gives_back_more_than_it_gave(self) -> None:
        for p in self.payments:
            snap = self.db.collection("payments").document(p.pi).get()
            if snap.exists and p.credited:
                assert 0 <= snap.get("reversedCredits") <= PACKS[p.pack]


# 20 examples of up to 40 steps each in CI (docs/DEVELOPING.md has the times); PROPERTY_EXAMPLES=150
# scripts/test tests/test_properties.py runs a deeper search.
Credits.TestCase.settings = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES") or 20),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestCreditsAgainstTheModel = Credits.TestCase
