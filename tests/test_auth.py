"""Who may call: ID tokens, the uid they carry, and (for money) revoked sessions and disabled accounts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers import balance, bearer, make_user, reset_caches, token


@pytest.mark.parametrize("uid", ["a/b", "__x__", "..", "u" * 501])
@pytest.mark.parametrize("target", ["generate", "credits", "consent"])
def test_a_token_whose_uid_cannot_name_a_document_gets_401(app: Any, db: Any, uid: str, target: str) -> None:
    make_user(db, "victim", credits=80)
    method = "post" if target == "generate" else "get"

    res = getattr(app(target), method)(
        "/",
        json={"prompt": "x"} if method == "post" else None,
        headers={"Authorization": f"Bearer {token(uid, account=False)}"},
    )

    assert res.status_code == 401 and res.json["error"] == "unauthenticated"
    assert [d.id for d in db.collection("users").stream()] == ["victim"]


CHECKOUT = {
    "packId": "starter",
    "successUrl": "http://localhost:5173/ok",
    "cancelUrl": "http://localhost:5173/no",
}


def admin_auth() -> Any:
    """firebase-admin's auth module and the app the functions use (pointed at the Auth emulator)."""
    from firebase_admin import auth as admin

    from functions.lib import auth as auth_lib

    return admin, auth_lib._app()


def spend(app: Any, uid_token: str) -> tuple[Any, Any]:
    """One generate and one checkout with this token."""
    headers = {"Authorization": f"Bearer {uid_token}"}
    return app("generate").post("/", json={"prompt": "a fox"}, headers=headers), app("checkout").post(
        "/", json=CHECKOUT, headers=headers
    )


@pytest.fixture
def no_account_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_STATE_CACHE_S", "0")


def test_a_user_disabled_through_the_admin_api_gets_401_on_generate_and_checkout(
    app: Any, db: Any, stripe_api: Any, no_account_cache: None
) -> None:
    make_user(db, "dora", credits=200)
    uid_token = token("dora")
    before = spend(app, uid_token)
    admin, admin_app = admin_auth()

    admin.update_user("dora", disabled=True, app=admin_app)
    generated, checked_out = spend(app, uid_token)

    assert [before[0].status_code, before[1].status_code] == [200, 200]
    assert (
        generated.status_code == 401
        and generated.json["error"] == "unauthenticated"
        and "disabled" in generated.json["message"]
    )
    assert checked_out.status_code == 401 and checked_out.json["error"] == "unauthenticated"
    assert balance(db, "dora") == 150 and len(stripe_api.sessions_created) == 1


def test_a_token_issued_before_the_sessions_were_revoked_gets_401(
    app: Any, db: Any, stripe_api: Any, no_account_cache: None
) -> None:
    make_user(db, "rex", credits=200)
    old_token = token("rex", issued_at=int(time.time()) - 60)
    admin, admin_app = admin_auth()

    admin.revoke_refresh_tokens("rex", app=admin_app)
    generated, checked_out = spend(app, old_token)
    fresh = app("generate").post("/", json={"prompt": "a fox"}, headers=bearer("rex"))

    assert generated.status_code == 401 and "revoked" in generated.json["message"]
    assert checked_out.status_code == 401 and stripe_api.sessions_created == []
    assert fresh.status_code == 200 and balance(db, "rex") == 150


def test_a_deleted_account_gets_401_on_generate(app: Any, db: Any, no_account_cache: None) -> None:
    make_user(db, "gone", credits=200)
    uid_token = token("gone")
    admin, admin_app = admin_auth()

    admin.delete_user("gone", app=admin_app)
    res = app("generate").post(
        "/", json={"prompt": "a fox"}, headers={"Authorization": f"Bearer {uid_token}"}
    )

    assert res.status_code == 401 and balance(db, "gone") == 200


def test_an_unreachable_auth_service_is_503_and_charges_nothing(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_user(db, "ivy", credits=200)
    uid_token = token("ivy")
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9")
    reset_caches()

    res = app("generate").post(
        "/", json={"prompt": "a fox"}, headers={"Authorization": f"Bearer {uid_token}"}
    )

    assert res.status_code == 503 and res.json["error"] == "unavailable" and balance(db, "ivy") == 200


def test_reads_do_not_look_the_account_up(app: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    make_user(db, "rita", credits=200)
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9")
    reset_caches()

    res = app("credits").get("/", headers=bearer("rita"))

    assert res.status_code == 200 and res.json["balance"] == 200


def test_cached_account_state_lets_a_revocation_through_only_after_its_ttl(db: Any) -> None:
    from functions.lib import auth as auth_lib

    token("cache")
    now = [1000.0]
    states = auth_lib.AccountStates(auth_lib.lookup_account, clock=lambda: now[0])
    admin, admin_app = admin_auth()
    assert not states.get("cache", 30).disabled

    admin.update_user("cache", disabled=True, app=admin_app)
    now[0] += 29.9
    within_ttl = states.get("cache", 30)
    now[0] += 0.1
    after_ttl = states.get("cache", 30)

    assert not within_ttl.disabled and after_ttl.disabled
    assert states.get("cache", 0).disabled
    admin.update_user("cache", disabled=False, app=admin_app)
    states.forget("cache")
    assert not states.get("cache", 30).disabled


def test_a_lookup_under_way_when_the_account_is_forgotten_is_not_cached() -> None:
    from functions.lib import auth as auth_lib

    now = [1000.0]
    answers = [auth_lib.AccountState(exists=True), auth_lib.AccountState(exists=False)]
    calls: list[str] = []

    def lookup(uid: str) -> auth_lib.AccountState:
        calls.append(uid)
        answer = answers[len(calls) - 1]
        if len(calls) == 1:  # while this lookup is on the wire, an erasure here deletes the account
            now[0] += 0.2
            states.forget(uid)
        return answer

    states = auth_lib.AccountStates(lookup, clock=lambda: now[0])

    first = states.get("leaving", 30)
    second = states.get("leaving", 30)

    assert first.exists and not second.exists and calls == ["leaving", "leaving"]
