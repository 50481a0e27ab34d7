"""Test harness: one real Firestore emulator and one real Firebase Auth emulator per session,
both cleared before every test. `token(uid)` creates that uid's Auth account (generate and
checkout look the account up: disabled, deleted or revoked) and returns an emulator ID token.

Each test gets its own environment: `os.environ` is restored after every test (changes should
still go through `monkeypatch`), and cached settings, clients and providers are dropped around
every test so each sees its own environment.
"""

from __future__ import annotations

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
from tests.helpers import ACCOUNTS, BASE_ENV, PROJECT, ROOT, reset_caches


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
