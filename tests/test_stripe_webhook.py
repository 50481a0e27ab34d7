"""`stripe_webhook` through functions-framework's real Flask stack against the Firestore emulator.

Deliveries are real Stripe event envelopes around full objects, signed with the real scheme
(devstack.stripe_events), so the function's verification is the one that runs in production.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devstack import stripe_events as se
from devstack.procs import free_port
from tests.helpers import BASE_ENV, assert_ledger_consistent, balance, entries, reset_caches

SECRET = BASE_ENV["STRIPE_WEBHOOK_SECRET"]
STARTER = 100  # credits of the built-in "starter" pack


def deliver(app: Any, event: dict[str, Any], *, secret: str = SECRET, timestamp: int | None = None) -> Any:
    body, headers = se.delivery(event, secret, timestamp)
    return app("stripe_webhook").post("/", data=body, headers=headers)


def post_raw(app: Any, body: bytes, headers: dict[str, str]) -> Any:
    return app("stripe_webhook").post("/", data=body, headers={"Content-Type": "application/json", **headers})


def buy(
    app: Any, uid: str, *, pack: str = "starter", session: str | None = None, pi: str | None = None
) -> tuple[str, str]:
    """A paid Checkout Session delivered and credited; returns (session id, payment intent id)."""
    session, pi = session or se.new_id("cs_test"), pi or se.new_id("pi")
    res = deliver(app, se.checkout_completed(session, uid, pack, pi))
    assert res.status_code == 200 and res.json["outcome"] == "credited", res.json
    return session, pi


def analytics(db: Any, type: str) -> list[dict[str, Any]]:
    return [d.to_dict() for d in db.collection("analytics_events").stream() if d.to_dict()["type"] == type]


def problem(db: Any, event_id: str) -> dict[str, Any] | None:
    snap = db.collection("stripe_event_problems").document(event_id).get()
    return snap.to_dict() if snap.exists else None


def payment(db: Any, pi: str) -> dict[str, Any]:
    return db.collection("payments").document(pi).get().to_dict() or {}


def spend(db: Any, uid: str, credits: int) -> None:
    from functions.lib import ledger

    ledger.charge(db, uid, f"spend-{uid}-{credits}", credits, {"reason": "test spend"})


# --- verification -------------------------------------------------------------------------------


def test_a_paid_session_credits_its_pack_and_creates_the_user(app: Any, db: Any) -> None:
    event = se.checkout_completed("cs_test_a1", "newbie", "creator", "pi_a1")

    res = deliver(app, event)

    assert res.status_code == 200 and res.json == {"received": True, "outcome": "credited"}
    assert balance(db, "newbie") == 500
    [entry] = entries(db, "newbie")
    assert entry["id"] == "purchase_cs_test_a1" and entry["type"] == "purchase" and entry["amount"] == 500
    assert entry["balanceAfter"] == 500
    assert entry["metadata"] == {
        "stripeSessionId": "cs_test_a1",
        "stripePaymentIntentId": "pi_a1",
        "stripeEventId": event["id"],
        "packageId": "creator",
    }
    [purchased] = analytics(db, "credits_purchased")
    assert purchased["userId"] == "newbie" and purchased["properties"]["credits"] == 500
    assert_ledger_consistent(db)


def test_credits_come_from_the_server_catalog_not_the_amount_paid(app: Any, db: Any) -> None:
    session = se.checkout_session(
        "cs_test_cheap", "alice", "studio", payment_intent="pi_cheap", amount_total=1
    )

    res = deliver(app, se.event("checkout.session.completed", session))

    assert res.status_code == 200 and balance(db, "alice") == 1500
    assert_ledger_consistent(db)


def test_wrong_secret_is_400_and_changes_nothing(app: Any, db: Any) -> None:
    res = deliver(
        app, se.checkout_completed("cs_test_w", "mallory", "studio", "pi_w"), secret="whsec_attacker"
    )

    assert res.status_code == 400 and res.json["error"] == "invalid_signature"
    assert balance(db, "mallory") == 0 and entries(db, "mallory") == []
    assert_ledger_consistent(db)


def test_a_timestamp_older_than_300_s_is_400(app: Any, db: Any) -> None:
    event = se.checkout_completed("cs_test_old", "bob", "starter", "pi_old")

    stale = deliver(app, event, timestamp=int(time.time()) - 301)
    assert stale.status_code == 400 and stale.json["error"] == "invalid_signature"
    assert balance(db, "bob") == 0

    recent = deliver(app, event, timestamp=int(time.time()) - 240)
    assert recent.status_code == 200 and balance(db, "bob") == STARTER
    assert_ledger_consistent(db)


def test_a_timestamp_more_than_300_s_ahead_is_400(app: Any, db: Any) -> None:
    # stripe-python checks only the past; a signature dated ahead would stay replayable until then.
    event = se.checkout_completed("cs_test_ahead", "bob", "starter", "pi_ahead")

    ahead = deliver(app, event, timestamp=int(time.time()) + 301)
    assert ahead.status_code == 400 and ahead.json["error"] == "invalid_signature"
    assert balance(db, "bob") == 0

    # A clock a little ahead of Stripe's is within the tolerance.
    skewed = deliver(app, event, timestamp=int(time.time()) + 240)
    assert skewed.status_code == 200 and balance(db, "bob") == STARTER
    assert_ledger_consistent(db)


@pytest.mark.parametrize(
    "header",
    [
        "<none>",
        "",
        "garbage",
        "t=notanumber,v1={sig}",
        "t={ts}",
        "v1={sig}",
        "t={ts},v0={sig}",
        "t={ts},v1=",
        "t={ts},v1={sig}0",
        "t={ts},v1=\u00e9{sig}",
    ],
)
def test_a_malformed_signature_header_is_400(app: Any, db: Any, header: str) -> None:
    body = se.encode(se.checkout_completed("cs_test_m", "carol", "starter", "pi_m"))
    ts = int(time.time())
    sig = se.sign(body, SECRET, ts).split("v1=")[1]
    headers = {} if header == "<none>" else {"Stripe-Signature": header.format(ts=ts, sig=sig)}

    res = post_raw(app, body, headers)

    assert res.status_code == 400 and res.json["error"] == "invalid_signature"
    assert balance(db, "carol") == 0
    assert_ledger_consistent(db)


def test_a_tampered_body_is_400(app: Any, db: Any) -> None:
    body, headers = se.delivery(se.checkout_completed("cs_test_t", "dave", "starter", "pi_t"), SECRET)
    tampered = body.replace(b'"starter"', b'"studio"')
    assert tampered != body

    res = post_raw(app, tampered, headers)

    assert res.status_code == 400 and res.json["error"] == "invalid_signature"
    assert balance(db, "dave") == 0 and entries(db, "dave") == []
    assert_ledger_consistent(db)


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "evt_1", "object": "event", ',
        b"[1, 2]",
        b'{"object": "event", "type": "x"}',
        b'{"id": "evt_1", "type": "x"}',
        b"\xff\xfe{}",
    ],
    ids=["truncated-json", "not-an-object", "no-id", "not-an-event", "not-utf8"],
)
def test_a_signed_but_malformed_payload_is_400(app: Any, db: Any, body: bytes) -> None:
    res = post_raw(app, body, {"Stripe-Signature": se.sign(body, SECRET)})

    assert res.status_code == 400 and res.json["error"] == "invalid_request"
    assert "Traceback" not in res.get_data(as_text=True)
    assert list(db.collection("stripe_event_problems").stream()) == []


def test_without_the_webhook_secret_it_fails_closed(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    event = se.checkout_completed("cs_test_ns", "erin", "starter", "pi_ns")
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    reset_caches()

    with caplog.at_level(logging.ERROR):
        res = deliver(app, event)

    assert res.status_code == 500 and res.json["error"] == "internal"
    assert "STRIPE_WEBHOOK_SECRET" not in res.get_data(as_text=True)
    assert "STRIPE_WEBHOOK_SECRET" in caplog.text
    assert balance(db, "erin") == 0
    assert_ledger_consistent(db)


def test_only_post_is_served_and_there_is_no_cors(app: Any, db: Any) -> None:
    res = app("stripe_webhook").get("/", headers={"Origin": "http://localhost:5173"})

    assert res.status_code == 405 and "Access-Control-Allow-Origin" not in res.headers


# --- purchases ----------------------------------------------------------------------------------


def test_an_unpaid_session_credits_only_when_its_async_payment_succeeds(app: Any, db: Any) -> None:
    waiting = deliver(app, se.checkout_completed("cs_test_ach", "frank", "starter", "pi_ach", paid=False))
    assert waiting.status_code == 200 and waiting.json["outcome"] == "awaiting_payment"
    assert balance(db, "frank") == 0 and entries(db, "frank") == []

    cleared = deliver(app, se.async_payment_succeeded("cs_test_ach", "frank", "starter", "pi_ach"))

    assert cleared.status_code == 200 and cleared.json["outcome"] == "credited"
    assert balance(db, "frank") == STARTER
    [entry] = entries(db, "frank")
    assert entry["id"] == "purchase_cs_test_ach"
    assert_ledger_consistent(db)


def test_the_same_session_delivered_twice_credits_once(app: Any, db: Any) -> None:
    event = se.checkout_completed("cs_test_dup", "gina", "starter", "pi_dup")

    first, again = deliver(app, event), deliver(app, event)
    other_event_id = deliver(app, se.checkout_completed("cs_test_dup", "gina", "starter", "pi_dup"))

    assert [first.json["outcome"], again.json["outcome"], other_event_id.json["outcome"]] == [
        "credited",
        "duplicate",
        "duplicate",
    ]
    assert all(r.status_code == 200 for r in (first, again, other_event_id))
    assert balance(db, "gina") == STARTER and len(entries(db, "gina")) == 1
    assert len(analytics(db, "credits_purchased")) == 1
    assert_ledger_consistent(db)


def test_ten_concurrent_deliveries_of_one_session_credit_once(app: Any, db: Any) -> None:
    body, headers = se.delivery(se.checkout_completed("cs_test_storm", "hank", "creator", "pi_storm"), SECRET)
    flask_app = app("stripe_webhook").application

    with ThreadPoolExecutor(10) as pool:
        results = list(
            pool.map(lambda _: flask_app.test_client().post("/", data=body, headers=headers), range(10))
        )

    assert [r.status_code for r in results] == [200] * 10
    assert sorted(r.json["outcome"] for r in results) == ["credited"] + ["duplicate"] * 9
    assert balance(db, "hank") == 500 and len(entries(db, "hank")) == 1
    assert len(analytics(db, "credits_purchased")) == 1
    assert_ledger_consistent(db)


@pytest.mark.parametrize("async_first", [False, True])
def test_completed_and_async_succeeded_for_one_session_credit_once(
    app: Any, db: Any, async_first: bool
) -> None:
    events = [
        se.checkout_completed("cs_test_both", "ivy", "starter", "pi_both"),
        se.async_payment_succeeded("cs_test_both", "ivy", "starter", "pi_both"),
    ]
    if async_first:
        events.reverse()

    outcomes = [deliver(app, e).json["outcome"] for e in events]

    assert outcomes == ["credited", "duplicate"]
    assert balance(db, "ivy") == STARTER and len(entries(db, "ivy")) == 1
    assert_ledger_consistent(db)


@pytest.mark.parametrize(
    "type",
    [
        "customer.created",
        "checkout.session.expired",
        "checkout.session.async_payment_failed",
        "charge.succeeded",
    ],
)
def test_unknown_or_irrelevant_event_types_are_200_and_change_nothing(app: Any, db: Any, type: str) -> None:
    event = se.event(type, se.checkout_session("cs_test_x", "jack", "starter", payment_intent="pi_x"))

    res = deliver(app, event)

    assert res.status_code == 200 and res.json["outcome"] == "ignored"
    assert balance(db, "jack") == 0 and list(db.collection("credit_transactions").stream()) == []
    assert problem(db, event["id"]) is None
    assert_ledger_consistent(db)


@pytest.mark.no_emulator
def test_every_handled_event_type_has_a_handler_and_is_the_list_to_enable_in_stripe_md() -> None:
    from functions.lib import payments
    from tests.helpers import ROOT

    enabled = (ROOT / "docs" / "STRIPE.md").read_text().split("--events ", 1)[1].split()[0].split(",")

    assert [t for t in payments.EventType if payments.handler_of(t) is None] == []
    assert sorted(enabled) == sorted(payments.EventType)
    assert payments.handler_of("customer.created") is None and payments.handler_of(None) is None


@pytest.mark.parametrize(
    ("uid", "pack", "reason"),
    [
        ("kim", "mega", "unknown_pack"),
        ("kim", None, "unknown_pack"),
        (None, "starter", "no_user"),
        ("a/b", "starter", "no_user"),
    ],
)
def test_a_session_without_a_known_pack_or_user_is_stored_for_operators(
    app: Any, db: Any, uid: str | None, pack: str | None, reason: str
) -> None:
    event = se.checkout_completed("cs_test_bad", uid, pack, "pi_bad")

    res = deliver(app, event)
    again = deliver(app, event)

    assert res.status_code == 200 and res.json == {"received": True, "outcome": "problem", "problem": reason}
    assert again.status_code == 200
    stored = problem(db, event["id"])
    assert (
        stored is not None
        and stored["reason"] == reason
        and stored["status"] == "open"
        and stored["deliveries"] == 2
    )
    kept = json.loads(stored["payload"])
    assert (
        kept["id"] == event["id"]
        and kept["type"] == event["type"]
        and kept["data"]["object"]["id"] == "cs_test_bad"
    )
    assert (
        "buyer@example.com" not in stored["payload"]
        and "Test Buyer" not in stored["payload"]
        and "94103" not in stored["payload"]
    )
    assert list(db.collection("credit_transactions").stream()) == []
    assert_ledger_consistent(db)


def test_a_paid_session_with_no_payment_required_is_not_credited(app: Any, db: Any) -> None:
    session = se.checkout_session(
        "cs_test_free", "lena", "starter", payment_intent=None, payment_status="no_payment_required"
    )
    event = se.event("checkout.session.completed", session)

    res = deliver(app, event)

    assert res.status_code == 200 and res.json["problem"] == "not_paid"
    assert balance(db, "lena") == 0 and problem(db, event["id"]) is not None
    assert_ledger_consistent(db)


@pytest.mark.slow
def test_a_firestore_outage_answers_5xx_and_the_retry_credits_once(
    app: Any, db: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = se.checkout_completed("cs_test_outage", "mona", "starter", "pi_outage")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    reset_caches()

    down = deliver(app, event)

    assert down.status_code == 503 and down.json["error"] == "unavailable" and "Retry-After" in down.headers
    assert balance(db, "mona") == 0 and entries(db, "mona") == []

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
    reset_caches()
    retried, redelivered = deliver(app, event), deliver(app, event)

    assert retried.status_code == 200 and retried.json["outcome"] == "credited"
    assert redelivered.json["outcome"] == "duplicate"
    assert balance(db, "mona") == STARTER and len(entries(db, "mona")) == 1
    assert_ledger_consistent(db)


def test_a_stored_problem_replays_once_its_cause_is_fixed(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.lib import payments
    from functions.lib.config import get_settings

    event = se.checkout_completed("cs_test_new_pack", "nina", "mega", "pi_new_pack")
    assert deliver(app, event).json["outcome"] == "problem"
    monkeypatch.setenv(
        "CREDIT_PACKS",
        json.dumps(
            {"starter": {"credits": 100, "price": "price_s"}, "mega": {"credits": 9000, "price": "price_m"}}
        ),
    )
    reset_caches()

    outcome = payments.replay_problem(db, get_settings(), event["id"])
    repeat = payments.replay_problem(db, get_settings(), event["id"])

    assert outcome.action == "credited" and outcome.credits == 9000 and repeat.action == "duplicate"
    assert balance(db, "nina") == 9000
    stored = problem(db, event["id"])
    assert stored is not None and stored["status"] == "resolved"
    assert_ledger_consistent(db)
