"""A payment's whole life after the purchase, through `stripe_webhook` (functions-framework's real
Flask stack, real signatures) against the Firestore emulator: refunds by id and by charge, in either
order, failing and redelivered; disputes won and lost; events that arrive before their purchase or
for a payment this app never sold; live-mode events; a refund while a generation holds credits.

Outcomes: `duplicate` when an event tells nothing new, `unchanged` when it adds to what is known
about the payment without moving credits (the second announcement of one refund, a lost dispute).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack import stripe_events as se
from devstack.procs import wait_until
from tests.helpers import (
    BASE_ENV,
    assert_ledger_consistent,
    balance,
    bearer,
    entries,
    generations,
    make_user,
    reset_caches,
)

SECRET = BASE_ENV["STRIPE_WEBHOOK_SECRET"]
STARTER = 100  # credits of the built-in "starter" pack, sold for se.DEFAULT_AMOUNT (1000 cents)
PAID = se.DEFAULT_AMOUNT


def deliver(app: Any, event: dict[str, Any]) -> Any:
    body, headers = se.delivery(event, SECRET)
    return app("stripe_webhook").post("/", data=body, headers=headers)


def outcome(app: Any, event: dict[str, Any]) -> str:
    res = deliver(app, event)
    assert res.status_code == 200, res.json
    return str(res.json["outcome"])


def buy(app: Any, uid: str, *, pack: str = "starter") -> str:
    """A paid Checkout Session credited to `uid`; returns its payment intent id."""
    pi = se.new_id("pi")
    assert outcome(app, se.checkout_completed(se.new_id("cs_test"), uid, pack, pi)) == "credited"
    return pi


def refund_created(refund_id: str, pi: str, amount: int = PAID, status: str = "succeeded") -> dict[str, Any]:
    return se.refund_event("refund.created", refund_id, "ch_" + pi, pi, amount, status)


def refund_failed(refund_id: str, pi: str, amount: int = PAID) -> dict[str, Any]:
    return se.refund_event("refund.failed", refund_id, "ch_" + pi, pi, amount, "failed")


def charge_refunded(pi: str, amount_refunded: int) -> dict[str, Any]:
    return se.charge_refunded("ch_" + pi, pi, PAID, amount_refunded)


def ledger_ids(db: Any, uid: str) -> list[str]:
    return sorted(e["id"] for e in entries(db, uid) if e["type"] in ("reversal", "reinstatement"))


def problem(db: Any, event_id: str) -> dict[str, Any]:
    snap = db.collection("stripe_event_problems").document(event_id).get()
    assert snap.exists, f"no stored event {event_id}"
    return dict(snap.to_dict())


# --- refunds ------------------------------------------------------------------------------------


def test_a_refund_by_id_takes_the_pack_back_once_however_often_it_is_announced(app: Any, db: Any) -> None:
    pi = buy(app, "ann")
    created = refund_created("re_ann", pi)

    results = [
        outcome(app, created),
        outcome(app, created),  # Stripe redelivers the same event
        outcome(app, se.refund_event("refund.updated", "re_ann", "ch_" + pi, pi, PAID, "succeeded")),
        outcome(app, charge_refunded(pi, PAID)),
    ]

    assert results == ["reversed", "duplicate", "duplicate", "unchanged"]
    [reversal] = entries(db, "ann", "reversal")
    assert (
        reversal["id"] == "reversal_re_ann"
        and reversal["amount"] == -STARTER
        and reversal["balanceAfter"] == 0
    )
    assert (
        reversal["metadata"]["stripeRefundId"] == "re_ann"
        and reversal["metadata"]["stripePaymentIntentId"] == pi
    )
    assert balance(db, "ann") == 0
    assert_ledger_consistent(db)


@pytest.mark.parametrize("charge_first", [True, False])
def test_charge_refunded_and_refund_created_for_one_refund_take_it_back_once_in_either_order(
    app: Any, db: Any, charge_first: bool
) -> None:
    pi = buy(app, "bo")
    events = [charge_refunded(pi, PAID), refund_created("re_bo", pi)]

    first, second = (outcome(app, e) for e in (events if charge_first else events[::-1]))

    assert (first, second) == ("reversed", "unchanged")
    assert ledger_ids(db, "bo") == (["reversal_ch_" + pi + "_1000"] if charge_first else ["reversal_re_bo"])
    assert balance(db, "bo") == 0
    assert_ledger_consistent(db)


def test_both_announcements_of_one_refund_delivered_concurrently_take_it_back_once(app: Any, db: Any) -> None:
    pi = buy(app, "cy")
    make_user(db, "cy", credits=400)  # credits from elsewhere, which the refund must leave alone
    deliveries = [
        se.delivery(e, SECRET) for e in (charge_refunded(pi, PAID), refund_created("re_cy", pi))
    ] * 3
    flask_app = app("stripe_webhook").application

    with ThreadPoolExecutor(3) as pool:
        results = list(
            pool.map(lambda d: flask_app.test_client().post("/", data=d[0], headers=d[1]), deliveries)
        )

    assert [r.status_code for r in results] == [200] * 6
    assert [r.json["outcome"] for r in results].count("reversed") == 1
    assert sum(e["amount"] for e in entries(db, "cy", "reversal")) == -STARTER and balance(db, "cy") == 400
    assert_ledger_consistent(db)


def test_partial_refunds_by_id_are_pro_rata_and_never_exceed_the_pack(app: Any, db: Any) -> None:
    pi = buy(app, "dee")
    make_user(db, "dee", credits=1)

    thirds = [outcome(app, refund_created(f"re_dee{i}", pi, 333)) for i in range(3)]
    rest = outcome(app, refund_created("re_dee3", pi, 1))  # 999 + 1: the whole payment

    assert thirds == ["reversed"] * 3 and rest == "reversed"
    assert [e["amount"] for e in sorted(entries(db, "dee", "reversal"), key=lambda e: e["id"])] == [
        -33,
        -33,
        -33,
        -1,
    ]
    assert balance(db, "dee") == 1
    assert_ledger_consistent(db)


def test_a_cumulative_charge_refunded_counts_each_partial_refund_once(app: Any, db: Any) -> None:
    pi = buy(app, "eve")

    results = [outcome(app, charge_refunded(pi, n)) for n in (300, 300, 700, 300, 1000)]

    assert results == ["reversed", "duplicate", "reversed", "duplicate", "reversed"]
    assert sorted(e["amount"] for e in entries(db, "eve", "reversal")) == [-40, -30, -30]
    assert balance(db, "eve") == 0
    assert_ledger_consistent(db)


def test_a_refund_that_fails_gives_its_credits_back_once_and_a_new_refund_takes_its_own_share(
    app: Any, db: Any
) -> None:
    pi = buy(app, "fay")

    steps = [
        outcome(app, refund_created("re_fay1", pi, 500, "pending")),
        outcome(app, charge_refunded(pi, 500)),
        outcome(app, refund_failed("re_fay1", pi, 500)),
        outcome(app, refund_failed("re_fay1", pi, 500)),  # redelivered
        outcome(
            app, se.refund_event("refund.updated", "re_fay1", "ch_" + pi, pi, 500, "pending")
        ),  # stale, late
        outcome(app, refund_created("re_fay2", pi, 200)),
        outcome(app, charge_refunded(pi, 200)),
    ]

    assert steps == ["reversed", "unchanged", "reinstated", "duplicate", "duplicate", "reversed", "duplicate"]
    assert ledger_ids(db, "fay") == ["reinstatement_re_fay1", "reversal_re_fay1", "reversal_re_fay2"]
    assert [e["amount"] for e in sorted(entries(db, "fay", "reinstatement"), key=lambda e: e["id"])] == [50]
    assert balance(db, "fay") == STARTER - 20
    assert_ledger_consistent(db)


def test_a_canceled_refund_announced_only_by_charge_refunded_is_given_back(app: Any, db: Any) -> None:
    pi = buy(app, "gil")

    taken = outcome(app, charge_refunded(pi, PAID))
    canceled = outcome(app, se.refund_event("refund.updated", "re_gil", "ch_" + pi, pi, PAID, "canceled"))

    assert (taken, canceled) == ("reversed", "reinstated")
    assert ledger_ids(db, "gil") == ["reinstatement_re_gil", "reversal_ch_" + pi + "_1000"]
    assert balance(db, "gil") == STARTER
    assert_ledger_consistent(db)


# --- disputes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "final"), [("won", STARTER - 40), ("lost", 0), ("warning_closed", STARTER - 40)]
)
def test_a_dispute_takes_back_what_is_left_and_only_a_won_one_gives_it_back(
    app: Any, db: Any, status: str, final: int
) -> None:
    pi = buy(app, "hal")
    outcome(app, refund_created("re_hal", pi, 400))
    closed = se.dispute_closed("dp_hal", "ch_" + pi, pi, status)

    opened = outcome(app, se.dispute_created("dp_hal", "ch_" + pi, pi))
    during = balance(db, "hal")
    results = [
        outcome(app, closed),
        outcome(app, closed),
        outcome(app, se.dispute_created("dp_hal", "ch_" + pi, pi)),
    ]

    assert opened == "reversed" and during == 0
    assert results == (
        ["reinstated", "duplicate", "duplicate"]
        if status != "lost"
        else ["unchanged", "duplicate", "duplicate"]
    )
    assert [e["amount"] for e in entries(db, "hal", "reversal") if e["id"] == "reversal_dp_hal"] == [-60]
    assert balance(db, "hal") == final
    assert_ledger_consistent(db)


def test_a_refund_after_a_lost_dispute_takes_nothing_more(app: Any, db: Any) -> None:
    pi = buy(app, "ida")

    steps = [
        outcome(app, se.dispute_closed("dp_ida", "ch_" + pi, pi, "lost")),
        outcome(app, refund_created("re_ida", pi)),
    ]

    assert steps == ["reversed", "unchanged"]
    assert sum(e["amount"] for e in entries(db, "ida", "reversal")) == -STARTER and balance(db, "ida") == 0
    assert_ledger_consistent(db)


# --- balances below zero ------------------------------------------------------------------------


def test_a_refund_takes_back_its_whole_share_even_when_the_credits_were_spent(app: Any, db: Any) -> None:
    pi = buy(app, "jan")
    make_user(db, "jan")
    assert app("generate").post("/", json={"prompt": "a fox"}, headers=bearer("jan")).status_code == 200

    assert outcome(app, refund_created("re_jan", pi)) == "reversed"
    short = app("generate").post("/", json={"prompt": "another fox"}, headers=bearer("jan"))

    assert balance(db, "jan") == -50
    assert short.status_code == 402
    assert short.json == {
        **short.json,
        "error": "insufficient_credits",
        "balance": -50,
        "required": 50,
        "shortfall": 100,
    }
    assert len(entries(db, "jan", "charge")) == 1
    buy(app, "jan")
    assert balance(db, "jan") == 50
    assert_ledger_consistent(db)


def test_a_full_refund_while_a_generation_holds_credits_leaves_exactly_nothing(
    app: Any, db: Any, gemini: Any
) -> None:
    pi = buy(app, "kai")
    make_user(db, "kai")
    gemini.mode, gemini.gate = "error500", threading.Event()
    answer: list[Any] = []
    generate = app("generate").application.test_client()
    caller = threading.Thread(
        target=lambda: answer.append(generate.post("/", json={"prompt": "slow"}, headers=bearer("kai")))
    )

    caller.start()
    wait_until(lambda: len(gemini.received) == 1, what="the model call", timeout=30)
    refunded = outcome(app, refund_created("re_kai", pi))
    during = balance(db, "kai")
    gemini.gate.set()
    caller.join(timeout=60)

    assert refunded == "reversed" and during == -50
    [res] = answer
    assert res.status_code == 502 and res.json["refunded"] == 50 and res.json["balance"] == 0
    assert balance(db, "kai") == 0
    assert_ledger_consistent(db)


# --- events before their purchase, foreign payments ----------------------------------------------


@pytest.mark.parametrize("early_kind", ["refund", "dispute"])
def test_an_event_before_its_purchase_is_parked_then_applied_once_when_the_purchase_lands(
    app: Any, db: Any, early_kind: str
) -> None:
    pi = se.new_id("pi")
    early = (
        refund_created("re_lee", pi)
        if early_kind == "refund"
        else se.dispute_created("dp_lee", "ch_" + pi, pi)
    )
    purchase = se.checkout_completed(se.new_id("cs_test"), "lee", "starter", pi)

    parked = deliver(app, early)
    again = deliver(app, early)
    stored = problem(db, early["id"])
    credited = outcome(app, purchase)
    redelivered = outcome(app, purchase)

    assert parked.status_code == 200 and parked.json == {
        "received": True,
        "outcome": "parked",
        "problem": "purchase_not_found",
    }
    assert again.status_code == 200 and again.json["outcome"] == "parked"
    assert stored["status"] == "open" and stored["paymentIntentId"] == pi
    assert (credited, redelivered) == ("credited", "duplicate")
    assert balance(db, "lee") == 0 and len(entries(db, "lee", "reversal")) == 1
    resolved = problem(db, early["id"])
    assert resolved["status"] == "resolved" and resolved["resolution"] == "reversed"
    assert outcome(app, early) == "duplicate"
    assert_ledger_consistent(db)


def test_a_parked_refund_still_applies_when_its_purchase_comes_after_the_stored_event_expired(
    app: Any, db: Any, settings: Any
) -> None:
    from functions.lib import retention

    pi = se.new_id("pi")
    early = refund_created("re_late_buy", pi)
    assert outcome(app, early) == "parked"
    # The night after PROBLEM_RETENTION_DAYS deletes the stored event; the purchase comes later
    # (a delayed payment method clears, or an operator replays a purchase that had failed).
    later = datetime.now(UTC) + timedelta(days=settings.problem_retention_days, seconds=5)
    assert retention.sweep(db, settings, now=later).problems_deleted == 1

    purchase = se.async_payment_succeeded(se.new_id("cs_test"), "late-buyer", "starter", pi)
    assert outcome(app, purchase) == "credited"

    assert balance(db, "late-buyer") == 0 and len(entries(db, "late-buyer", "reversal")) == 1
    record = db.collection("payments").document(pi).get().to_dict()
    assert record["parked"] == [] and record["parkedEvents"] == {}
    assert outcome(app, early) == "duplicate"
    assert_ledger_consistent(db)


def racing_get_all(monkeypatch: Any, entry_id: str, other_delivery: Any) -> None:
    """Make the other delivery commit between this one's read of the record and its read of `entry_id`."""
    from functions.lib import db as db_lib
    from functions.lib import payments

    real_get_all, raced = db_lib.get_all, []

    def get_all(client: Any, refs: list[Any]) -> list[Any]:
        if not raced and any(ref.id == entry_id for ref in refs):
            raced.append(True)
            other_delivery()
        return real_get_all(client, refs)

    monkeypatch.setattr(payments.db, "get_all", get_all)


def test_a_redelivery_racing_its_first_delivery_is_a_duplicate_not_a_stored_problem(
    app: Any, db: Any, settings: Any, monkeypatch: Any
) -> None:
    from functions.lib import payments

    pi = buy(app, "rae")
    event = refund_created("re_rae", pi)
    racing_get_all(monkeypatch, "reversal_re_rae", lambda: payments.handle_event(db, settings, event))

    out = payments.handle_event(db, settings, event)

    assert out.action == "duplicate" and balance(db, "rae") == 0
    assert not db.collection("stripe_event_problems").document(event["id"]).get().exists
    assert_ledger_consistent(db)


def test_two_purchase_deliveries_applying_one_parked_refund_at_once_leave_it_resolved(
    app: Any, db: Any, settings: Any, monkeypatch: Any
) -> None:
    from functions.lib import payments

    pi, session = se.new_id("pi"), se.new_id("cs_test")
    early = refund_created("re_pia", pi)
    assert outcome(app, early) == "parked"
    second = se.async_payment_succeeded(session, "pia", "starter", pi)
    racing_get_all(monkeypatch, "reversal_re_pia", lambda: payments.handle_event(db, settings, second))

    payments.handle_event(db, settings, se.checkout_completed(session, "pia", "starter", pi))

    assert balance(db, "pia") == 0 and len(entries(db, "pia", "reversal")) == 1
    assert (problem(db, early["id"])["status"], problem(db, early["id"])["reason"]) == (
        "resolved",
        "purchase_not_found",
    )
    assert_ledger_consistent(db)


def test_a_refund_racing_its_purchase_applies_exactly_once(app: Any, db: Any) -> None:
    flask_app = app("stripe_webhook").application

    def race(uid: str, pi: str) -> list[Any]:
        start = threading.Barrier(2)
        refund = se.delivery(refund_created(f"re_{uid}", pi), SECRET)
        purchase = se.delivery(se.checkout_completed(se.new_id("cs_test"), uid, "starter", pi), SECRET)

        def send(d: tuple[bytes, dict[str, str]]) -> Any:
            start.wait(timeout=10)
            return flask_app.test_client().post("/", data=d[0], headers=d[1])

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(send, [refund, purchase]))

    for round in range(4):
        uid = f"mo{round}"
        results = race(uid, se.new_id("pi"))

        assert [r.status_code for r in results] == [200, 200]
        assert balance(db, uid) == 0 and len(entries(db, uid, "reversal")) == 1, f"round {round}"
    assert_ledger_consistent(db)


@pytest.mark.parametrize(
    "event",
    [
        refund_created("re_foreign", "pi_foreign"),
        se.dispute_created("dp_foreign", "ch_foreign", "pi_foreign"),
    ],
)
def test_an_event_for_a_payment_this_app_never_sold_is_acknowledged_and_changes_nothing(
    app: Any, db: Any, event: dict[str, Any]
) -> None:
    make_user(db, "ned", credits=70)

    res = deliver(app, event)

    assert res.status_code == 200 and res.json["outcome"] == "parked"
    assert [e["type"] for e in entries(db, "ned")] == ["grant"] and balance(db, "ned") == 70
    assert [u.id for u in db.collection("users").stream()] == ["ned"]
    assert_ledger_consistent(db)


# --- live mode, personal data, retention ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["test", "live"])
def test_an_event_of_the_other_mode_credits_nothing_and_is_stored(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("STRIPE_MODE", mode)
    monkeypatch.setenv("STRIPE_SECRET_KEY", f"sk_{mode}_local")  # a key of another mode is refused
    reset_caches()
    session = se.checkout_session(se.new_id("cs"), "ola", "starter", payment_intent=se.new_id("pi"))
    event = se.event(
        "checkout.session.completed", {**session, "livemode": mode == "test"}, livemode=mode == "test"
    )

    res = deliver(app, event)

    assert res.status_code == 200 and res.json["problem"] == "livemode_mismatch"
    assert balance(db, "ola") == 0 and entries(db, "ola") == []
    assert problem(db, event["id"])["reason"] == "livemode_mismatch"


def test_a_stored_event_keeps_what_a_replay_needs_and_no_personal_data(app: Any, db: Any) -> None:
    from functions.lib import payments
    from functions.lib.config import get_settings

    pi = se.new_id("pi")
    charge = se.charge_refunded("ch_" + pi, pi, PAID, PAID)

    deliver(app, charge)
    stored = problem(db, charge["id"])
    buy_event = se.checkout_completed(se.new_id("cs_test"), "pia", "starter", pi)
    deliver(app, buy_event)

    assert not {"buyer@example.com", "Test Buyer", "94103", "billing_details", "4242"} & set(
        _strings(json.loads(stored["payload"]))
    )
    assert json.loads(stored["payload"])["data"]["object"]["amount_refunded"] == PAID
    assert balance(db, "pia") == 0  # the stored copy was enough to apply it
    assert payments.replay_problem(db, get_settings(), charge["id"]).action == "duplicate"


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in _strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def test_the_sweep_deletes_stored_events_after_their_retention(app: Any, db: Any, settings: Any) -> None:
    from functions.lib import retention

    old, recent = refund_created("re_old", "pi_gone"), refund_created("re_new", "pi_gone2")
    deliver(app, old)
    deliver(app, recent)
    cutoff_day = datetime.now(UTC) + timedelta(days=settings.problem_retention_days)

    report = retention.sweep(db, settings, now=cutoff_day + timedelta(seconds=5))

    assert report.problems_deleted == 2 and report.complete
    assert list(db.collection("stripe_event_problems").stream()) == []
    assert retention.sweep(db, settings).problems_deleted == 0


def test_refund_gives_credits_only_to_the_generations_own_user(db: Any, settings: Any) -> None:
    from functions.lib import generations as gens
    from functions.lib.errors import NotFound

    make_user(db, "quy", credits=100)
    make_user(db, "rex")
    charge = gens.charge(db, settings, gens.GenerationRequest("quy", "a cat"))
    assert isinstance(charge, gens.Charge)

    with pytest.raises(NotFound):
        gens.refund(db, charge.generation_id, "rex", "wrong user")

    assert balance(db, "rex") == 0 and balance(db, "quy") == 50
    assert [g["status"] for g in generations(db, "quy")] == ["charged"]


def test_refunds_and_reinstatements_land_while_the_balance_stays_below_zero(
    app: Any, db: Any, settings: Any
) -> None:
    from functions.lib import generations as gens
    from functions.lib import settlement

    pi = buy(app, "sal")
    make_user(db, "sal")
    for _ in range(2):  # two generations whose processes die: 100 credits held
        assert isinstance(gens.charge(db, settings, gens.GenerationRequest("sal", "a crash")), gens.Charge)
    taken = outcome(app, refund_created("re_sal1", pi))
    after_refund = balance(db, "sal")

    settled = settlement.settle_stale_charges(
        db, settings, now=datetime.now(UTC) + timedelta(seconds=settings.stale_charge_after_s + 1)
    )
    given_back = outcome(app, refund_failed("re_sal1", pi))

    assert taken == "reversed" and after_refund == -100
    assert settled.refunds_settled == 2 and given_back == "reinstated"
    assert [
        e["balanceAfter"] for e in sorted(entries(db, "sal", "refund"), key=lambda e: e["balanceAfter"])
    ] == [-50, 0]
    assert balance(db, "sal") == STARTER
    assert_ledger_consistent(db)


# --- older API versions, odd closings, a record that disagrees ------------------------------------


def test_older_api_versions_charge_refund_updated_gives_a_failed_refund_back(app: Any, db: Any) -> None:
    pi = buy(app, "tom")

    taken = outcome(app, charge_refunded(pi, 500))
    failed = outcome(app, se.refund_event("charge.refund.updated", "re_tom", "ch_" + pi, pi, 500, "failed"))

    assert (taken, failed) == ("reversed", "reinstated")
    assert balance(db, "tom") == STARTER
    assert_ledger_consistent(db)


def test_a_charge_refunded_that_lists_its_refunds_applies_each_by_id(app: Any, db: Any) -> None:
    pi = buy(app, "uli")
    charge = se.charge("ch_" + pi, pi, PAID, 300)
    charge["refunds"] = {
        "object": "list",
        "data": [
            se.refund("re_uli1", "ch_" + pi, pi, 300, "succeeded"),
            se.refund("re_uli2", "ch_" + pi, pi, 200, "failed"),
        ],
    }
    listed = se.event("charge.refunded", charge)

    first, again = outcome(app, listed), outcome(app, listed)
    late = outcome(app, refund_created("re_uli1", pi, 300))

    assert (first, again, late) == ("reversed", "duplicate", "duplicate")
    assert ledger_ids(db, "uli") == ["reversal_re_uli1"] and balance(db, "uli") == STARTER - 30
    assert_ledger_consistent(db)


def test_a_dispute_closed_as_prevented_gives_its_credits_back(app: Any, db: Any) -> None:
    pi = buy(app, "val")

    steps = [
        outcome(app, se.dispute_created("dp_val", "ch_" + pi, pi)),
        outcome(app, se.dispute_closed("dp_val", "ch_" + pi, pi, "prevented")),
    ]

    assert steps == ["reversed", "reinstated"] and balance(db, "val") == STARTER


def test_every_parked_announcement_is_taken_off_the_record_once_applied(app: Any, db: Any) -> None:
    pi = se.new_id("pi")
    early = [
        refund_created("re_wes", pi),
        se.refund_event("refund.updated", "re_wes", "ch_" + pi, pi, PAID, "succeeded"),
    ]
    for event in early:
        assert outcome(app, event) == "parked"

    assert outcome(app, se.checkout_completed(se.new_id("cs_test"), "wes", "starter", pi)) == "credited"

    record = db.collection("payments").document(pi).get().to_dict()
    assert record["parked"] == [] and record["reversedCredits"] == STARTER
    assert [problem(db, e["id"])["status"] for e in early] == ["resolved", "resolved"]
    assert balance(db, "wes") == 0


def test_a_ledger_entry_the_record_does_not_account_for_is_stored_for_an_operator_not_retried(
    app: Any, db: Any
) -> None:
    from functions.lib import clock, ledger

    pi = buy(app, "xia")
    purchase = entries(db, "xia", "purchase")[0]["id"]
    batch = db.batch()  # a hand edit: an entry the payment's record knows nothing of
    book = ledger.Book(db, batch, db.collection("users").document("xia").get(), clock.now())
    book.reverse("re_xia", purchase, 1, {"reason": "hand edit"})
    book.close()
    batch.commit()

    res = deliver(app, refund_created("re_xia", pi))

    assert res.status_code == 200 and res.json["problem"] == "ledger_id_taken"
    assert balance(db, "xia") == STARTER - 1
    assert db.collection("payments").document(pi).get().get("reversedCredits") == 0


def test_a_stored_event_reduced_to_its_resolved_mark_reads_as_not_stored(db: Any, settings: Any) -> None:
    from functions.lib import payments, problems
    from functions.lib.errors import NotFound

    # The sweep deleted the event between a parked event's load and its resolving commit, whose
    # merge then left only the mark: a later purchase redelivery or replay must not crash on it.
    db.collection("stripe_event_problems").document("evt_gone").set(
        {"status": "resolved", "resolution": "reversed"}
    )

    assert problems.load(db, "evt_gone") is None
    with pytest.raises(NotFound):
        payments.replay_problem(db, settings, "evt_gone")
