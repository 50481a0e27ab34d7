"""Erasure of a subscriber (`account` DELETE): the live subscriptions are canceled in Stripe (the
local double, through the real stripe client) before anything is erased; a Stripe failure stops
the erasure with nothing deleted and a second DELETE finishes it; later events of the subscription
change nothing: no credits, no user document, no stored problem naming the uid."""

from __future__ import annotations

import time
from typing import Any

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter

from devstack import stripe_events as se
from devstack.auth import AuthEmulator
from devstack.stripe_double import StripeDouble
from tests.helpers import assert_ledger_consistent, balance, owned
from tests.test_account import Person, accounts, admin, everything_of, sign_up
from tests.test_openapi import check
from tests.test_subscriptions import outcome, paid_invoice, plans, sub_event

__all__ = ["accounts", "plans"]  # fixtures used here
DAY = se.DAY


def subscribe(app: Any, db: Any, stripe_api: StripeDouble, person: Person, sub: str, start: int) -> None:
    """Consent, then a pro subscription whose first invoice is paid (+1000), as Stripe tells it."""
    from tests.helpers import TERMS

    assert app("consent").post("/", json={"version": TERMS}, headers=person.bearer).status_code == 200
    assert (
        outcome(app, sub_event("customer.subscription.created", sub, person.uid, start=start)) == "recorded"
    )
    first = paid_invoice(f"in_{sub}_1", sub, person.uid, start=start, reason="subscription_create")
    assert outcome(app, first) == "granted"
    stripe_api.subscriptions[sub] = "active"
    assert balance(db, person.uid) == 1000


def docs(db: Any, collection: str, uid: str) -> list[str]:
    return [d.id for d in db.collection(collection).where(filter=FieldFilter("userId", "==", uid)).stream()]


def test_erasure_cancels_the_live_subscription_first_and_its_later_events_change_nothing(
    app: Any, db: Any, accounts: AuthEmulator, stripe_api: StripeDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    ana = sign_up(accounts, "ana")
    start = int(time.time()) - DAY
    subscribe(app, db, stripe_api, ana, "sub_ana", start)
    # An older subscription, over long ago: nothing to cancel in Stripe.
    old = sub_event("customer.subscription.deleted", "sub_ana_old", ana.uid, start=start - 90 * DAY)
    assert outcome(app, old) == "ended"

    res = app("account").delete("/", headers=ana.bearer)

    assert res.status_code == 200, res.json
    report = check("account", "delete", res)
    assert report["subscriptionsCanceled"] == 1 and report["creditsForfeited"] == 1000
    assert report["subscriptionsPseudonymised"] == 3  # two subscriptions and one invoice link
    assert (
        stripe_api.subscriptions_canceled == ["sub_ana"] and stripe_api.subscriptions["sub_ana"] == "canceled"
    )
    for sub_id in ("sub_ana", "sub_ana_old"):
        stored = db.document(f"subscriptions/{sub_id}").get().to_dict()
        assert stored["erased"] is True and stored["status"] == "canceled"
        assert stored["userId"].startswith("erased_") and stored["endedAt"] is not None
    assert db.document("invoices/in_sub_ana_1").get().get("userId").startswith("erased_")
    assert docs(db, "subscriptions", ana.uid) == docs(db, "invoices", ana.uid) == []

    later = [
        sub_event("customer.subscription.deleted", "sub_ana", ana.uid, start=start),  # from the cancel
        sub_event(
            "customer.subscription.updated", "sub_ana", ana.uid, start=start, created=int(time.time()) + 5
        ),
        paid_invoice("in_sub_ana_1", "sub_ana", ana.uid, start=start, reason="subscription_create"),  # again
        paid_invoice("in_sub_ana_2", "sub_ana", ana.uid, start=start + 30 * DAY),  # a renewal in flight
        se.event("invoice.payment_failed", se.invoice("in_sub_ana_3", "sub_ana", ana.uid, "pro", [])),
    ]
    assert [outcome(app, e) for e in later] == ["ignored"] * len(later)

    assert not db.document(f"users/{ana.uid}").get().exists
    assert all(ids == [] for ids in owned(db, ana.uid).values()), owned(db, ana.uid)
    assert docs(db, "subscriptions", ana.uid) == [] and docs(db, "stripe_event_problems", ana.uid) == []
    assert not db.document("credit_transactions/period_in_sub_ana_2").get().exists
    assert_ledger_consistent(db)
    assert admin("audit") == 0
    assert "1 closed (erased) accounts" in capsys.readouterr().out


def test_a_stripe_failure_stops_the_erasure_with_nothing_erased_and_a_second_delete_finishes_it(
    app: Any, db: Any, accounts: AuthEmulator, stripe_api: StripeDouble
) -> None:
    bea = sign_up(accounts, "bea")
    subscribe(app, db, stripe_api, bea, "sub_bea", int(time.time()) - DAY)
    before = everything_of(db, bea.uid)
    sub_before = db.document("subscriptions/sub_bea").get().to_dict()
    stripe_api.mode = "error"

    failed = app("account").delete("/", headers=bea.bearer)

    assert failed.status_code == 502 and failed.json["error"] == "upstream_failed", failed.json
    assert "nothing was erased" in failed.json["message"]
    assert everything_of(db, bea.uid) == before and before["user"]["consent"]
    assert db.document("subscriptions/sub_bea").get().to_dict() == sub_before
    assert stripe_api.subscriptions["sub_bea"] == "active"

    stripe_api.mode = "ok"
    res = app("account").delete("/", headers=bea.bearer)

    assert res.status_code == 200, res.json
    assert res.json["subscriptionsCanceled"] == 1 and stripe_api.subscriptions["sub_bea"] == "canceled"
    assert not db.document(f"users/{bea.uid}").get().exists
    assert_ledger_consistent(db)


@pytest.mark.parametrize("in_stripe", ["canceled", None], ids=["already_canceled", "unknown_to_stripe"])
def test_a_subscription_stripe_already_ended_counts_as_canceled(
    app: Any, db: Any, accounts: AuthEmulator, stripe_api: StripeDouble, in_stripe: str | None
) -> None:
    cy = sign_up(accounts, "cy")
    subscribe(app, db, stripe_api, cy, "sub_cy", int(time.time()) - DAY)
    # Canceled in Stripe (by the user in the portal, or an earlier erasure run whose response was
    # lost) before its `deleted` event reached us; or gone from Stripe altogether.
    if in_stripe is None:
        del stripe_api.subscriptions["sub_cy"]
    else:
        stripe_api.subscriptions["sub_cy"] = in_stripe

    res = app("account").delete("/", headers=cy.bearer)

    assert res.status_code == 200, res.json
    # Stripe answered the cancel with 404 resource_missing; a retrieve confirmed it is over.
    assert [(r.method, r.path) for r in stripe_api.received] == [
        ("DELETE", "/v1/subscriptions/sub_cy"),
        ("GET", "/v1/subscriptions/sub_cy"),
    ]
    assert not db.document(f"users/{cy.uid}").get().exists


def test_forget_cancels_too_and_a_rerun_calls_stripe_no_more(
    app: Any, db: Any, accounts: AuthEmulator, stripe_api: StripeDouble
) -> None:
    dan = sign_up(accounts, "dan")
    subscribe(app, db, stripe_api, dan, "sub_dan", int(time.time()) - DAY)

    assert admin("forget", dan.uid) == 0
    assert admin("forget", dan.uid) == 0

    assert stripe_api.subscriptions_canceled == ["sub_dan"]
    assert db.document("subscriptions/sub_dan").get().get("erased") is True
    assert_ledger_consistent(db)
