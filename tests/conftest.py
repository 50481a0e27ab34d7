"""Test harness: one real Firestore emulator per session, cleared before every test.

Environment changes go through `monkeypatch` (restored after each test); cached settings,
clients and providers are dropped around every test so each sees its own environment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.doubles import GeminiDouble
from devstack.firestore import FirestoreEmulator
from devstack.tokens import emulator_id_token

PROJECT = "demo-credits-test"
TERMS = "2026-11-01"
ROOT = Path(__file__).resolve().parent.parent
BASE_ENV = {
    "GOOGLE_CLOUD_PROJECT": PROJECT,
    # Tokens are checked offline by firebase-admin in emulator mode; nothing listens here.
    "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9",
    "GENERATOR": "offline",
    "TERMS_VERSION": TERMS,
    "STRIPE_SECRET_KEY": "sk_test_local",
    "STRIPE_WEBHOOK_SECRET": "whsec_test_local",
    "ALLOWED_ORIGINS": "http://localhost:5173,https://app.example.com",
    "GENERATION_TIMEOUT_S": "2",
}


def reset_caches() -> None:
    from functions.lib import auth, config, db, models

    config.get_settings.cache_clear()
    db.get_client.cache_clear()
    models.get_provider.cache_clear()
    auth._app.cache_clear()


@pytest.fixture(scope="session")
def emulator() -> Iterator[FirestoreEmulator]:
    log_dir = Path(tempfile.mkdtemp(prefix="credits-test-"))
    emu = FirestoreEmulator(PROJECT, log_dir=log_dir)
    saved = {k: os.environ.get(k) for k in [*BASE_ENV, "FIRESTORE_EMULATOR_HOST"]}
    os.environ.update(BASE_ENV)
    os.environ["FIRESTORE_EMULATOR_HOST"] = emu.host
    yield emu
    emu.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> Iterator[None]:
    if "no_emulator" not in request.keywords:
        request.getfixturevalue("emulator").clear()
    reset_caches()
    yield
    reset_caches()


@pytest.fixture
def db(emulator: FirestoreEmulator) -> Any:
    from functions.lib.db import get_client

    return get_client()


@pytest.fixture
def settings(emulator: FirestoreEmulator) -> Any:
    from functions.lib.config import get_settings

    return get_settings()


def token(uid: str) -> str:
    return emulator_id_token(uid, PROJECT)


def bearer(uid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(uid)}"}


@pytest.fixture
def app() -> Any:
    """`app("generate")` -> a functions-framework test client for that entry point."""
    import functions_framework

    clients: dict[str, Any] = {}

    def client(target: str) -> Any:
        if target not in clients:
            clients[target] = functions_framework.create_app(target=target, source=str(ROOT / "main.py")).test_client()
        return clients[target]

    return client


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
        assert balances.get(uid, 0) == sums.get(uid, 0), f"user {uid}: credits {balances.get(uid)} != ledger sum {sums.get(uid)}"
        assert balances.get(uid, 0) >= 0 or uid in reversed_users, f"user {uid}: {balances.get(uid)} credits without a reversal"
