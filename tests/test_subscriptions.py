"""Subscriptions through `stripe_webhook` (functions-framework's real Flask stack, real signatures)
against the Firestore emulator, with Stripe's own object shapes in both payload versions (API
2025-03-31.basil and later, and before): create in either event order, renewal with rollover and
write-off, a $0 trial invoice, an upgrade invoiced at once, cancel now, a failed payment and its
recovery, refunds of a renewal (full, partial, after its credits were spent), spent period grants
ending with their period, duplicates and concurrent deliveries, events of a subscription this app
never sold."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devstack import stripe_events as se
from tests.helpers import BASE_ENV, assert_ledger_consistent, balance, entries, make_user, reset_caches

SECRET = BASE_ENV["STRIPE_WEBHOOK_SECRET"]
PLANS = {
    "pro": {"price": "price_pro", "credits": 1000, "rollover": 200, "trialCredits": 50},
    "max": {"price": "price_max", "credits": 3000},
    "lite": {"price": "price_lite", "credits": 100},
}
PRO_PRICE = 1900
DAY = se.DAY


@pytest.fixture(autouse=True)
def plans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANS", json.dumps(PLANS))
    reset_caches()


def deliver(app: Any, event: dict[str, Any]) -> Any:
    body, headers = se.delivery(event, SECRET)
    return app("stripe_webhook").post("/", data=body, headers=headers)


def outcome(app: Any, event: dict[str, Any]) -> str:
    res = deliver(app, event)
    assert res.status_code == 200, res.json
    return str(res.json["outcome"])


def paid_invoice(
    inv: str,
    sub: str,
    uid: str | None,
    *,
    start: int,
    plan: str = "pro",
    reason: str = "subscription_cycle",
    amount: int = PRO_PRICE,
    basil: bool = True,
    pi: str | None = None,
) -> dict[str, Any]:
    price = str(PLANS[plan]["price"])
    line = se.invoice_line(price, amount, start, start + 30 * DAY, basil=basil)
    obj = se.invoice(inv, sub, uid, plan, [line], billing_reason=reason, basil=basil, payment_intent=pi)
    return se.event("invoice.paid", obj)


def sub_event(
    type: str, sub: str, uid: str | None, *, start: int, created: int | None = None, **kw: Any
) -> dict[str, Any]:
    plan = kw.pop("plan", "pro")
    obj = se.subscription(sub, uid, plan, str(PLANS[plan]["price"]), period_start=start, **kw)
    return se.event(type, obj, created=created)


def grants(db: Any, uid: str) -> dict[str, int]:
    data = db.collection("users").document(uid).get().to_dict() or {}
    return {g["id"]: g["remaining"] for g in data.get("grants", [])}


def types(db: Any, uid: str) -> dict[str, int]:
    return {e["id"]: e["amount"] for e in entries(db, uid)}


# --- create ----------------------------------------------------------------------------------


@pytest.mark.parametrize("basil", [True, False])
@pytest.mark.parametrize("invoice_first", [True, False])
def test_a_new_subscription_grants_its_first_period_once_whatever_the_event_order(
    app: Any, db: Any, basil: bool, invoice_first: bool
) -> None:
    now = int(time.time())
    session = se.checkout_session("cs_test_sub", "ann", None, payment_status="paid")
    session |= {
        "mode": "subscription",
        "subscription": "sub_ann",
        "metadata": {"userId": "ann", "planId": "pro"},
    }
    events = [
        se.event("checkout.session.completed", session),
        sub_event("customer.subscription.created", "sub_ann", "ann", start=now, basil=basil),
        paid_invoice("in_ann1", "sub_ann", "ann", start=now, reason="subscription_create", basil=basil),
    ]
    if invoice_first:
        events = events[::-1]

    results = [outcome(app, e) for e in events]
    again = outcome(app, events[-1] if not invoice_first else events[0])

    assert results.count("granted") == 1 and again == "duplicate"
    [period] = entries(db, "ann", "period")
    assert period["id"] == "period_in_ann1" and period["amount"] == 1000
    assert period["grant"]["category"] == "paid" and period["grant"]["source"] == "subscription:sub_ann"
    # Expires 72 h (PERIOD_GRACE_H) after the line's period end.
    assert period["grant"]["expiresAt"].timestamp() == now + 30 * DAY + 72 * 3600
    assert balance(db, "ann") == 1000
    sub = db.collection("subscriptions").document("sub_ann").get().to_dict()
    assert sub["userId"] == "ann" and sub["status"] == "active" and sub["planId"] == "pro"
    assert sub["currentPeriodEnd"].timestamp() == now + 30 * DAY
    user = db.collection("users").document("ann").get().to_dict()
    assert user["stripeCustomerId"] == "cus_test_1"
    assert_ledger_consistent(db)


def test_credits_answers_the_live_subscription(app: Any, db: Any) -> None:
    from tests.helpers import bearer

    now = int(time.time())
    assert outcome(app, sub_event("customer.subscription.created", "sub_cr", "cr", start=now)) == "recorded"

    res = app("credits").get("/", headers=bearer("cr"))

    assert res.status_code == 200, res.json
    assert res.json["subscription"]["id"] == "sub_cr" and res.json["subscription"]["planId"] == "pro"
    assert (
        res.json["subscription"]["status"] == "active" and not res.json["subscription"]["cancelAtPeriodEnd"]
    )


def test_a_trial_invoice_of_zero_grants_the_trial_credits(app: Any, db: Any) -> None:
    now = int(time.time())

    result = outcome(
        app, paid_invoice("in_tr", "sub_tr", "tr", start=now, reason="subscription_create", amount=0)
    )

    assert result == "granted" and balance(db, "tr") == 50
    assert entries(db, "tr", "period")[0]["metadata"]["trial"] is True
    assert_ledger_consistent(db)


# --- renewal ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("plan", "carried"), [("pro", 200), ("max", 0)])
def test_a_renewal_ends_the_previous_period_carrying_up_to_the_rollover(
    app: Any, db: Any, plan: str, carried: int
) -> None:
    from functions.lib import ledger

    now = int(time.time())
    outcome(app, paid_invoice("in_1", "sub_r", "ren", start=now, plan=plan, reason="subscription_create"))
    ledger.charge(db, "ren", "spent", 300)
    left = int(PLANS[plan]["credits"]) - 300  # type: ignore[call-overload]

    assert outcome(app, paid_invoice("in_2", "sub_r", "ren", start=now + 30 * DAY, plan=plan)) == "granted"

    moved = types(db, "ren")
    assert moved["expiry_period_in_1"] == -left
    assert moved.get("rollover_in_2", 0) == carried
    assert grants(db, "ren") == {
        "period_in_2": PLANS[plan]["credits"],
        **({"rollover_in_2": carried} if carried else {}),
    }
    # A late redelivery of the first invoice changes nothing.
    assert (
        outcome(app, paid_invoice("in_1", "sub_r", "ren", start=now, plan=plan, reason="subscription_create"))
        == "duplicate"
    )
    assert_ledger_consistent(db)


def test_a_period_paid_after_a_later_one_is_written_off_at_once(app: Any, db: Any) -> None:
    now = int(time.time())
    outcome(app, paid_invoice("in_b", "sub_o", "ord", start=now + 30 * DAY))

    assert (
        outcome(app, paid_invoice("in_a", "sub_o", "ord", start=now, reason="subscription_create"))
        == "granted"
    )

    assert grants(db, "ord") == {"period_in_b": 1000}
    assert types(db, "ord")["void_period_in_a"] == -1000
    assert_ledger_consistent(db)


def spend_a_lite_period(app: Any, db: Any, settings: Any, uid: str, sub: str, now: int) -> str:
    """A `lite` subscriber (100 credits a period) who spends the whole period on two generations;
    the second one's id, still `charged` (its refund comes later)."""
    from functions.lib import generations

    make_user(db, uid)
    outcome(app, paid_invoice(f"in_{uid}1", sub, uid, start=now, plan="lite", reason="subscription_create"))
    generations.charge(db, settings, generations.GenerationRequest(uid, "first"))
    running = generations.charge(db, settings, generations.GenerationRequest(uid, "second"))
    assert isinstance(running, generations.Charge) and grants(db, uid) == {} and balance(db, uid) == 0
    return running.generation_id


def test_a_period_paid_after_a_later_one_that_was_already_spent_is_written_off_at_once(
    app: Any, db: Any, settings: Any
) -> None:
    """Out of order with the later period already spent: that grant is out of the wallet, but its
    place in `periodGrants` still tells the earlier invoice that it comes too late."""
    from functions.lib import generations

    now = int(time.time())
    make_user(db, "late")
    outcome(app, paid_invoice("in_lb", "sub_l", "late", start=now + 30 * DAY, plan="lite"))
    for prompt in ("first", "second"):
        generations.charge(db, settings, generations.GenerationRequest("late", prompt))
    assert grants(db, "late") == {}

    late = paid_invoice("in_la", "sub_l", "late", start=now, plan="lite", reason="subscription_create")
    assert outcome(app, late) == "granted"

    assert types(db, "late")["void_period_in_la"] == -100 and balance(db, "late") == 0
    assert "expiry_period_in_lb" not in types(db, "late")
    assert_ledger_consistent(db)


@pytest.mark.parametrize("end", ["renewal", "deletion"])
def test_a_spent_period_grant_ends_with_its_period_so_a_later_refund_into_it_is_written_off(
    app: Any, db: Any, settings: Any, end: str
) -> None:
    """The period grant was spent, so it is not in the wallet when the period ends; it still ends
    (an entry of 0), and credits a generation refund brings back to it later are written off, as
    for a grant that still held credits."""
    from functions.lib import generations

    now = int(time.time())
    gid = spend_a_lite_period(app, db, settings, "spe", "sub_sp", now)
    if end == "renewal":
        renewal = paid_invoice("in_spe2", "sub_sp", "spe", start=now + 30 * DAY, plan="lite")
        assert outcome(app, renewal) == "granted"
        ended, live = "expiry_period_in_spe1", {"period_in_spe2": 100}
    else:
        deleted = sub_event(
            "customer.subscription.deleted", "sub_sp", "spe", start=now, plan="lite", status="canceled"
        )
        assert outcome(app, deleted) == "ended"
        ended, live = "void_period_in_spe1", {}
    assert types(db, "spe")[ended] == 0

    generations.refund(db, gid, "spe", "model_error")

    assert grants(db, "spe") == live
    assert types(db, "spe")[f"expiry_period_in_spe1_refund_{gid}"] == -50
    assert balance(db, "spe") == sum(live.values())
    assert_ledger_consistent(db)


def test_a_spent_grant_of_the_current_period_stays_live_for_its_refunds(
    app: Any, db: Any, settings: Any
) -> None:
    """Until its period ends, a refund gives a spent period grant its credits back."""
    from functions.lib import generations

    gid = spend_a_lite_period(app, db, settings, "cur", "sub_cur", int(time.time()))

    generations.refund(db, gid, "cur", "model_error")

    assert grants(db, "cur") == {"period_in_cur1": 50}
    sub = db.collection("subscriptions").document("sub_cur").get().to_dict()
    assert sub["periodGrants"] == ["period_in_cur1"]
    assert_ledger_consistent(db)


def test_an_upgrade_paid_before_its_periods_invoice_stays_listed_and_ends_with_the_period(
    app: Any, db: Any, settings: Any
) -> None:
    """Stripe moves the subscription to its next period about an hour before that period's invoice
    is paid; an upgrade in that hour is invoiced and paid at once. Its grant ends with the same
    period, so the period's invoice keeps it in `periodGrants`: spent and refunded after the
    subscription ended, its credits are written off."""
    from functions.lib import generations

    now = int(time.time())
    p2, p3 = now + 30 * DAY, now + 60 * DAY
    make_user(db, "upc")
    outcome(
        app, paid_invoice("in_upc1", "sub_upc", "upc", start=now, plan="lite", reason="subscription_create")
    )
    moved = sub_event(
        "customer.subscription.updated", "sub_upc", "upc", start=p2, plan="lite", created=now + 1
    )
    outcome(app, moved)
    change = p3 - 40 * 3600  # (1000 - 100) credits x 40 h of 30 d = 50 credits
    lines = [
        se.invoice_line("price_lite", -10, change, p3, proration=True),
        se.invoice_line("price_pro", 100, change, p3, proration=True),
    ]
    up = se.invoice("in_upc_up", "sub_upc", "upc", "lite", lines, billing_reason="subscription_update")
    assert outcome(app, se.event("invoice.paid", up)) == "granted"
    assert outcome(app, paid_invoice("in_upc2", "sub_upc", "upc", start=p2, plan="lite")) == "granted"

    listed = db.collection("subscriptions").document("sub_upc").get().to_dict()["periodGrants"]
    assert listed == ["period_in_upc2", "period_in_upc_up"]
    running = generations.charge(db, settings, generations.GenerationRequest("upc", "spends the upgrade"))
    assert isinstance(running, generations.Charge) and grants(db, "upc") == {"period_in_upc2": 100}
    deleted = sub_event(
        "customer.subscription.deleted",
        "sub_upc",
        "upc",
        start=p2,
        plan="lite",
        status="canceled",
        created=now + 2,
    )
    assert outcome(app, deleted) == "ended"
    generations.refund(db, running.generation_id, "upc", "model_error")

    assert grants(db, "upc") == {} and balance(db, "upc") == 0
    assert types(db, "upc")["void_period_in_upc_up"] == 0
    assert_ledger_consistent(db)


# --- upgrade ---------------------------------------------------------------------------------


@pytest.mark.parametrize("basil", [True, False])
def test_an_upgrade_invoice_grants_the_prorated_difference_once(app: Any, db: Any, basil: bool) -> None:
    now = int(time.time())
    start, end, change = now - 15 * DAY, now + 15 * DAY, now
    outcome(app, sub_event("customer.subscription.created", "sub_u", "up", start=start, basil=basil))
    outcome(app, paid_invoice("in_u1", "sub_u", "up", start=start, reason="subscription_create", basil=basil))
    lines = [
        se.invoice_line("price_pro", -950, change, end, proration=True, basil=basil),
        se.invoice_line("price_max", 2450, change, end, proration=True, basil=basil),
    ]
    upgrade = se.event(
        "invoice.paid",
        se.invoice("in_u2", "sub_u", "up", "pro", lines, billing_reason="subscription_update", basil=basil),
    )

    assert [outcome(app, upgrade), outcome(app, upgrade)] == ["granted", "duplicate"]

    # (3000 - 1000) credits for half of the period; it expires with the period's grant.
    assert grants(db, "up") == {"period_in_u1": 1000, "period_in_u2": 1000}
    [first, second] = sorted(entries(db, "up", "period"), key=lambda e: e["id"])
    assert first["grant"]["expiresAt"] == second["grant"]["expiresAt"]
    # `customer.subscription.updated` for the new price grants nothing.
    assert (
        outcome(
            app,
            sub_event("customer.subscription.updated", "sub_u", "up", start=start, plan="max", basil=basil),
        )
        == "recorded"
    )
    assert balance(db, "up") == 2000
    assert db.collection("subscriptions").document("sub_u").get().to_dict()["planId"] == "max"
    assert_ledger_consistent(db)


def test_a_downgrade_waits_for_the_next_cycle(app: Any, db: Any) -> None:
    now = int(time.time())
    outcome(app, paid_invoice("in_d1", "sub_d", "down", start=now, reason="subscription_create"))
    assert (
        outcome(app, sub_event("customer.subscription.updated", "sub_d", "down", start=now, plan="lite"))
        == "recorded"
    )
    assert balance(db, "down") == 1000

    outcome(app, paid_invoice("in_d2", "sub_d", "down", start=now + 30 * DAY, plan="lite"))

    # The next cycle bills the lower price: its allowance, under its rules (lite carries nothing over).
    assert grants(db, "down") == {"period_in_d2": 100}
    assert_ledger_consistent(db)


# --- cancel, failure ---------------------------------------------------------------------------


def test_cancel_at_period_end_is_recorded_and_reversible_and_cancel_now_writes_the_grants_off(
    app: Any, db: Any
) -> None:
    now = int(time.time())
    outcome(app, sub_event("customer.subscription.created", "sub_c", "can", start=now, created=now))
    outcome(app, paid_invoice("in_c1", "sub_c", "can", start=now, reason="subscription_create"))
    outcome(
        app,
        sub_event(
            "customer.subscription.updated",
            "sub_c",
            "can",
            start=now,
            created=now + 1,
            cancel_at_period_end=True,
        ),
    )
    assert db.collection("subscriptions").document("sub_c").get().to_dict()["cancelAtPeriodEnd"] is True
    outcome(app, sub_event("customer.subscription.updated", "sub_c", "can", start=now, created=now + 2))
    assert db.collection("subscriptions").document("sub_c").get().to_dict()["cancelAtPeriodEnd"] is False
    assert balance(db, "can") == 1000

    deleted = sub_event(
        "customer.subscription.deleted", "sub_c", "can", start=now, created=now + 3, status="canceled"
    )
    assert [outcome(app, deleted), outcome(app, deleted)] == ["ended", "duplicate"]

    assert types(db, "can")["void_period_in_c1"] == -1000 and balance(db, "can") == 0
    sub = db.collection("subscriptions").document("sub_c").get().to_dict()
    assert sub["status"] == "canceled"
    # An older `updated` delivered late does not revive it; a late paid invoice is written off at once.
    assert (
        outcome(app, sub_event("customer.subscription.updated", "sub_c", "can", start=now, created=now + 1))
        == "duplicate"
    )
    assert outcome(app, paid_invoice("in_c2", "sub_c", "can", start=now + 30 * DAY)) == "granted"
    assert balance(db, "can") == 0 and types(db, "can")["void_period_in_c2"] == -1000
    assert_ledger_consistent(db)


def test_a_failed_payment_grants_nothing_and_its_recovery_grants_once(app: Any, db: Any) -> None:
    now = int(time.time())
    outcome(app, paid_invoice("in_f1", "sub_f", "fay", start=now, reason="subscription_create"))
    line = se.invoice_line("price_pro", PRO_PRICE, now + 30 * DAY, now + 60 * DAY)
    failed = se.invoice("in_f2", "sub_f", "fay", "pro", [line], status="open")

    assert outcome(app, se.event("invoice.payment_failed", failed, created=now + 30 * DAY)) == "recorded"
    outcome(
        app,
        sub_event(
            "customer.subscription.updated",
            "sub_f",
            "fay",
            start=now + 30 * DAY,
            status="past_due",
            created=now + 30 * DAY,
        ),
    )
    assert balance(db, "fay") == 1000
    sub = db.collection("subscriptions").document("sub_f").get().to_dict()
    assert sub["latestInvoiceStatus"] == "payment_failed" and sub["status"] == "past_due"

    recovered = se.event(
        "invoice.paid", {**failed, "status": "paid", "amount_paid": PRO_PRICE}, created=now + 31 * DAY
    )
    assert [outcome(app, recovered), outcome(app, recovered)] == ["granted", "duplicate"]
    assert grants(db, "fay") == {"period_in_f2": 1000, "rollover_in_f2": 200}
    assert db.collection("subscriptions").document("sub_f").get().to_dict()["latestInvoiceStatus"] == "paid"
    assert_ledger_consistent(db)


# --- refunds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("basil", [True, False])
@pytest.mark.parametrize(("refunded", "taken"), [(PRO_PRICE, 1000), (950, 500)])
def test_a_refund_of_a_renewal_parked_until_its_payment_is_linked_reverses_that_periods_grant(
    app: Any, db: Any, basil: bool, refunded: int, taken: int
) -> None:
    now = int(time.time())
    pi = se.new_id("pi")
    # The refund arrives first: parked until the payment is linked to its invoice.
    refund = se.refund_event("refund.created", "re_1", "ch_1", pi, refunded)
    assert outcome(app, refund) == "parked"
    outcome(app, paid_invoice("in_p", "sub_p", "pat", start=now, basil=basil, pi=None if basil else pi))
    if basil:
        link = se.event("invoice_payment.paid", se.invoice_payment("in_p", pi, PRO_PRICE))
        assert [outcome(app, link), outcome(app, link)] == ["linked", "duplicate"]

    assert types(db, "pat")["reversal_re_1"] == -taken
    assert balance(db, "pat") == 1000 - taken
    assert outcome(app, refund) == "duplicate"
    assert_ledger_consistent(db)


@pytest.mark.parametrize("outcome_status", ["won", "lost"])
def test_a_dispute_of_a_renewal_takes_the_period_back_and_a_won_one_gives_it_back(
    app: Any, db: Any, outcome_status: str
) -> None:
    now = int(time.time())
    pi = se.new_id("pi")
    outcome(app, paid_invoice("in_dp", "sub_dp", "dot", start=now, basil=False, pi=pi))

    assert outcome(app, se.dispute_created("dp_1", "ch_1", pi, PRO_PRICE)) == "reversed"
    assert balance(db, "dot") == 0
    closed = se.dispute_closed("dp_1", "ch_1", pi, outcome_status, PRO_PRICE)
    assert outcome(app, closed) == ("reinstated" if outcome_status == "won" else "unchanged")

    assert balance(db, "dot") == (1000 if outcome_status == "won" else 0)
    assert_ledger_consistent(db)


def test_a_refund_after_the_credits_were_spent_leaves_debt(app: Any, db: Any) -> None:
    from functions.lib import ledger

    now = int(time.time())
    pi = se.new_id("pi")
    outcome(app, paid_invoice("in_s", "sub_s", "sue", start=now, basil=False, pi=pi))
    ledger.charge(db, "sue", "spent", 800)

    assert outcome(app, se.refund_event("refund.created", "re_s", "ch_s", pi, PRO_PRICE)) == "reversed"

    data = db.collection("users").document("sue").get().to_dict()
    assert data["credits"] == -800 and data["debt"] == -800 and data["grants"] == []
    assert_ledger_consistent(db)


def test_concurrent_deliveries_of_a_paid_invoice_and_its_payment_grant_once_and_link_once(
    app: Any, db: Any
) -> None:
    now = int(time.time())
    pi = se.new_id("pi")
    events = [
        paid_invoice("in_cc", "sub_cc", "cc", start=now, reason="subscription_create"),
        se.event("invoice_payment.paid", se.invoice_payment("in_cc", pi, PRO_PRICE)),
    ] * 3
    deliveries = [se.delivery(e, SECRET) for e in events]
    flask_app = app("stripe_webhook").application

    with ThreadPoolExecutor(3) as pool:
        results = list(
            pool.map(lambda d: flask_app.test_client().post("/", data=d[0], headers=d[1]), deliveries)
        )

    assert [r.status_code for r in results] == [200] * 6
    assert [r.json["outcome"] for r in results].count("granted") == 1
    assert balance(db, "cc") == 1000
    record = db.collection("payments").document(pi).get().to_dict()
    assert (
        record["purchaseId"] == "period_in_cc" and record["credits"] == 1000 and record["amount"] == PRO_PRICE
    )
    assert outcome(app, se.refund_event("refund.created", "re_cc", "ch_cc", pi, PRO_PRICE)) == "reversed"
    assert balance(db, "cc") == 0
    assert_ledger_consistent(db)


# --- events that are not ours, bad input ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["subscription", "invoice"])
def test_an_event_of_a_subscription_we_never_sold_is_stored_without_personal_data(
    app: Any, db: Any, kind: str
) -> None:
    now = int(time.time())
    event = (
        sub_event("customer.subscription.created", "sub_x", None, start=now)
        if kind == "subscription"
        else paid_invoice("in_x", "sub_x", None, start=now)
    )

    res = deliver(app, event)

    assert res.status_code == 200 and res.json["problem"] == "not_our_subscription"
    stored = db.collection("stripe_event_problems").document(event["id"]).get().to_dict()
    assert (
        "buyer@example.com" not in json.dumps(stored, default=str) and "Test Buyer" not in stored["payload"]
    )
    assert list(db.collection("credit_transactions").stream()) == []


def test_an_invoice_with_an_unknown_price_credits_nothing(app: Any, db: Any) -> None:
    now = int(time.time())
    line = se.invoice_line("price_gold", 9900, now, now + 30 * DAY)
    event = se.event("invoice.paid", se.invoice("in_g", "sub_g", "gil", "gold", [line]))

    res = deliver(app, event)

    assert res.status_code == 200 and res.json["problem"] == "unknown_plan"
    assert balance(db, "gil") == 0


def test_unhandled_subscription_event_types_answer_2xx_at_once(app: Any, db: Any) -> None:
    now = int(time.time())
    draft = se.invoice(
        "in_new",
        "sub_n",
        "nia",
        "pro",
        [se.invoice_line("price_pro", PRO_PRICE, now, now + DAY)],
        status="draft",
    )

    assert outcome(app, se.event("invoice.created", draft)) == "ignored"


def test_a_session_charging_another_amount_than_the_catalog_credits_nothing(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CREDIT_PACKS", '{"starter": {"credits": 100, "price": "price_s", "amount": 500, "currency": "usd"}}'
    )
    reset_caches()
    wrong = se.checkout_completed("cs_test_w", "wes", "starter", "pi_w")  # charged 1000, the catalog says 500
    right = se.event(
        "checkout.session.completed",
        {**se.checkout_session("cs_test_r", "wes", "starter", payment_intent="pi_r"), "amount_total": 500},
    )

    assert deliver(app, wrong).json["problem"] == "price_mismatch"
    assert outcome(app, right) == "credited" and balance(db, "wes") == 100
