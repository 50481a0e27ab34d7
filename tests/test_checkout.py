"""`checkout` through functions-framework's real Flask stack, with the real stripe client talking to a
local HTTP double of the Stripe API (devstack.stripe_double)."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.stripe_double import StripeDouble
from tests.helpers import BASE_ENV, assert_ledger_consistent, bearer, reset_caches

SUCCESS = "https://app.example.com/credits?session={CHECKOUT_SESSION_ID}"
CANCEL = "http://localhost:5173/credits"


def checkout(app: Any, uid: str | None, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    hdrs = {**(bearer(uid) if uid else {}), **(headers or {})}
    return app("checkout").post("/", json=body, headers=hdrs)


def header(received: Any, name: str) -> str | None:
    return next((v for k, v in received.headers.items() if k.lower() == name.lower()), None)


def test_checkout_creates_a_payment_session_for_the_pack(app: Any, db: Any, stripe_api: StripeDouble) -> None:
    res = checkout(app, "alice", {"packId": "creator", "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert res.status_code == 200, res.json
    assert res.json["sessionId"].startswith("cs_test_") and res.json["url"].startswith(
        "https://checkout.stripe.com/"
    )
    [sent] = stripe_api.sessions_created
    assert sent.form() == {
        "mode": "payment",
        "line_items[0][price]": "price_creator_500",
        "line_items[0][quantity]": "1",
        "client_reference_id": "alice",
        "metadata[userId]": "alice",
        "metadata[packageId]": "creator",
        "payment_intent_data[metadata][userId]": "alice",
        "payment_intent_data[metadata][packageId]": "creator",
        "success_url": SUCCESS,
        "cancel_url": CANCEL,
    }
    assert header(sent, "Authorization") == f"Bearer {BASE_ENV['STRIPE_SECRET_KEY']}"
    assert (header(sent, "Idempotency-Key") or "").startswith("checkout-")
    # Creating a session moves no credits: the webhook does, once Stripe says it is paid.
    assert list(db.collection("credit_transactions").stream()) == []
    assert_ledger_consistent(db)


def test_a_client_idempotency_key_gets_the_same_session_back(
    app: Any, db: Any, stripe_api: StripeDouble
) -> None:
    body = {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL}

    first = checkout(app, "bob", body, {"Idempotency-Key": "buy-1"})
    retry = checkout(app, "bob", body, {"Idempotency-Key": "buy-1"})
    other_user = checkout(app, "carol", body, {"Idempotency-Key": "buy-1"})
    no_key = [checkout(app, "bob", body), checkout(app, "bob", body)]

    assert first.status_code == retry.status_code == 200 and first.json == retry.json
    assert other_user.json["sessionId"] != first.json["sessionId"]
    keys = [header(r, "Idempotency-Key") for r in stripe_api.sessions_created]
    assert keys[0] == keys[1] and len(set(keys)) == 4
    assert no_key[0].json["sessionId"] != no_key[1].json["sessionId"]


def test_an_idempotency_key_reused_for_another_pack_is_422(
    app: Any, db: Any, stripe_api: StripeDouble
) -> None:
    checkout(
        app,
        "dave",
        {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL},
        {"Idempotency-Key": "k"},
    )

    res = checkout(
        app,
        "dave",
        {"packId": "studio", "successUrl": SUCCESS, "cancelUrl": CANCEL},
        {"Idempotency-Key": "k"},
    )

    assert res.status_code == 422 and res.json["error"] == "idempotency_key_reused"


@pytest.mark.parametrize("pack", ["mega", "", None, 7, ["starter"]])
def test_an_unknown_pack_is_400_and_stripe_is_not_called(
    app: Any, db: Any, stripe_api: StripeDouble, pack: Any
) -> None:
    res = checkout(app, "erin", {"packId": pack, "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert res.status_code == 400 and res.json["error"] == "invalid_request" and res.json["field"] == "packId"
    assert stripe_api.received == []


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("successUrl", "https://evil.example.net/credits"),
        ("successUrl", "https://app.example.com.evil.net/"),
        ("successUrl", "https://app.example.com@evil.net/"),
        ("successUrl", "http://app.example.com/credits"),
        ("cancelUrl", "http://localhost:5174/credits"),
        ("cancelUrl", "javascript:alert(1)"),
        ("cancelUrl", "/credits"),
        ("cancelUrl", ""),
        ("cancelUrl", None),
        ("successUrl", "https://app.example.com/" + "x" * 3000),
    ],
)
def test_a_return_url_off_the_allowed_origins_is_400(
    app: Any, db: Any, stripe_api: StripeDouble, field: str, url: Any
) -> None:
    body = {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL, field: url}

    res = checkout(app, "frank", body)

    assert res.status_code == 400 and res.json["error"] == "invalid_request" and res.json["field"] == field
    assert stripe_api.received == []


def test_unknown_fields_are_400(app: Any, db: Any, stripe_api: StripeDouble) -> None:
    res = checkout(
        app, "gina", {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL, "credits": 1000000}
    )

    assert res.status_code == 400 and res.json["fields"] == ["credits"]
    assert stripe_api.received == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-jwt"}], ids=["missing", "garbage"])
def test_unauthenticated_is_401(app: Any, db: Any, stripe_api: StripeDouble, headers: dict[str, str]) -> None:
    res = app("checkout").post(
        "/", json={"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL}, headers=headers
    )

    assert res.status_code == 401 and res.json["error"] == "unauthenticated"
    assert stripe_api.received == []


@pytest.mark.parametrize("mode", ["error", "invalid"])
def test_a_stripe_error_is_a_clear_502_without_internals(
    app: Any, db: Any, stripe_api: StripeDouble, mode: str
) -> None:
    stripe_api.mode = mode

    res = checkout(
        app,
        "hank",
        {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL},
        {"Idempotency-Key": "k"},
    )

    assert (
        res.status_code == 502
        and res.json["error"] == "upstream_failed"
        and "nothing was charged" in res.json["message"]
    )
    text = res.get_data(as_text=True)
    assert (
        "sk_test" not in text
        and "price_" not in text
        and "Traceback" not in text
        and "unknown error" not in text
    )
    # The client retries 5xx answers, always with the same idempotency key, so a retry cannot buy twice.
    keys = {header(r, "Idempotency-Key") for r in stripe_api.sessions_created}
    assert len(stripe_api.sessions_created) == (3 if mode == "error" else 1) and len(keys) == 1


def test_a_return_url_stripe_refuses_is_a_400_naming_the_field(
    app: Any, db: Any, stripe_api: StripeDouble
) -> None:
    stripe_api.mode = "invalid_url"

    res = checkout(app, "hank", {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert res.status_code == 400 and res.json["error"] == "invalid_request"
    assert res.json["field"] == "successUrl" and "not a valid URL" in res.json["message"]


@pytest.mark.parametrize("bad", [" ", "\t", "\n", "\u00a0", "\x7f"])
def test_a_return_url_with_whitespace_or_control_characters_is_refused_before_stripe(
    app: Any, db: Any, stripe_api: StripeDouble, bad: str
) -> None:
    res = checkout(app, "hank", {"packId": "starter", "successUrl": SUCCESS + bad + "x", "cancelUrl": CANCEL})

    assert res.status_code == 400 and res.json["field"] == "successUrl"
    assert stripe_api.received == [] and not db.collection("checkout_limits").document("hank").get().exists


def test_without_the_stripe_key_checkout_fails_closed(
    app: Any, db: Any, stripe_api: StripeDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_SECRET_KEY")
    reset_caches()

    res = checkout(app, "ivy", {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert (
        res.status_code == 500
        and res.json["error"] == "internal"
        and "STRIPE" not in res.get_data(as_text=True)
    )
    assert stripe_api.received == []


def test_without_allowed_origins_checkout_fails_closed(
    app: Any,
    db: Any,
    stripe_api: StripeDouble,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("ALLOWED_ORIGINS", "")
    reset_caches()

    res = checkout(app, "jill", {"packId": "starter", "successUrl": SUCCESS, "cancelUrl": CANCEL})

    assert res.status_code == 500 and res.json["error"] == "internal" and "ALLOWED_ORIGINS" in caplog.text
    assert stripe_api.received == []


def test_browsers_get_cors_on_the_preflight_and_on_errors(
    app: Any, db: Any, stripe_api: StripeDouble
) -> None:
    origin = {"Origin": "https://app.example.com"}

    preflight = app("checkout").options("/", headers={**origin, "Access-Control-Request-Method": "POST"})
    error = app("checkout").post("/", json={}, headers=origin)

    assert (
        preflight.status_code == 204
        and preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    )
    assert (
        error.status_code == 401 and error.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    )


@pytest.mark.no_emulator
def test_importing_main_loads_no_stripe() -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = "import sys, main; main.generate; assert 'stripe' not in sys.modules, 'stripe imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={**BASE_ENV, "PATH": ""}
    )

    assert result.returncode == 0, result.stderr
