"""Test harness: one real Firestore emulator and one real Firebase Auth emulator per session,
both cleared before every test. `token(uid)` creates that uid's Auth account (generate and
checkout look the account up: disabled, deleted or revoked) and returns an emulator ID token.

Each test gets its own environment: `os.environ` is restored after every test (changes should
still go through `monkeypatch`), and cached settings, clients and providers are dropped around
every test so each sees its own environment.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.auth import AuthEmulator
from devstack.doubles import GeminiDouble
from devstack.firestore import FirestoreEmulator
from devstack.stripe_double import StripeDouble
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
    from functions.lib import auth, config, db, models

    config.get_settings.cache_clear()
    db.get_client.cache_clear()
    models.get_provider.cache_clear()
    auth._app.cache_clear()
    auth.account_states.clear()
    # firebase-admin keeps named apps (and their Auth client, bound to the emulator host) globally.
    import firebase_admin

    with contextlib.suppress(ValueError):
        firebase_admin.delete_app(firebase_admin.get_app("credits-backbone"))


@pytest.fixture(scope="session")
def emulator() -> Iterator[FirestoreEmulator]:
    log_dir = Path(tempfile.mkdtemp(prefix="credits-test-"))
    # The Auth emulator's CLI boots while the Firestore emulator starts; the first token waits for it.
    auth_emu = AuthEmulator(PROJECT, log_dir=log_dir, wait=False)
    emu = FirestoreEmulator(PROJECT, log_dir=log_dir)
    ACCOUNTS.emulator = auth_emu
    saved = {k: os.environ.get(k) for k in [*BASE_ENV, "FIRESTORE_EMULATOR_HOST"]}
    os.environ.update(BASE_ENV)
    os.environ["FIRESTORE_EMULATOR_HOST"] = emu.host
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_emu.host
    yield emu
    ACCOUNTS.emulator = None
    emu.stop()
    auth_emu.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empty emulators, fresh caches, and `os.environ` restored after the test whatever changed it."""
    if "no_emulator" not in request.keywords:
        request.getfixturevalue("emulator").clear()
        ACCOUNTS.clear()
    environ = dict(os.environ)
    reset_caches()
    yield
    os.environ.clear()
    os.environ.update(environ)
    reset_caches()


@pytest.fixture
def db(emulator: FirestoreEmulator) -> Any:
    from functions.lib.db import get_client

    return get_client()


@pytest.fixture
def settings(emulator: FirestoreEmulator) -> Any:
    from functions.lib.config import get_settings

    return get_settings()


def token(uid: str, *, account: bool = True, issued_at: int | None = None) -> str:
    """An emulator ID token for `uid` (issued now, or at `issued_at`); with `account`, its Firebase Auth account exists too."""
    if account:
        ACCOUNTS.ensure(uid)
    return emulator_id_token(uid, PROJECT, issued_at=issued_at)


def bearer(uid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(uid)}"}


@pytest.fixture
def app() -> Any:
    """`app("generate")` -> a functions-framework test client for that entry point."""
    import functions_framework

    clients: dict[str, Any] = {}

    def client(target: str) -> Any:
        if target not in clients:
            clients[target] = functions_framework.create_app(
                target=target, source=str(ROOT / "main.py")
            ).test_client()
        return clients[target]

    return client


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[StripeDouble]:
    double = StripeDouble(prices={"price_starter_100": 500, "price_creator_500": 2000})
    double.start()
    yield double
    double.stop()


@pytest.fixture
def stripe_api(stripe_server: StripeDouble, monkeypatch: pytest.MonkeyPatch) -> StripeDouble:
    """The Stripe double, fresh for this test (mode ok, nothing received, no idempotency keys seen)."""
    stripe_server.mode = "ok"
    stripe_server.received.clear()
    stripe_server.forget_idempotency_keys()
    monkeypatch.setenv("STRIPE_API_BASE", stripe_server.url)
    reset_caches()
    return stripe_server


@pytest.fixture
def gemini(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiDouble]:
    double = GeminiDouble().start()
    monkeypatch.setenv("GENERATOR", "gemini")
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    monkeypatch.setenv("GEMINI_MODEL", "gemini-test")
    monkeypatch.setenv("GEMINI_BASE_URL", double.url)
    reset_caches()
    yield double
    double.stop()


def assert_ledger_consistent(db: Any) -> None:
    """The invariants: every user's credits equal the sum of their ledger amounts, and are below zero
    only for a user whose credits a reversal took back."""
    sums: dict[str, int] = {}
    reversed_users: set[str] = set()
    for entry in db.collection("credit_transactions").stream():
        data = entry.to_dict()
        sums[data["userId"]] = sums.get(data["userId"], 0) + data["amount"]
        if data["type"] == "reversal":
            reversed_users.add(data["userId"])
    balances = {u.id: (u.to_dict() or {}).get("credits", 0) for u in db.collection("users").stream()}
    for uid in set(sums) | set(balances):
        assert balances.get(uid, 0) == sums.get(uid, 0), (
            f"user {uid}: credits {balances.get(uid)} != ledger sum {sums.get(uid)}"
        )
        assert balances.get(uid, 0) >= 0 or uid in reversed_users, (
            f"user {uid}: {balances.get(uid)} credits without a reversal"
        )
