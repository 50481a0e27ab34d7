"""The Stripe double's Billing (local only): the subscription-mode checkout page, the test-clock
endpoint (`POST /_clock/subscriptions/<id>/<action>`) and the portal page. Every event it sends is
delivered, signed, through the real `stripe_webhook` (functions-framework's Flask stack) against the
Firestore emulator, so each lifecycle step is checked by what the backend credits for it: the first
period, a renewal with rollover and write-off, a failed payment and its recovery, an upgrade invoiced
at once, a downgrade at the next cycle, cancel at period end (and resumed), cancel now, in Stripe's
order, reversed, or with an event moved first, and every event delivered twice."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from devstack.stripe_double import StripeDouble
from tests.helpers import BASE_ENV, assert_ledger_consistent, balance, entries, reset_caches

SECRET = BASE_ENV["STRIPE_WEBHOOK_SECRET"]
PRICES = {"price_pro": 1900, "price_max": 4900, "price_lite": 900}
PLANS = {
    "pro": {"price": "price_pro", "credits": 1000, "rollover": 200, "amount": 1900, "currency": "usd"},
    "max": {"price": "price_max", "credits": 3000, "amount": 4900, "currency": "usd"},
    "lite": {"price": "price_lite", "credits": 100, "amount": 900, "currency": "usd"},
}
SUBSCRIBED = [
    ("checkout.session.completed", "ignored"),
    ("customer.subscription.created", "recorded"),
    ("invoice.paid", "granted"),
    ("invoice_payment.paid", "linked"),
]
RENEWED = [
    ("customer.subscription.updated", "recorded"),
    ("invoice.created", "ignored"),
    ("invoice.finalized", "ignored"),
    ("invoice.paid", "granted"),
    ("invoice_payment.paid", "linked"),
]


@pytest.fixture
def stripe(app: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[StripeDouble]:
    """A hosted Stripe double whose deliveries go to the real stripe_webhook (a test client)."""
    monkeypatch.setenv("PLANS", json.dumps(PLANS))
    reset_caches()
    webhook = app("stripe_webhook")

    def deliver(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        res = webhook.post("/", data=body, headers=headers)
        return res.status_code, res.data

    double = StripeDouble(
        prices=dict(PRICES),
        hosted=True,
        webhook_secret=SECRET,
        plan_names={"price_pro": "pro", "price_max": "max", "price_lite": "lite"},
        deliver=deliver,
    )
    double.start()
    yield double
    double.stop()


def send(url: str, method: str, form: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """One request, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    body = urlencode(form).encode() if form is not None else None
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.request(method, path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    res = conn.getresponse()
    answer = res.status, dict(res.getheaders()), res.read().decode()
    conn.close()
    return answer


def subscribe(stripe: StripeDouble, uid: str, plan: str = "pro", order: str = "") -> tuple[str, str]:
    """A subscription-mode session as `checkout` creates it, paid on the double's page; (sub, customer)."""
    meta = {"userId": uid, "planId": plan}
    form = {
        "mode": "subscription",
        "line_items[0][price]": str(PLANS[plan]["price"]),
        "line_items[0][quantity]": "1",
        "client_reference_id": uid,
        **{f"metadata[{k}]": v for k, v in meta.items()},
        **{f"subscription_data[metadata][{k}]": v for k, v in meta.items()},
        "success_url": "http://127.0.0.1:5999/?checkout=success",
        "cancel_url": "http://127.0.0.1:5999/?checkout=cancelled",
    }
    status, _, body = send(stripe.url + "/v1/checkout/sessions", "POST", form)
    assert status == 200
    session = json.loads(body)
    page_status, _, page = send(session["url"], "GET")
    assert page_status == 200 and 'id="pay"' in page and "/ month" in page
    paid, headers, _ = send(session["url"] + (f"?order={order}" if order else ""), "POST")
    assert paid == 303 and headers["Location"] == "http://127.0.0.1:5999/?checkout=success"
    [sub] = stripe.billing.subscriptions.values()
    return str(sub.obj["id"]), str(sub.obj["customer"])


def clock(stripe: StripeDouble, sub: str, action: str, **query: str) -> tuple[int, dict[str, Any]]:
    url = f"{stripe.url}/_clock/subscriptions/{sub}/{action}" + (f"?{urlencode(query)}" if query else "")
    status, _, body = send(url, "POST")
    return status, json.loads(body)


def outcomes(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d["type"], d["answer"]["outcome"]) for d in answer["deliveries"]]


def grants(db: Any, uid: str) -> dict[str, int]:
    data = db.collection("users").document(uid).get().to_dict() or {}
    return {g["id"]: g["remaining"] for g in data.get("grants", [])}


def stored(db: Any, sub: str) -> dict[str, Any]:
    return dict(db.collection("subscriptions").document(sub).get().to_dict() or {})


@pytest.mark.parametrize("order", ["", "reversed", "invoice.paid,invoice_payment.paid"])
def test_paying_a_subscription_session_delivers_stripes_four_events_and_grants_the_first_period(
    stripe: StripeDouble, db: Any, order: str
) -> None:
    sub, customer = subscribe(stripe, "sue", order=order)

    got = [(d["type"], d["answer"]["outcome"]) for d in stripe.deliveries]
    if not order:
        assert got == SUBSCRIBED
    assert sorted(got) == sorted(SUBSCRIBED) and all(d["status"] == 200 for d in stripe.deliveries)
    [period] = entries(db, "sue", "period")
    assert period["amount"] == 1000 and period["grant"]["source"] == f"subscription:{sub}"
    assert grants(db, "sue") == {period["id"]: 1000} and balance(db, "sue") == 1000
    doc = stored(db, sub)
    assert (doc["status"], doc["planId"], doc["customerId"]) == ("active", "pro", customer)
    # The payment is linked to the invoice: a refund of it would find the period's grant.
    invoice = db.collection("invoices").document(period["id"].removeprefix("period_")).get().to_dict()
    assert invoice["paymentIntentId"].startswith("pi_") and invoice["grantId"] == period["id"]
    assert_ledger_consistent(db)


@pytest.mark.parametrize(("order", "twice"), [("", False), ("reversed", True)])
def test_renew_ends_the_period_carrying_the_rollover_and_writing_off_the_rest(
    stripe: StripeDouble, db: Any, order: str, twice: bool
) -> None:
    from functions.lib import ledger

    sub, _ = subscribe(stripe, "ren")
    [first] = entries(db, "ren", "period")
    ledger.charge(db, "ren", "spent", 300)
    end = stripe.billing.subscriptions[sub].period[0]

    status, answer = clock(
        stripe, sub, "renew", **({"order": order} if order else {}), **({"twice": "1"} if twice else {})
    )

    assert status == 200
    if not twice:
        assert outcomes(answer) == RENEWED
    else:
        assert [o for _, o in outcomes(answer)].count("granted") == 1
        assert sorted(set(outcomes(answer)) - {(t, "duplicate") for t, _ in RENEWED}) == sorted(RENEWED)
    periods = {e["id"]: e for e in entries(db, "ren", "period")}
    [second] = [e for e in periods.values() if e["id"] != first["id"]]
    invoice = second["id"].removeprefix("period_")
    assert grants(db, "ren") == {second["id"]: 1000, f"rollover_{invoice}": 200}
    moved = {e["id"]: e["amount"] for e in entries(db, "ren")}
    [written_off] = [v for k, v in moved.items() if k.startswith("expiry_")]
    assert written_off == -700 and moved[f"rollover_{invoice}"] == 200
    assert balance(db, "ren") == 1200
    # The new period starts where the first ended, on the subscription's clock.
    assert datetime.fromisoformat(second["metadata"]["periodStart"]).timestamp() > end
    assert stored(db, sub)["currentPeriodStart"].timestamp() == stripe.billing.subscriptions[sub].period[0]
    assert_ledger_consistent(db)


def test_a_failed_renewal_grants_nothing_until_its_payment_is_retried(stripe: StripeDouble, db: Any) -> None:
    sub, _ = subscribe(stripe, "fay")

    status, failed = clock(stripe, sub, "fail_payment")

    assert status == 200 and outcomes(failed) == [
        ("customer.subscription.updated", "recorded"),
        ("invoice.created", "ignored"),
        ("invoice.finalized", "ignored"),
        ("invoice.payment_failed", "recorded"),
        ("customer.subscription.updated", "recorded"),
    ]
    assert balance(db, "fay") == 1000
    doc = stored(db, sub)
    assert (doc["status"], doc["latestInvoiceStatus"]) == ("past_due", "payment_failed")

    status, retried = clock(stripe, sub, "retry_payment")

    assert status == 200 and [o for _, o in outcomes(retried)] == ["granted", "linked", "recorded"]
    assert sorted(grants(db, "fay").values()) == [200, 1000]
    doc = stored(db, sub)
    assert (doc["status"], doc["latestInvoiceStatus"]) == ("active", "paid")
    assert clock(stripe, sub, "retry_payment")[0] == 400, "nothing is left to pay"
    assert_ledger_consistent(db)


@pytest.mark.parametrize("order", ["", "invoice.paid"])
def test_an_upgrade_is_invoiced_at_once_and_grants_the_prorated_difference(
    stripe: StripeDouble, db: Any, order: str
) -> None:
    sub, _ = subscribe(stripe, "upa")
    stripe.billing.subscriptions[sub].offset = 10 * 86400  # ten days into the period
    start, end = stripe.billing.subscriptions[sub].period

    status, answer = clock(stripe, sub, "upgrade", price="price_max", **({"order": order} if order else {}))

    assert status == 200 and sorted(outcomes(answer)) == sorted(
        [
            ("customer.subscription.updated", "recorded"),
            ("invoice.created", "ignored"),
            ("invoice.finalized", "ignored"),
            ("invoice.paid", "granted"),
            ("invoice_payment.paid", "linked"),
        ]
    )
    [upgrade] = [
        e for e in entries(db, "upa", "period") if e["metadata"]["billingReason"] == "subscription_update"
    ]
    change = datetime.fromisoformat(upgrade["metadata"]["periodStart"]).timestamp()
    assert start + 10 * 86400 <= change <= start + 10 * 86400 + 60
    assert (
        upgrade["amount"] == int(2000 * (end - change) // (end - start)) and 1300 <= upgrade["amount"] < 1400
    )
    assert stored(db, sub)["planId"] == "max"
    assert clock(stripe, sub, "upgrade", price="price_lite")[0] == 400, "a cheaper price is no upgrade"
    assert_ledger_consistent(db)


def test_a_downgrade_grants_nothing_now_and_the_next_renewal_bills_the_new_plan(
    stripe: StripeDouble, db: Any
) -> None:
    sub, _ = subscribe(stripe, "dow")

    status, answer = clock(stripe, sub, "downgrade", price="price_lite")
    assert status == 200 and outcomes(answer) == [("customer.subscription.updated", "recorded")]
    assert balance(db, "dow") == 1000 and stored(db, sub)["planId"] == "lite"

    assert clock(stripe, sub, "renew")[0] == 200
    [renewal] = [
        e for e in entries(db, "dow", "period") if e["metadata"]["billingReason"] == "subscription_cycle"
    ]
    assert renewal["amount"] == 100 and renewal["metadata"]["planId"] == "lite"
    assert_ledger_consistent(db)


def test_cancel_at_period_end_can_be_resumed_and_then_ends_the_subscription_at_renewal(
    stripe: StripeDouble, db: Any
) -> None:
    sub, _ = subscribe(stripe, "cap")

    assert outcomes(clock(stripe, sub, "cancel_at_period_end")[1]) == [
        ("customer.subscription.updated", "recorded")
    ]
    assert stored(db, sub)["cancelAtPeriodEnd"] is True
    assert outcomes(clock(stripe, sub, "resume")[1]) == [("customer.subscription.updated", "recorded")]
    assert stored(db, sub)["cancelAtPeriodEnd"] is False
    assert clock(stripe, sub, "resume")[0] == 400, "nothing to resume"
    clock(stripe, sub, "cancel_at_period_end")

    status, ended = clock(stripe, sub, "renew")

    assert status == 200 and outcomes(ended) == [("customer.subscription.deleted", "ended")]
    assert balance(db, "cap") == 0 and grants(db, "cap") == {}
    assert stored(db, sub)["status"] == "canceled"
    assert clock(stripe, sub, "renew")[0] == 400, "a canceled subscription has no next step"
    assert_ledger_consistent(db)


def test_cancel_now_writes_the_period_off_at_once(stripe: StripeDouble, db: Any) -> None:
    sub, _ = subscribe(stripe, "now")

    status, answer = clock(stripe, sub, "cancel_now", twice="1")

    assert status == 200 and outcomes(answer) == [
        ("customer.subscription.deleted", "ended"),
        ("customer.subscription.deleted", "duplicate"),
    ]
    assert balance(db, "now") == 0 and stored(db, sub)["status"] == "canceled"
    assert [e["amount"] for e in entries(db, "now", "void")] == [-1000]
    assert_ledger_consistent(db)


def test_the_clock_refuses_what_does_not_apply_and_delivers_nothing(stripe: StripeDouble, db: Any) -> None:
    sub, _ = subscribe(stripe, "ref")
    delivered = len(stripe.deliveries)

    assert clock(stripe, "sub_nope", "renew")[0] == 404
    assert clock(stripe, sub, "travel")[0] == 400
    assert clock(stripe, sub, "renew", order="sideways")[0] == 400
    assert clock(stripe, sub, "upgrade")[0] == 400, "an upgrade needs a price"

    assert len(stripe.deliveries) == delivered and balance(db, "ref") == 1000


def test_the_portal_page_shows_the_subscription_and_cancels_it_at_period_end(
    stripe: StripeDouble, db: Any
) -> None:
    sub, customer = subscribe(stripe, "por")
    created, _, body = send(
        stripe.url + "/v1/billing_portal/sessions",
        "POST",
        {"customer": customer, "return_url": "http://127.0.0.1:5999/?portal=1"},
    )
    assert created == 200
    url = json.loads(body)["url"]
    end = time.strftime("%d %b %Y", time.gmtime(stripe.billing.subscriptions[sub].period[1]))

    shown, _, page = send(url, "GET")
    assert shown == 200 and f"Renews on {end}" in page and 'id="cancel-at-period-end"' in page
    assert 'id="change-price_max"' in page and 'href="http://127.0.0.1:5999/?portal=1"' in page

    done, headers, _ = send(url, "POST", {"subscription": sub, "action": "cancel_at_period_end"})

    assert done == 303 and headers["Location"] == urlsplit(url).path
    assert stored(db, sub)["cancelAtPeriodEnd"] is True
    _, _, page = send(url, "GET")
    assert f"Cancels on {end}" in page and 'id="resume"' in page
    assert send(url, "POST", {"subscription": "sub_other", "action": "cancel_now"})[0] == 404
    assert stored(db, sub)["status"] == "active"
