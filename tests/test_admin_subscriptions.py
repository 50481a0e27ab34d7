"""The operator commands over subscription events: `replay` of a stored subscription problem event
through the webhook's own path, `audit` counting period, rollover and write-off entries, and
`export` (and account GET) carrying the user's subscriptions and invoice links."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devstack import stripe_events as se
from tests.helpers import assert_ledger_consistent, balance, bearer, entries, reset_caches, token
from tests.test_admin_money import admin
from tests.test_openapi import check
from tests.test_subscriptions import PLANS, outcome, paid_invoice, plans, sub_event

__all__ = ["plans"]  # the autouse fixture that configures PLANS
DAY = se.DAY


def test_replay_of_a_stored_subscription_invoice_grants_once_after_the_plan_is_configured(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time())
    line = se.invoice_line("price_team", 4900, now, now + 30 * DAY)
    event = se.event(
        "invoice.paid",
        se.invoice("in_team_1", "sub_team", "tia", "team", [line], billing_reason="subscription_create"),
    )
    assert outcome(app, event) == "problem"
    stored = db.document(f"stripe_event_problems/{event['id']}").get().to_dict()
    # Filed under its user (from the invoice's subscription metadata), so export and erasure find it.
    assert stored["reason"] == "unknown_plan" and stored["userId"] == "tia" and stored["status"] == "open"
    assert balance(db, "tia") == 0

    monkeypatch.setenv("PLANS", json.dumps({**PLANS, "team": {"price": "price_team", "credits": 5000}}))
    reset_caches()
    first = admin("replay", event["id"])
    resolved = db.document(f"stripe_event_problems/{event['id']}").get().to_dict()
    second = admin("replay", event["id"])

    out = capsys.readouterr().out
    assert first == second == 0
    assert f"replayed {event['id']}: granted, +5000 credits for tia" in out
    assert f"replayed {event['id']}: duplicate, +0 credits for tia" in out
    assert [e["id"] for e in entries(db, "tia")] == ["period_in_team_1"] and balance(db, "tia") == 5000
    assert resolved["status"] == "resolved" and resolved["resolution"] == "granted"
    assert_ledger_consistent(db)


def test_replay_of_an_upgrade_stored_before_its_period_was_known(
    app: Any, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    start = int(time.time()) - 10 * DAY
    end = start + 30 * DAY
    upgrade_at = start + 15 * DAY
    lines = [
        se.invoice_line("price_pro", -950, upgrade_at, end, proration=True),
        se.invoice_line("price_max", 2950, upgrade_at, end, proration=True),
    ]
    upgrade = se.event(
        "invoice.paid",
        se.invoice("in_up", "sub_up", "uri", "max", lines, billing_reason="subscription_update"),
    )
    assert outcome(app, upgrade) == "problem"  # period_unknown: the subscription's period is not stored yet
    assert outcome(
        app, sub_event("customer.subscription.updated", "sub_up", "uri", start=start, plan="max")
    ) == ("recorded")

    assert admin("replay", upgrade["id"]) == 0
    assert "granted, +1000 credits for uri" in capsys.readouterr().out  # (3000 - 1000) x half a period
    assert db.document(f"stripe_event_problems/{upgrade['id']}").get().get("status") == "resolved"
    assert_ledger_consistent(db)


def test_the_audit_counts_period_rollover_and_write_off_entries(
    app: Any, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    start = int(time.time()) - 31 * DAY
    assert outcome(app, sub_event("customer.subscription.created", "sub_al", "al", start=start)) == "recorded"
    assert (
        outcome(app, paid_invoice("in_al1", "sub_al", "al", start=start, reason="subscription_create"))
        == "granted"
    )
    assert outcome(app, paid_invoice("in_al2", "sub_al", "al", start=start + 30 * DAY)) == "granted"
    kinds = {e["type"] for e in entries(db, "al")}
    assert {"period", "rollover", "expiry"} <= kinds and balance(db, "al") == 1200

    assert admin("audit") == 0
    clean = capsys.readouterr().out
    db.document("credit_transactions/rollover_in_al2").delete()  # a lost entry: the sum no longer matches
    assert admin("audit") == 4

    out = capsys.readouterr().out
    assert f"{len(entries(db, 'al')) + 1} ledger entries" in clean and ": clean" in clean
    assert "DIFFERENCE user al" in out and "ledger sum 1000" in out


def test_export_carries_the_users_subscriptions_and_invoice_links_and_no_one_elses(
    app: Any, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    start = int(time.time()) - DAY
    for uid in ("eve", "fay"):
        token(uid)
        assert (
            outcome(app, sub_event("customer.subscription.created", f"sub_{uid}", uid, start=start))
            == "recorded"
        )
        invoice = paid_invoice(f"in_{uid}", f"sub_{uid}", uid, start=start, reason="subscription_create")
        assert outcome(app, invoice) == "granted"

    assert admin("export", "eve") == 0
    exported = json.loads(capsys.readouterr().out)
    served = app("account").get("/", headers=bearer("eve"))

    assert [s["id"] for s in exported["subscriptions"]] == ["sub_eve"]
    assert (
        exported["subscriptions"][0]["planId"] == "pro" and exported["subscriptions"][0]["status"] == "active"
    )
    assert [i["id"] for i in exported["invoices"]] == ["in_eve"]
    assert exported["invoices"][0]["grantId"] == "period_in_eve"
    body = check("account", "get", served)
    assert [s["id"] for s in body["subscriptions"]] == ["sub_eve"] and [
        i["id"] for i in body["invoices"]
    ] == ["in_eve"]
