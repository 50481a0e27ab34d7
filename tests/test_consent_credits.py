"""`consent` and `credits` handlers against the emulator."""

from __future__ import annotations

from typing import Any

from tests.helpers import TERMS, bearer, make_user


def test_consent_get_before_and_after_accepting(app: Any, db: Any) -> None:
    before = app("consent").get("/", headers=bearer("ann"))
    accepted = app("consent").post("/", json={"version": TERMS}, headers=bearer("ann"))
    after = app("consent").get("/", headers=bearer("ann"))

    assert before.status_code == 200 and before.json == {
        "version": TERMS,
        "accepted": False,
        "acceptedAt": None,
    }
    assert accepted.status_code == 200 and accepted.json["accepted"] is True
    assert after.json["accepted"] is True and after.json["acceptedAt"].startswith("20")
    user = db.collection("users").document("ann").get().to_dict()
    assert user["credits"] == 0 and user["consent"]["version"] == TERMS and user["createdAt"] is not None


def test_consent_for_an_old_version_is_400_and_changes_nothing(app: Any, db: Any) -> None:
    res = app("consent").post("/", json={"version": "2019-01-01"}, headers=bearer("ann"))

    assert (
        res.status_code == 400
        and res.json["error"] == "invalid_request"
        and res.json["currentVersion"] == TERMS
    )
    assert not db.collection("users").document("ann").get().exists


def test_consent_keeps_the_balance(app: Any, db: Any) -> None:
    make_user(db, "ann", credits=70, consent=False)

    app("consent").post("/", json={"version": TERMS}, headers=bearer("ann"))

    assert db.collection("users").document("ann").get().to_dict()["credits"] == 70


def test_new_terms_version_makes_old_consent_stale(app: Any, db: Any, monkeypatch: Any) -> None:
    from tests.helpers import reset_caches

    make_user(db, "ann")
    monkeypatch.setenv("TERMS_VERSION", "2027-01-01")
    reset_caches()

    res = app("consent").get("/", headers=bearer("ann"))

    assert res.json == {"version": "2027-01-01", "accepted": False, "acceptedAt": None}


def test_consent_requires_a_token(app: Any, db: Any) -> None:
    assert app("consent").get("/").status_code == 401
    assert app("consent").post("/", json={"version": TERMS}).status_code == 401


def test_credits_lists_balance_and_latest_entries_first(app: Any, db: Any) -> None:
    from functions.lib import ledger

    for i in range(3):
        ledger.grant(db, "ben", f"g{i}", 10 * (i + 1), "test")
    ledger.grant(db, "other", "other-g0", 5, "test")

    res = app("credits").get("/", headers=bearer("ben"))

    assert res.status_code == 200
    assert res.json["balance"] == 60
    assert [t["amount"] for t in res.json["transactions"]] == [30, 20, 10]
    assert [t["balanceAfter"] for t in res.json["transactions"]] == [60, 30, 10]
    assert {t["type"] for t in res.json["transactions"]} == {"grant"}


def test_credits_caps_history_at_50(app: Any, db: Any) -> None:
    from functions.lib import ledger

    for i in range(55):
        ledger.grant(db, "cy", f"g{i}", 1, "test")

    res = app("credits").get("/", headers=bearer("cy"))

    assert res.json["balance"] == 55 and len(res.json["transactions"]) == 50


def test_credits_for_a_new_user_is_zero(app: Any, db: Any) -> None:
    res = app("credits").get("/", headers=bearer("new"))

    assert res.status_code == 200
    assert res.json == {"balance": 0, "transactions": [], "grants": [], "debt": 0, "subscription": None}
