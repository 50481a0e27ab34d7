"""`checkout` with a `planId` (a subscription-mode Checkout Session) and `billing_portal`, through
functions-framework's real Flask stack, the real stripe client and the local Stripe double."""

from __future__ import annotations

from typing import Any

import pytest

from devstack import stripe_events as se
from devstack.stripe_double import StripeDouble
from tests.helpers import BASE_ENV, bearer, reset_caches

SUCCESS = "https://app.example.com/credits?session={CHECKOUT_SESSION_ID}"
CANCEL = "http://localhost:5173/credits"
PLANS = '{"pro": {"price": "price_pro", "credits": 1000, "rollover": 200}, "max": {"price": "price_max", "credits": 3000}}'


@pytest.fixture(autouse=True)
def plans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANS", PLANS)
    reset_caches()


def checkout(app: Any, uid: str, body: dict[str, Any]) -> Any:
    return app("checkout").post("/", json=body, headers=bearer(uid))


def portal(app: Any, uid: str, body: dict[str, Any]) -> Any:
    return app("billing_portal").post("/", json=body, headers=bearer(uid))


def subscribe(app: Any, uid: str, sub_id: str, status: str = "active", customer: str = "cus_1") -> None:
    """Stripe tells the webhook about a subscription of `uid` (as after a subscription checkout)."""
    from tests.test_subscriptions import deliver

    sub = se.subscription(sub_id, uid, "pro", "price_pro", customer=customer, status=status)
    assert deliver(app, se.event("customer.subscription.created", sub)).status_code == 200


def test_a_plan_checkout_creates_a_subscription_session_carrying_the_uid_three_ways(
    app: Any, db: Any, stripe_api: StripeDouble
) -> None:
    res = checkout(app, "sam", {"planId": "pro", "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert res.status_code == 200, res.json
    [sent] = stripe_api.sessions_created
    assert sent.form() == {
        "mode": "subscription",
        "line_items[0][price]": "price_pro",
        "line_items[0][quantity]": "1",
        "client_reference_id": "sam",
        "metadata[userId]": "sam",
        "metadata[planId]": "pro",
        "subscription_data[metadata][userId]": "sam",
        "subscription_data[metadata][planId]": "pro",
        "success_url": SUCCESS,
        "cancel_url": CANCEL,
    }
    session = stripe_api.sessions[res.json["sessionId"]]
    assert session["mode"] == "subscription" and session["subscription_data"]["metadata"]["userId"] == "sam"
    assert list(db.collection("credit_transactions").stream()) == []


def test_a_known_customer_is_reused(app: Any, db: Any, stripe_api: StripeDouble) -> None:
    subscribe(app, "cy", "sub_old", status="canceled", customer="cus_cy")

    res = checkout(app, "cy", {"planId": "max", "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert res.status_code == 200, res.json
    assert stripe_api.sessions_created[0].form()["customer"] == "cus_cy"


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
def test_a_live_subscription_gets_409_already_subscribed(
    app: Any, db: Any, stripe_api: StripeDouble, status: str
) -> None:
    subscribe(app, "dee", "sub_dee", status=status)

    res = checkout(app, "dee", {"planId": "max", "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert res.status_code == 409 and res.json["error"] == "already_subscribed", res.json
    assert stripe_api.received == []
    # Packs are still on sale to a subscriber.
    pack = checkout(app, "dee", {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL})
    assert pack.status_code == 200, pack.json


@pytest.mark.parametrize(
    "body",
    [
        {"planId": "gold"},
        {"planId": 7},
        {"planId": "pro", "packId": "starter"},
        {},
    ],
)
def test_an_unknown_plan_or_not_exactly_one_of_pack_and_plan_is_400(
    app: Any, db: Any, stripe_api: StripeDouble, body: dict[str, Any]
) -> None:
    res = checkout(app, "eve", {**body, "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert res.status_code == 400 and res.json["error"] == "invalid_request", res.json
    assert stripe_api.received == []


def test_the_billing_portal_answers_a_portal_url_for_the_callers_customer(
    app: Any, db: Any, stripe_api: StripeDouble
) -> None:
    subscribe(app, "fay", "sub_fay", customer="cus_fay")

    res = portal(app, "fay", {"returnUrl": "https://app.example.com/account"})

    assert res.status_code == 200, res.json
    assert res.json["url"].startswith("https://billing.stripe.com/")
    [sent] = stripe_api.portal_sessions_created
    assert sent.form() == {"customer": "cus_fay", "return_url": "https://app.example.com/account"}
    assert sent.headers.get("Authorization") == f"Bearer {BASE_ENV['STRIPE_SECRET_KEY']}"


def test_the_billing_portal_without_a_customer_is_404_no_customer(
    app: Any, db: Any, stripe_api: StripeDouble
) -> None:
    res = portal(app, "gus", {"returnUrl": "https://app.example.com/account"})

    assert res.status_code == 404 and res.json["error"] == "no_customer", res.json
    assert stripe_api.received == []


@pytest.mark.parametrize("url", ["https://evil.example.org/", "javascript:alert(1)", None, ""])
def test_the_billing_portal_checks_the_return_url_like_checkout(
    app: Any, db: Any, stripe_api: StripeDouble, url: Any
) -> None:
    subscribe(app, "hal", "sub_hal", customer="cus_hal")

    res = portal(app, "hal", {"returnUrl": url})

    assert res.status_code == 400 and res.json["field"] == "returnUrl", res.json
    assert stripe_api.received == []
