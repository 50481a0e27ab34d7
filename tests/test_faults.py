"""Fault injection with real processes: Firestore frozen (SIGSTOP) and resumed (SIGCONT) around a
refund and around a webhook credit. No credit lost, none doubled, and the client told the truth:
a 5xx wherever it must retry, never a 2xx for something that was not written."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack import stripe_events
from devstack.doubles import GeminiDouble
from devstack.firestore import FirestoreEmulator
from devstack.procs import wait_until
from devstack.serve import ServedFunction
from tests.helpers import BASE_ENV, assert_ledger_consistent, balance, entries, generations, make_user, token

# Minutes of the suite's time (browsers, served stacks, emulator start-ups): `scripts/test --fast` skips them.
pytestmark = pytest.mark.slow


@contextmanager
def frozen(emulator: FirestoreEmulator) -> Iterator[None]:
    """Firestore stops answering (the process is stopped, its data kept) until the block ends."""
    os.kill(emulator.child.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(emulator.child.pid, signal.SIGCONT)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url + "/", data=body, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_firestore_down_during_the_refund_answers_503_and_the_sweep_refunds_once(
    emulator: FirestoreEmulator, db: Any
) -> None:
    from functions.lib.config import get_settings
    from functions.lib.retention import sweep

    make_user(db, "fred", credits=100)
    model = GeminiDouble(mode="error500", delay_s=1.5).start()
    env = {
        "GENERATOR": "gemini",
        "GEMINI_API_KEY": "k",
        "GEMINI_BASE_URL": model.url,
        "GENERATION_TIMEOUT_S": "10",
    }
    fn = ServedFunction("generate", env=env, log_dir=Path(tempfile.mkdtemp()))
    result: dict[str, Any] = {}
    try:
        worker = threading.Thread(
            target=lambda: result.update(
                res=post(fn.url, b'{"prompt": "x"}', {"Authorization": f"Bearer {token('fred')}"})
            )
        )
        worker.start()
        wait_until(
            lambda: [g["status"] for g in generations(db, "fred")] == ["charged"],
            what="the charge",
            timeout=20,
        )
        with frozen(emulator):
            worker.join(timeout=60)
    finally:
        fn.stop()
        model.stop()

    status, body = result["res"]
    assert status == 503 and body["error"] == "unavailable" and "refunded automatically" in body["message"]
    [gen] = generations(db, "fred")
    assert gen["status"] == "charged" and balance(db, "fred") == 50

    later = datetime.now(UTC) + timedelta(seconds=get_settings().stale_charge_after_s + 60)
    first, second = sweep(db, get_settings(), now=later), sweep(db, get_settings(), now=later)

    assert first.refunds_settled == 1 and second.refunds_settled == 0
    assert balance(db, "fred") == 100 and len(entries(db, "fred", "refund")) == 1
    assert_ledger_consistent(db)


def test_firestore_down_during_a_webhook_credit_answers_503_then_the_retry_credits_once(
    emulator: FirestoreEmulator, db: Any
) -> None:
    fn = ServedFunction("stripe_webhook", env={}, log_dir=Path(tempfile.mkdtemp()))
    evt = stripe_events.checkout_completed("cs_test_fault_1", "gus", "starter", "pi_fault_1")
    secret = BASE_ENV["STRIPE_WEBHOOK_SECRET"]
    try:
        with frozen(emulator):
            down = post(fn.url, *stripe_events.delivery(evt, secret))
        retried = post(fn.url, *stripe_events.delivery(evt, secret))
        again = post(fn.url, *stripe_events.delivery(evt, secret))
    finally:
        fn.stop()

    assert down[0] in (500, 503) and down[1]["error"] in ("unavailable", "busy")
    assert retried[0] == 200 and retried[1]["outcome"] == "credited"
    assert again[0] == 200 and again[1]["outcome"] == "duplicate"
    assert balance(db, "gus") == 100 and [e["id"] for e in entries(db, "gus")] == ["purchase_cs_test_fault_1"]
    assert_ledger_consistent(db)


@pytest.mark.parametrize(
    "failure",
    [
        "ServiceUnavailable",
        "DeadlineExceeded",
        "InternalServerError",
        "ResourceExhausted",
        "Aborted",
        "TransportError",
    ],
)
def test_a_backend_that_cannot_answer_now_is_a_503_with_retry_after_never_a_500(failure: str) -> None:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    from functions.edge import error_reply

    exc = getattr(gexc, failure, None) or getattr(auth_exc, failure)
    reply = error_reply(exc("the backend said no"))

    assert reply.status == 503 and reply.body["error"] == "unavailable"
    assert reply.headers["Retry-After"] == "1"
