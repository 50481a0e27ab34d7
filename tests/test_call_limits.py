"""Limits on the reads that cost us without charging anyone: exports (per user per window, and at
once per instance, with erasure never waiting behind them), `credits` and `consent` polling; and
Firebase App Check on the browser-facing functions when APP_CHECK=enforce."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.doubles import AppCheckKeysDouble
from tests.helpers import ACCOUNTS, PROJECT, bearer, make_user, reset_caches
from tests.test_account import sign_up


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Set variables and drop the settings the fixtures already read."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_caches()


def request_lines(caplog: pytest.LogCaptureFixture, function: str) -> list[dict[str, Any]]:
    return [
        r.__dict__["json_fields"] | {"status": r.__dict__["json_fields"]["status"]}
        for r in caplog.records
        if r.name == "request" and r.getMessage().startswith(function)
    ]


def test_exports_past_the_users_window_are_429_with_retry_after(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, EXPORT_LIMIT="2")
    make_user(db, "ann", credits=100)

    answers = []
    for _ in range(3):
        answers.append(app("account").get("/", headers=bearer("ann")))
        answers[-1].get_data()  # each export read to its end before the next

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json["error"] == "rate_limited" and 1 <= int(answers[2].headers["Retry-After"]) <= 3600
    assert json.loads(answers[1].data)["rateLimits"][0]["count"] == 2  # the export shows its own window


def test_an_export_beyond_the_concurrent_limit_is_429_while_an_erasure_goes_through(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    configure(monkeypatch, EXPORT_CONCURRENCY="1")
    make_user(db, "stalled", credits=100)
    assert ACCOUNTS.emulator is not None
    ACCOUNTS.emulator.wait_ready()
    leaving = sign_up(ACCOUNTS.emulator, "leaving")

    with caplog.at_level(logging.INFO, logger="request"):
        # A client that reads the status and the first piece, then stalls: the export holds its slot.
        stalled = app("account").get("/", headers=bearer("stalled"), buffered=False)
        pieces: Iterator[bytes] = iter(stalled.response)
        first = next(pieces)
        next(pieces)  # asking for the second piece is what tells the first was written
        beyond = app("account").get("/", headers=bearer("other"))
        same_user = app("account").get("/", headers=bearer("stalled"))
        erased = app("account").delete("/", headers=leaving.bearer)
        stalled.close()  # the client goes away
        after = app("account").get("/", headers=bearer("other"))
        after_bytes = after.get_data()

    assert stalled.status_code == 200 and first
    assert (
        beyond.status_code == 429 and beyond.json["error"] == "rate_limited" and beyond.headers["Retry-After"]
    )
    assert same_user.status_code == 429
    assert erased.status_code == 200 and not db.document(f"users/{leaving.uid}").get().exists
    assert after.status_code == 200
    lines = [line for line in request_lines(caplog, "account GET") if "bytesSent" in line]
    gone = [line for line in lines if line["clientGone"]]
    assert len(gone) == 1 and gone[0]["bytesSent"] == len(first)
    finished = [line for line in lines if not line["clientGone"]]
    assert finished and finished[-1]["bytesSent"] == len(after_bytes)


@pytest.mark.parametrize(
    ("function", "variable", "method"),
    [("credits", "CREDITS_LIMIT", "get"), ("consent", "CONSENT_LIMIT", "get")],
)
def test_polling_past_the_per_minute_limit_is_429(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch, function: str, variable: str, method: str
) -> None:
    configure(monkeypatch, **{variable: "3"})
    make_user(db, "pam", credits=100)

    answers = [getattr(app(function), method)("/", headers=bearer("pam")) for _ in range(4)]
    other = getattr(app(function), method)("/", headers=bearer("quinn"))

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].json["error"] == "rate_limited" and 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert other.status_code == 200


def test_the_default_polling_limits_fit_a_client_polling_every_second() -> None:
    from functions.lib.config import settings_from

    s = settings_from({"GOOGLE_CLOUD_PROJECT": "demo-x"})

    assert s.credits_limit / s.credits_window_s >= 1 and s.consent_limit / s.consent_window_s >= 1


@pytest.fixture
def app_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppCheckKeysDouble]:
    """APP_CHECK=enforce, with firebase-admin fetching App Check's keys from a local key set."""
    from firebase_admin import app_check as firebase_app_check

    keys = AppCheckKeysDouble()
    keys.start()
    monkeypatch.setattr(firebase_app_check._AppCheckService, "_JWKS_URL", keys.url + "/v1/jwks")
    configure(monkeypatch, APP_CHECK="enforce")
    yield keys
    keys.stop()


def test_app_check_enforced_refuses_a_request_without_a_token_with_401(
    app: Any, db: Any, app_check: AppCheckKeysDouble
) -> None:
    make_user(db, "rex", credits=100)

    res = app("credits").get("/", headers=bearer("rex"))

    assert res.status_code == 401 and res.json["error"] == "app_check_required"
    assert "X-Firebase-AppCheck" in res.json["message"]


@pytest.mark.parametrize("bad", ["garbage", "wrong-project", "expired"])
def test_app_check_enforced_refuses_an_invalid_token_with_403(
    app: Any, db: Any, app_check: AppCheckKeysDouble, bad: str
) -> None:
    make_user(db, "sid", credits=100)
    token = {
        "garbage": "not.a.jwt",
        "wrong-project": app_check.token("another-project"),  # the right key, another audience
        "expired": app_check.token(PROJECT, expires_in_s=-60),
    }[bad]
    res = app("generate").post(
        "/", json={"prompt": "x"}, headers={**bearer("sid"), "X-Firebase-AppCheck": token}
    )

    assert res.status_code == 403 and res.json["error"] == "app_check_invalid"


def test_app_check_enforced_accepts_a_token_signed_by_the_published_keys(
    app: Any, db: Any, app_check: AppCheckKeysDouble
) -> None:
    make_user(db, "tia", credits=100)

    res = app("generate").post(
        "/", json={"prompt": "x"}, headers={**bearer("tia"), "X-Firebase-AppCheck": app_check.token(PROJECT)}
    )

    assert res.status_code == 200 and len(app_check.received) == 1  # the keys were fetched


def test_app_check_off_by_default_and_the_webhook_never_asks_for_it(app: Any, db: Any) -> None:
    make_user(db, "uma", credits=100)

    assert app("credits").get("/", headers=bearer("uma")).status_code == 200
