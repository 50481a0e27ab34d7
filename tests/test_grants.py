"""Credits as grants, against the real emulators: every credit arrives as a grant, charges draw in
spend order, refunds give draws back, expiry is enforced at spend time and written off once by
whoever comes first, reversals fall into debt that the next grant repays."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack import stripe_events as se
from tests.helpers import (
    TERMS,
    assert_ledger_consistent,
    balance,
    bearer,
    entries,
    generations,
    make_user,
    token,
)

T0 = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def at() -> Iterator[Any]:
    """The domain clock, frozen at T0; `at(t)` moves it."""
    from functions.lib import clock

    with clock.frozen(T0):
        yield clock.set_to


def user_doc(db: Any, uid: str) -> dict[str, Any]:
    return db.collection("users").document(uid).get().to_dict() or {}


def live(db: Any, uid: str) -> dict[str, int]:
    """{grantId: remaining} of the user's live grants."""
    return {g["id"]: g["remaining"] for g in user_doc(db, uid).get("grants", [])}


def grant(db: Any, uid: str, gid: str, amount: int, **terms: Any) -> str:
    from functions.lib import ledger

    ledger.grant(db, uid, gid, amount, "test", **terms)
    return f"grant_{gid}"


def generate(db: Any, settings: Any, uid: str, *, fails: bool = False) -> Any:
    from functions.lib import generations as gens
    from functions.lib.breaker import CircuitBreaker
    from functions.lib.errors import GenerationFailed
    from functions.lib.models import ModelError, OfflineProvider

    class Failing:
        def generate(self, prompt: str) -> str:
            raise ModelError("model_unavailable")

    req = gens.GenerationRequest(uid, "a prompt")
    try:
        provider = Failing() if fails else OfflineProvider()
        return gens.generate(db, settings, provider, req, CircuitBreaker(10**6, 1, 1))
    except GenerationFailed as failed:
        return failed


def deliver(db: Any, settings: Any, event: dict[str, Any]) -> Any:
    from functions.lib import payments

    return payments.handle_event(db, settings, event)


# 1. Every credit is a grant -------------------------------------------------------------------------


def test_a_purchase_arrives_as_a_paid_grant_named_after_its_entry(db: Any, settings: Any, at: Any) -> None:
    make_user(db, "pam")
    deliver(db, settings, se.checkout_completed("cs_g1", "pam", "starter", "pi_g1"))

    [g] = user_doc(db, "pam")["grants"]
    assert g["id"] == "purchase_cs_g1" and g["amount"] == g["remaining"] == 100
    assert g["category"] == "paid" and g["priority"] == 50 and g["expiresAt"] is None
    assert g["source"] == "pack:starter" and g["createdAt"] == T0
    [entry] = entries(db, "pam", "purchase")
    assert entry["grantId"] == "purchase_cs_g1" and entry["grant"]["category"] == "paid"
    assert_ledger_consistent(db)


def test_a_pack_with_expires_in_days_grants_credits_that_expire(
    db: Any, settings: Any, at: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.lib.config import get_settings

    monkeypatch.setenv("CREDIT_PACKS", '{"trial": {"credits": 40, "price": "price_t", "expiresInDays": 7}}')
    get_settings.cache_clear()
    deliver(db, get_settings(), se.checkout_completed("cs_g2", "pia", "trial", "pi_g2"))

    [g] = user_doc(db, "pia")["grants"]
    assert g["expiresAt"] == T0 + timedelta(days=7)
    assert user_doc(db, "pia")["nextExpiryAt"] == T0 + timedelta(days=7)


# 2. Spend order ------------------------------------------------------------------------------------


def test_charges_draw_by_priority_then_soonest_expiry_then_promotional_then_oldest(
    db: Any, settings: Any, at: Any
) -> None:
    make_user(db, "sol")
    never = grant(db, "sol", "never", 30, category="promotional")
    late = grant(db, "sol", "late", 30, category="paid", expires_in_days=20)
    soon = grant(db, "sol", "soon", 30, category="paid", expires_in_days=5)
    first = grant(db, "sol", "first", 10, category="paid", priority=10)

    done = generate(db, settings, "sol")  # 50: first (priority 10), then the soonest expiry

    assert done.credits_charged == 50
    assert live(db, "sol") == {late: 20, never: 30}
    [gen] = generations(db, "sol")
    assert gen["draws"] == {first: 10, soon: 30, late: 10}
    [charge] = entries(db, "sol", "charge")
    assert charge["metadata"]["draws"] == {first: 10, soon: 30, late: 10}


def test_equal_priority_and_expiry_spend_promotional_before_paid(db: Any, settings: Any, at: Any) -> None:
    make_user(db, "eve")
    paid = grant(db, "eve", "paid", 40, category="paid", expires_in_days=3)
    promo = grant(db, "eve", "promo", 40, category="promotional", expires_in_days=3)

    generate(db, settings, "eve")

    assert live(db, "eve") == {paid: 30}
    [charge] = entries(db, "eve", "charge")
    assert charge["metadata"]["draws"] == {promo: 40, paid: 10}


# 3. Refunds give draws back --------------------------------------------------------------------------


def test_a_failed_generation_gives_each_draw_back_to_its_grant(db: Any, settings: Any, at: Any) -> None:
    make_user(db, "ray")
    a = grant(db, "ray", "a", 20, category="promotional")
    b = grant(db, "ray", "b", 100, category="paid")

    failed = generate(db, settings, "ray", fails=True)

    assert failed.details["refunded"] == 50
    assert live(db, "ray") == {a: 20, b: 100}
    [refund] = entries(db, "ray", "refund")
    assert refund["metadata"]["draws"] == {a: 20, b: 30}
    assert_ledger_consistent(db)


def test_a_refund_to_a_grant_that_expired_while_the_model_ran_is_written_off(
    db: Any, settings: Any, at: Any
) -> None:
    from functions.lib import generations as gens

    make_user(db, "kai")
    short = grant(db, "kai", "short", 50, expires_in_days=1)
    keep = grant(db, "kai", "keep", 10)
    charged = gens.charge(db, settings, gens.GenerationRequest("kai", "p"))
    at(T0 + timedelta(days=1))  # the grant expires while the model runs

    settled = gens.refund(db, charged.generation_id, "kai", "model_unavailable")

    assert settled.applied and settled.balance == 10 and balance(db, "kai") == 10
    assert live(db, "kai") == {keep: 10}
    [off] = entries(db, "kai", "expiry")
    assert off["id"] == f"expiry_{short}_refund_{charged.generation_id}" and off["amount"] == -50
    assert_ledger_consistent(db)


def test_a_refund_to_an_exhausted_grant_restores_it_with_its_terms(db: Any, settings: Any, at: Any) -> None:
    make_user(db, "liv")
    only = grant(db, "liv", "only", 50, category="paid", priority=20, expires_in_days=9)

    generate(db, settings, "liv", fails=True)

    [g] = user_doc(db, "liv")["grants"]
    assert g["id"] == only and g["remaining"] == 50 and g["priority"] == 20
    assert g["expiresAt"] == T0 + timedelta(days=9) and g["category"] == "paid"


# 4. Expiry at spend time, written off once by whoever comes first ------------------------------------------


def test_a_charge_at_the_second_a_grant_expires_cannot_spend_it_and_writes_it_off(
    db: Any, settings: Any, at: Any
) -> None:
    make_user(db, "sec")
    dying = grant(db, "sec", "dying", 60, expires_in_days=1)
    at(T0 + timedelta(days=1) - timedelta(seconds=1))
    assert generate(db, settings, "sec").credits_charged == 50  # one second before: spendable
    grant(db, "sec", "more", 100, expires_in_days=1)
    at(T0 + timedelta(days=1))  # the second it expires

    generate(db, settings, "sec")

    assert dying not in live(db, "sec") and balance(db, "sec") == 50
    [off] = entries(db, "sec", "expiry")
    assert off["id"] == f"expiry_{dying}" and off["amount"] == -10
    [_, second] = sorted(generations(db, "sec"), key=lambda g: g["createdAt"])
    assert second["draws"] == {"grant_more": 50}
    assert_ledger_consistent(db)


def test_a_short_balance_after_expiry_is_402_with_the_spendable_balance(app: Any, db: Any, at: Any) -> None:
    make_user(db, "tia")
    grant(db, "tia", "old", 80, expires_in_days=1)
    grant(db, "tia", "small", 20)
    at(T0 + timedelta(days=2))

    res = app("generate").post("/", json={"prompt": "x"}, headers=bearer("tia"))

    assert res.status_code == 402
    assert res.json["balance"] == 20 and res.json["required"] == 50 and res.json["shortfall"] == 30


def test_credits_writes_off_expired_grants_before_it_answers(app: Any, db: Any, at: Any) -> None:
    make_user(db, "cal")
    grant(db, "cal", "gone", 30, expires_in_days=1)
    keep = grant(db, "cal", "keep", 5, category="paid")
    at(T0 + timedelta(days=3))

    body = app("credits").get("/", headers=bearer("cal")).json

    assert body["balance"] == 5 and body["debt"] == 0 and body["subscription"] is None
    assert [(g["id"], g["remaining"], g["category"]) for g in body["grants"]] == [(keep, 5, "paid")]
    assert body["transactions"][0]["type"] == "expiry" and body["transactions"][0]["amount"] == -30
    assert body["transactions"][0]["balanceAfter"] == 5


def test_the_settlement_job_finds_users_by_next_expiry_and_writes_each_grant_off_once(
    db: Any, settings: Any, at: Any
) -> None:
    from functions.lib import settlement

    for uid in ("u1", "u2", "u3"):
        make_user(db, uid)
    grant(db, "u1", "a", 10, expires_in_days=1)
    grant(db, "u2", "b", 20, expires_in_days=2)
    grant(db, "u3", "c", 30, expires_in_days=9)
    at(T0 + timedelta(days=3))

    first = settlement.settle_stale_charges(db, settings)
    again = settlement.settle_stale_charges(db, settings)

    assert first.credits_expired == 30 and again.credits_expired == 0
    assert [balance(db, u) for u in ("u1", "u2", "u3")] == [0, 0, 30]
    assert len(entries(db, "u1", "expiry")) == len(entries(db, "u2", "expiry")) == 1
    assert user_doc(db, "u1")["nextExpiryAt"] is None
    assert_ledger_consistent(db)


def test_a_settlement_pass_that_finds_an_expiry_past_the_grace_logs_it_for_the_alert(
    db: Any, settings: Any, at: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The alert "expired grants overdue" counts this line: earlier passes missed these write-offs."""
    import logging

    from functions.lib import settlement

    for uid in ("late", "just", "later"):
        make_user(db, uid)
    grant(db, "late", "a", 10, expires_in_days=1)  # 2 h past its expiry when the pass runs
    grant(db, "later", "c", 10, expires_in_days=1)
    grant(db, "just", "b", 10, expires_in_days=(1 + 115 / 1440))  # 5 min past
    at(T0 + timedelta(days=1, hours=2))

    with caplog.at_level(logging.WARNING, logger="settlement"):
        first = settlement.settle_stale_charges(db, settings)
        lines = [r for r in caplog.records if r.getMessage() == "expired grants overdue"]
        caplog.clear()
        again = settlement.settle_stale_charges(db, settings)

    assert first.credits_expired == 30 and again.credits_expired == 0
    [line] = lines
    assert line.json_fields == {"usersOverdue": 2, "oldestOverdueS": 2 * 3600}  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.getMessage() == "expired grants overdue"]


def test_the_sweep_and_the_operator_settle_write_off_expired_grants(
    db: Any, settings: Any, at: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.admin.cli import main
    from functions.lib.retention import sweep

    make_user(db, "sw")
    make_user(db, "op")
    grant(db, "sw", "s", 10, expires_in_days=1)
    at(T0 + timedelta(days=2))
    sweep(db, settings)
    assert balance(db, "sw") == 0 and len(entries(db, "sw", "expiry")) == 1

    grant(db, "op", "o", 15, expires_in_days=1)
    at(T0 + timedelta(days=4))
    assert main(["settle"]) == 0
    assert balance(db, "op") == 0 and "wrote off 15 expired credits of user op" in capsys.readouterr().out


# 5. Reversals, debt, reinstatements ------------------------------------------------------------------


def test_a_pack_refund_after_its_credits_were_spent_becomes_debt_that_the_next_purchase_repays(
    db: Any, settings: Any, at: Any
) -> None:
    make_user(db, "deb")
    deliver(db, settings, se.checkout_completed("cs_d1", "deb", "starter", "pi_d1"))
    generate(db, settings, "deb")  # 50 of the pack's 100 spent
    generate(db, settings, "deb")  # all spent

    deliver(db, settings, se.refund_event("refund.created", "re_d1", "ch_d1", "pi_d1", se.DEFAULT_AMOUNT))

    doc = user_doc(db, "deb")
    assert doc["credits"] == -100 and doc["debt"] == -100 and doc["grants"] == []
    [rev] = entries(db, "deb", "reversal")
    assert rev["grantId"] == "purchase_cs_d1" and rev["metadata"]["toDebt"] == 100

    deliver(db, settings, se.checkout_completed("cs_d2", "deb", "creator", "pi_d2"))

    doc = user_doc(db, "deb")
    assert doc["credits"] == 400 and doc["debt"] == 0
    assert live(db, "deb") == {"purchase_cs_d2": 400}
    [second] = [e for e in entries(db, "deb", "purchase") if e["id"] == "purchase_cs_d2"]
    assert second["amount"] == 500 and second["metadata"]["repaidDebt"] == 100
    assert_ledger_consistent(db)


def test_a_partial_refund_takes_from_its_own_grant_first(db: Any, settings: Any, at: Any) -> None:
    make_user(db, "par")
    promo = grant(db, "par", "promo", 30, category="promotional")
    deliver(db, settings, se.checkout_completed("cs_p1", "par", "starter", "pi_p1"))
    generate(db, settings, "par")  # 30 promo + 20 of the pack

    deliver(
        db, settings, se.refund_event("refund.created", "re_p1", "ch_p1", "pi_p1", se.DEFAULT_AMOUNT // 2)
    )

    # 50 credits back: the pack holds 80, so all 50 come from it and nothing becomes debt.
    assert live(db, "par") == {"purchase_cs_p1": 30} and user_doc(db, "par")["debt"] == 0
    assert promo not in live(db, "par")


def test_a_won_dispute_repays_debt_first_then_refills_its_grant(db: Any, settings: Any, at: Any) -> None:
    make_user(db, "dis")
    deliver(db, settings, se.checkout_completed("cs_w1", "dis", "starter", "pi_w1"))
    generate(db, settings, "dis")  # pack holds 50
    deliver(db, settings, se.dispute_created("dp_w1", "ch_w1", "pi_w1"))
    assert user_doc(db, "dis")["debt"] == -50 and balance(db, "dis") == -50

    deliver(db, settings, se.dispute_closed("dp_w1", "ch_w1", "pi_w1", "won"))

    doc = user_doc(db, "dis")
    assert doc["debt"] == 0 and doc["credits"] == 50 and live(db, "dis") == {"purchase_cs_w1": 50}
    [back] = entries(db, "dis", "reinstatement")
    assert back["metadata"]["repaidDebt"] == 50
    assert_ledger_consistent(db)


def test_a_reinstatement_to_an_expired_grant_is_written_off_at_once(
    db: Any, settings: Any, at: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.lib.config import get_settings

    monkeypatch.setenv("CREDIT_PACKS", '{"trial": {"credits": 40, "price": "price_t", "expiresInDays": 1}}')
    get_settings.cache_clear()
    short = get_settings()
    make_user(db, "exp")
    deliver(db, short, se.checkout_completed("cs_e1", "exp", "trial", "pi_e1"))
    deliver(db, short, se.dispute_created("dp_e1", "ch_e1", "pi_e1"))
    at(T0 + timedelta(days=2))

    deliver(db, short, se.dispute_closed("dp_e1", "ch_e1", "pi_e1", "won"))

    assert balance(db, "exp") == 0 and live(db, "exp") == {}
    ids = {e["id"] for e in entries(db, "exp", "expiry")}
    assert ids == {"expiry_purchase_cs_e1_reinstatement_dp_e1"}
    assert_ledger_consistent(db)


# 6. Operator grants, voids, sign-up credits -----------------------------------------------------------------


def test_a_void_writes_a_grant_off_once_and_later_refunds_to_it_too(db: Any, settings: Any, at: Any) -> None:
    from functions.lib import generations as gens
    from functions.lib import ledger

    make_user(db, "vo")
    gid = grant(db, "vo", "promo", 60)
    charged = gens.charge(db, settings, gens.GenerationRequest("vo", "p"))

    first = ledger.void(db, "vo", gid, "abuse")
    again = ledger.void(db, "vo", gid, "abuse")
    gens.refund(db, charged.generation_id, "vo", "model_unavailable")

    assert first.applied and first.amount == -10 and not again.applied
    assert balance(db, "vo") == 0 and live(db, "vo") == {}
    assert {e["id"] for e in entries(db, "vo", "expiry")} == {f"expiry_{gid}_refund_{charged.generation_id}"}
    assert_ledger_consistent(db)


def test_voiding_a_grant_the_user_never_had_is_not_found(db: Any) -> None:
    from functions.lib import ledger
    from functions.lib.errors import NotFound

    make_user(db, "nv")
    grant(db, "other", "theirs", 5)

    for gid in ("grant_nothing", "grant_theirs"):
        with pytest.raises(NotFound):
            ledger.void(db, "nv", gid, "x")
    assert entries(db, "nv") == []


@pytest.mark.parametrize(
    ("amount", "terms", "says"),
    [
        (-5, {}, "positive"),
        (5, {"category": "gift"}, "category"),
        (5, {"priority": 101}, "priority"),
        (5, {"priority": -1}, "priority"),
        (5, {"expires_in_days": -1}, "future"),
        (5, {"expires_in_days": 0}, "future"),
    ],
)
def test_a_bad_grant_is_refused_naming_what_is_wrong_and_writes_nothing(
    db: Any, amount: int, terms: dict[str, Any], says: str
) -> None:
    from functions.lib import ledger
    from functions.lib.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as err:
        ledger.grant(db, "bad", "g1", amount, "x", **terms)
    assert says in err.value.message
    assert list(db.collection("credit_transactions").stream()) == [] and not user_doc(db, "bad")


def test_the_operator_grants_with_terms_and_voids(
    db: Any, at: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.admin.cli import main

    token("opr")
    argv = ["grant", "opr", "70", "--id", "t9", "--reason", "x", "--category", "paid"]
    assert main([*argv, "--expires-in-days", "10", "--priority", "5"]) == 0
    [g] = user_doc(db, "opr")["grants"]
    assert (g["category"], g["priority"], g["expiresAt"]) == ("paid", 5, T0 + timedelta(days=10))

    assert main(["void", "opr", "grant_t9", "--reason", "mistake"]) == 0
    assert main(["void", "opr", "grant_t9", "--reason", "mistake"]) == 0
    out = capsys.readouterr().out
    assert "wrote off 70 credits" in out and "already voided" in out and balance(db, "opr") == 0


@pytest.mark.parametrize(
    ("claims", "granted"),
    [
        ({"email_verified": True}, True),
        ({"provider": "google.com"}, True),
        ({}, False),  # password, email not verified
        ({"provider": "anonymous", "email_verified": True}, False),
    ],
)
def test_sign_up_credits_go_once_to_a_verified_account_on_first_consent(
    app: Any, db: Any, at: Any, monkeypatch: pytest.MonkeyPatch, claims: dict[str, Any], granted: bool
) -> None:
    from tests.helpers import reset_caches

    monkeypatch.setenv("SIGNUP_CREDITS", "25")
    monkeypatch.setenv("SIGNUP_CREDITS_EXPIRE_DAYS", "14")
    reset_caches()
    headers = {"Authorization": f"Bearer {token('newbie', **claims)}"}

    for _ in range(2):
        assert app("consent").post("/", json={"version": TERMS}, headers=headers).status_code == 200

    grants = user_doc(db, "newbie")["grants"]
    if granted:
        [g] = grants
        assert g["id"] == "grant_signup_newbie" and g["remaining"] == 25 and g["category"] == "promotional"
        assert g["expiresAt"] == T0 + timedelta(days=14) and len(entries(db, "newbie", "grant")) == 1
    else:
        assert grants == [] and entries(db, "newbie") == []


# 7. Bounds and legacy balances -----------------------------------------------------------------------


def test_past_the_live_grant_bound_a_new_grant_is_folded_and_no_credit_is_lost(
    db: Any, settings: Any, at: Any
) -> None:
    from functions.lib import ledger, wallet

    make_user(db, "many")
    for i in range(wallet.MAX_LIVE_GRANTS):
        ledger.grant(db, "many", f"g{i:03d}", 1, "x", expires_in_days=10 + i)

    ledger.grant(db, "many", "extra", 7, "x", expires_in_days=500)

    doc = user_doc(db, "many")
    assert len(doc["grants"]) == wallet.MAX_LIVE_GRANTS and doc["credits"] == wallet.MAX_LIVE_GRANTS + 7
    last = max(doc["grants"], key=lambda g: g["expiresAt"])
    assert last["remaining"] == 8 and last["expiresAt"] == T0 + timedelta(days=500)
    [extra] = [e for e in entries(db, "many", "grant") if e["id"] == "grant_extra"]
    assert extra["metadata"]["foldedInto"] == last["id"]
    assert_ledger_consistent(db)


def test_a_balance_from_before_grants_becomes_one_legacy_grant_on_first_touch_with_no_money_moved(
    db: Any, settings: Any, at: Any
) -> None:
    from functions.lib.audit import audit

    db.collection("users").document("old").set(
        {"credits": 120, "consent": {"version": TERMS, "acceptedAt": T0}, "createdAt": T0}
    )
    db.collection("credit_transactions").document("purchase_cs_old").set(
        {"userId": "old", "type": "purchase", "amount": 120, "balanceAfter": 120, "createdAt": T0}
    )
    assert audit(db).clean

    generate(db, settings, "old")

    assert live(db, "old") == {"legacy_old": 70} and user_doc(db, "old")["debt"] == 0
    assert sorted(e["type"] for e in entries(db, "old")) == ["charge", "purchase"]
    assert audit(db).clean


# 8. The audit, the export and erasure -----------------------------------------------------------------------


def test_the_audit_reports_an_expiry_left_overdue(db: Any, at: Any) -> None:
    from functions.lib.audit import EXPIRY_OVERDUE, audit

    make_user(db, "late")
    grant(db, "late", "x", 10, expires_in_days=1)
    # Nothing wrote it off (no settlement ran): overdue once past the grace, by the database's clock.
    [g] = user_doc(db, "late")["grants"]
    overdue = datetime.now(UTC) - timedelta(hours=1)
    db.collection("users").document("late").update({"grants": [{**g, "expiresAt": overdue}]})

    report = audit(db)

    assert [d.problem for d in report.differences] == [EXPIRY_OVERDUE]


def test_the_export_carries_grants_and_erasure_writes_them_all_off(app: Any, db: Any, at: Any) -> None:
    import json

    make_user(db, "gone")
    gid = grant(db, "gone", "p", 40, expires_in_days=3)
    headers = bearer("gone")

    exported = json.loads(app("account").get("/", headers=headers).get_data())
    assert [(g["id"], g["remaining"]) for g in exported["grants"]] == [(gid, 40)] and exported["debt"] == 0

    res = app("account").delete("/", headers=headers)
    assert res.status_code == 200
    [forfeit] = [e for e in db.collection("credit_transactions").stream() if e.get("type") == "forfeit"]
    assert forfeit.get("amount") == -40
    assert_ledger_consistent(db)
