"""A local HTTP double of the Stripe API for Checkout: `POST /v1/checkout/sessions`.

Point the real client at it with `STRIPE_API_BASE=<double.url>`. It records each request (form
body and headers, Idempotency-Key included), honours idempotency keys as Stripe does (the same
key and parameters replay the first answer; the same key with other parameters is an
`idempotency_error`), and answers a realistic open Checkout Session.

Modes: `ok`; `error` (500 `api_error`, which the client retries); `invalid` (400
`invalid_request_error`, e.g. a price that does not exist).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from devstack.doubles import Received, _Double
from devstack.stripe_events import DEFAULT_AMOUNT, checkout_session

SESSIONS_PATH = "/v1/checkout/sessions"


@dataclass
class StripeDouble(_Double):
    prices: dict[str, int] = field(default_factory=dict)  # price id -> unit amount in cents
    _replays: dict[str, tuple[bytes, tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sessions_created(self) -> list[Received]:
        """The Checkout Session create requests received, in order."""
        return [r for r in self.received if r.method == "POST" and r.path == SESSIONS_PATH]

    def forget_idempotency_keys(self) -> None:
        with self._lock:
            self._replays.clear()

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        if req.method != "POST" or req.path != SESSIONS_PATH:
            return 404, _error("invalid_request_error", f"Unrecognized request URL ({req.method}: {req.path}).")
        if self.mode == "error":
            return 500, _error("api_error", "An unknown error occurred.")
        if self.mode == "invalid":
            return 400, _error(
                "invalid_request_error", "No such price: 'price_missing'", code="resource_missing", param="line_items[0][price]"
            )
        key = next((v for k, v in req.headers.items() if k.lower() == "idempotency-key"), None)
        with self._lock:
            if key is not None and key in self._replays:
                body, reply = self._replays[key]
                if body != req.body:
                    return 400, _error(
                        "idempotency_error",
                        f"Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request.",
                    )
                return reply
            reply = 200, self._session(req.form())
            if key is not None:
                self._replays[key] = (req.body, reply)
        return reply

    def _session(self, form: dict[str, str]) -> dict[str, Any]:
        session_id = "cs_test_" + secrets.token_hex(24)
        quantity = int(form.get("line_items[0][quantity]", "1"))
        session = checkout_session(
            session_id,
            form.get("metadata[userId]"),
            form.get("metadata[packageId]"),
            status="open",
            payment_status="unpaid",
            amount_total=self.prices.get(form.get("line_items[0][price]", ""), DEFAULT_AMOUNT) * quantity,
            success_url=form.get("success_url", ""),
            cancel_url=form.get("cancel_url", ""),
            url=f"https://checkout.stripe.com/c/pay/{session_id}",
        )
        session["client_reference_id"] = form.get("client_reference_id")
        session["metadata"] = {k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")}
        session["mode"] = form.get("mode")
        return session


def _error(type: str, message: str, **extra: str) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, **extra}}
