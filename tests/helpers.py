"""What tests share besides fixtures: the test environment, ID tokens, the ledger invariants, and
arrange helpers that go through the real domain code (no direct balance writes). conftest.py holds
the fixtures and imports from here, never the other way round."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from devstack.auth import AuthEmulator
from devstack.tokens import emulator_id_token

PROJECT = "demo-credits-test"
TERMS = "2026-11-01"
ROOT = Path(__file__).resolve().parent.parent
BASE_ENV = {
    "GOOGLE_CLOUD_PROJECT": PROJECT,
    # Processes started without the Auth emulator (no_emulator tests) check tokens offline only:
    # firebase-admin in emulator mode; nothing listens here. `emulator` points it at the real one.
    "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9",
    "GENERATOR": "offline",
    "TERMS_VERSION": TERMS,
    "STRIPE_SECRET_KEY": "sk_test_local",
    "STRIPE_WEBHOOK_SECRET": "whsec_test_local",
    "ALLOWED_ORIGINS": "http://localhost:5173,https://app.example.com",
    "GENERATION_TIMEOUT_S": "2",
}


class Accounts:
    """The session's Auth emulator, and the uids given an account since it was last cleared."""

    def __init__(self) -> None:
        self.emulator: AuthEmulator | None = None
        self.created: set[str] = set()

    def ensure(self, uid: str) -> None:
        if self.emulator is None or uid in self.created:
            return
        self.emulator.wait_ready()
        self.emulator.create_account(uid)
        self.created.add(uid)

    def clear(self) -> None:
        if self.emulator is not None and self.created:
            self.emulator.clear()
        self.created = set()


ACCOUNTS = Accounts()


def reset_caches() -> None:
    from functions.lib import auth, breaker, config, db, limits, models

    config.get_settings.cache_clear()
    breaker.get_breaker.cache_clear()
    limits.running_exports.cache_clear()
    db.get_client.cache_clear()
    db.rpc.cache_clear()
    models.get_provider.cache_clear()
    auth._app.cache_clear()
    auth.account_states.clear()
    # firebase-admin keeps named apps (and their Auth client, bound to the emulator host) globally.
    import firebase_admin

    with contextlib.suppress(ValueError):
        firebase_admin.delete_app(firebase_admin.get_app(auth.APP_NAME))


def token(uid: str, *, account: bool = True, issued_at: int | None = None, **claims: Any) -> str:
    """An emulator ID token for `uid` (issued now, or at `issued_at`; `claims`: email_verified,
    provider); with `account`, its Firebase Auth account exists too."""
    if account:
        ACCOUNTS.ensure(uid)
    return emulator_id_token(uid, PROJECT, issued_at=issued_at, **claims)


def bearer(uid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(uid)}"}


def assert_ledger_consistent(db: Any) -> None:
    """The invariants: every user's credits equal the sum of their ledger amounts and the sum of their
    live grants' remaining plus their debt; below zero only for a user whose credits a reversal took
    back; no live grant with nothing left, and debt never above zero."""
    sums: dict[str, int] = {}
    reversed_users: set[str] = set()
    for entry in db.collection("credit_transactions").stream():
        data = entry.to_dict()
        sums[data["userId"]] = sums.get(data["userId"], 0) + data["amount"]
        if data["type"] == "reversal":
            reversed_users.add(data["userId"])
    users = {u.id: u.to_dict() or {} for u in db.collection("users").stream()}
    for uid in set(sums) | set(users):
        data = users.get(uid, {})
        credits = data.get("credits", 0)
        assert credits == sums.get(uid, 0), f"user {uid}: credits {credits} != ledger sum {sums.get(uid)}"
        assert credits >= 0 or uid in reversed_users, f"user {uid}: {credits} credits without a reversal"
        if "grants" in data:
            grants = data["grants"]
            assert all(g["remaining"] > 0 for g in grants), f"user {uid}: a live grant with nothing left"
            assert data.get("debt", 0) <= 0, f"user {uid}: debt {data.get('debt')} above zero"
            held = sum(g["remaining"] for g in grants) + data.get("debt", 0)
            assert credits == held, f"user {uid}: credits {credits} != grants {held} (with debt)"


def make_user(db: Any, uid: str, *, credits: int = 0, consent: bool = True) -> None:
    from functions.lib import ledger, terms

    if consent:
        terms.accept(db, uid, TERMS, TERMS)
    if credits:
        ledger.grant(db, uid, f"seed-{uid}", credits, "test seed")


def balance(db: Any, uid: str) -> int:
    snap = db.collection("users").document(uid).get()
    return int((snap.to_dict() or {}).get("credits", 0)) if snap.exists else 0


def entries(db: Any, uid: str, type: str | None = None) -> list[dict[str, Any]]:
    docs = [
        d.to_dict() | {"id": d.id}
        for d in db.collection("credit_transactions").where(filter=FieldFilter("userId", "==", uid)).stream()
    ]
    return [d for d in docs if type is None or d["type"] == type]


def generations(db: Any, uid: str) -> list[dict[str, Any]]:
    return [
        d.to_dict() | {"id": d.id}
        for d in db.collection("generations").where(filter=FieldFilter("userId", "==", uid)).stream()
    ]


# Where a user's documents name them (erasure and export tests).
USER_FIELDS = {
    "credit_transactions": "userId",
    "generations": "userId",
    "analytics_events": "userId",
    "stripe_event_problems": "userId",
    "payments": "userId",
    "projects": "ownerId",
    "rate_limits": "userId",
}


def owned(db: Any, uid: str) -> dict[str, list[str]]:
    """Every document naming `uid`, by collection."""
    return {
        name: sorted(d.id for d in db.collection(name).where(filter=FieldFilter(field, "==", uid)).stream())
        for name, field in USER_FIELDS.items()
    }
