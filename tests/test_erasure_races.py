"""Erasure against writes that land while it runs: a Stripe reversal (with its analytics event) after
the events were deleted, or a stored problem event naming the user while the ledger closes. Step 5
sees what still names the uid and goes round again, so nothing of the user is left behind."""

from __future__ import annotations

from typing import Any

from devstack import stripe_events
from functions.lib import payments, user_data
from tests.helpers import assert_ledger_consistent, make_user, owned


def left_of(db: Any, uid: str) -> dict[str, list[str]]:
    """Every document that still names `uid`, by collection."""
    left = owned(db, uid)
    for name in ("users", "checkout_limits"):
        left[name] = [uid] if db.collection(name).document(uid).get().exists else []
    return {name: ids for name, ids in left.items() if ids}


def buy(db: Any, settings: Any, uid: str) -> tuple[str, str]:
    """A credited purchase of the creator pack; its payment intent and charge ids."""
    pi, charge = stripe_events.new_id("pi"), stripe_events.new_id("ch")
    event = stripe_events.checkout_completed(stripe_events.new_id("cs_test"), uid, "creator", pi)
    assert payments.handle_event(db, settings, event).action == "credited"
    return pi, charge


def test_a_reversal_landing_after_the_events_were_deleted_is_erased_in_another_round(
    db: Any, settings: Any, monkeypatch: Any
) -> None:
    uid = "reversal-race"
    make_user(db, uid)
    pi, charge = buy(db, settings, uid)
    step_3c = user_data._Erasure.delete_checkout_limit
    events: list[str] = []

    def refund_arrives_then(self: Any) -> None:
        if not events:  # once: Stripe delivers a partial refund after step 3b deleted the events
            reversed_ = payments.handle_event(
                db, settings, stripe_events.charge_refunded(charge, pi, 1000, 100)
            )
            events.append(reversed_.action)
        step_3c(self)

    monkeypatch.setattr(user_data._Erasure, "delete_checkout_limit", refund_arrives_then)
    progress: list[str] = []

    user_data.erase(
        db, uid, delete_login=lambda _uid: True, progress=lambda event, _f: progress.append(event)
    )

    assert events == ["reversed"]
    assert left_of(db, uid) == {}
    assert progress.count("again") == 1 and progress[-1] == "done"
    assert_ledger_consistent(db)


def test_a_problem_event_stored_while_the_ledger_closes_is_erased_in_another_round(
    db: Any, settings: Any, monkeypatch: Any
) -> None:
    uid = "problem-race"
    make_user(db, uid)
    buy(db, settings, uid)
    step_4 = user_data._Erasure.close_ledger
    stored: list[str] = []

    def problem_arrives_then(self: Any, pseudonym: str) -> None:
        if not stored:  # once: a session of the user for a pack no longer sold is stored, naming the uid
            event = stripe_events.checkout_completed(
                stripe_events.new_id("cs_test"), uid, "retired-pack", stripe_events.new_id("pi")
            )
            stored.append(payments.handle_event(db, settings, event).action)
        step_4(self, pseudonym)

    monkeypatch.setattr(user_data._Erasure, "close_ledger", problem_arrives_then)

    user_data.erase(db, uid, delete_login=lambda _uid: True)

    assert stored == ["problem"]
    assert left_of(db, uid) == {}
