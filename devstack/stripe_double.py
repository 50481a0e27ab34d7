"""A local HTTP double of the Stripe API for Checkout: `POST /v1/checkout/sessions` (payment and
subscription mode) and `POST /v1/billing_portal/sessions`; `GET /v1/prices/{id}` (from `prices`, with
`intervals` making a price recurring); `GET` and `DELETE /v1/subscriptions/{id}` (from
`subscriptions`, id -> status: DELETE cancels, and answers 404 `resource_missing` for one already
canceled or unknown, as Stripe does).

Point the real client at it with `STRIPE_API_BASE=<double.url>`. It records each request (form
body and headers, Idempotency-Key included), honours idempotency keys as Stripe does (the same
key and parameters replay the first answer; the same key with other parameters is an
`idempotency_error`), and answers a realistic open Checkout Session.

Modes: `ok`; `error` (500 `api_error`, which the client retries); `invalid` (400
`invalid_request_error`, e.g. a price that does not exist); `invalid_url` (400
`invalid_request_error` on `success_url`, as Stripe refuses a URL it cannot use).

With `hosted=True` (the local run and the browser test) a session's `url` is a minimal hosted
checkout page on the double itself, `GET /c/pay/<session id>`; its "Pay" button posts back, and the
double then delivers the signed `checkout.session.completed` to `webhook_url` with
`webhook_secret`, as Stripe would, and redirects the buyer to the session's success URL. Local
only: nothing here is deployed.
"""

from __future__ import annotations

import html
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from devstack import stripe_events
from devstack.doubles import Received, _Double
from devstack.stripe_events import DEFAULT_AMOUNT, checkout_session

SESSIONS_PATH = "/v1/checkout/sessions"
PORTAL_PATH = "/v1/billing_portal/sessions"
PAY_PATH = "/c/pay/"
PORTAL_PAGE_PATH = "/p/session/"
PRICES_PATH = "/v1/prices/"
SUBSCRIPTIONS_PATH = "/v1/subscriptions/"


@dataclass
class StripeDouble(_Double):
    prices: dict[str, int] = field(default_factory=dict)  # price id -> unit amount in cents
    intervals: dict[str, str] = field(default_factory=dict)  # price id -> interval of a recurring price
    currency: str = "usd"
    subscriptions: dict[str, str] = field(default_factory=dict)  # subscription id -> status
    hosted: bool = False
    webhook_url: str | None = None
    webhook_secret: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # created sessions by id
    portal_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # portal sessions by id
    _replays: dict[str, tuple[bytes, tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sessions_created(self) -> list[Received]:
        """The Checkout Session create requests received, in order."""
        return [r for r in self.received if r.method == "POST" and r.path == SESSIONS_PATH]

    def forget_idempotency_keys(self) -> None:
        with self._lock:
            self._replays.clear()

    @property
    def portal_sessions_created(self) -> list[Received]:
        """The billing portal session create requests received, in order."""
        return [r for r in self.received if r.method == "POST" and r.path == PORTAL_PATH]

    @property
    def subscriptions_canceled(self) -> list[str]:
        """The subscription ids of the cancel requests received, in order."""
        return [
            r.path[len(SUBSCRIPTIONS_PATH) :].split("?")[0]
            for r in self.received
            if r.method == "DELETE" and r.path.startswith(SUBSCRIPTIONS_PATH)
        ]

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        if req.path.startswith((PRICES_PATH, SUBSCRIPTIONS_PATH)):
            return self._resource(req)
        if req.method == "POST" and req.path == PORTAL_PATH and self.mode == "ok":
            return 200, self._portal_session(req.form())
        if req.method != "POST" or req.path not in (SESSIONS_PATH, PORTAL_PATH):
            return 404, _error(
                "invalid_request_error", f"Unrecognized request URL ({req.method}: {req.path})."
            )
        if self.mode == "error":
            return 500, _error("api_error", "An unknown error occurred.")
        if self.mode == "invalid":
            return 400, _error(
                "invalid_request_error",
                "No such price: 'price_missing'",
                code="resource_missing",
                param="line_items[0][price]",
            )
        if self.mode == "invalid_url":
            return 400, _error(
                "invalid_request_error", "Not a valid URL", code="url_invalid", param="success_url"
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

    def respond(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        if not (self.hosted and req.path.startswith(PAY_PATH)):
            return super().respond(req)
        session = self.sessions.get(req.path[len(PAY_PATH) :].split("?")[0])
        if session is None:
            return _page(404, "No such checkout session", "<p>This checkout link is not valid.</p>")
        if req.method == "GET":
            return _page(200, "Complete your purchase", _pay_form(session))
        if req.method != "POST":
            return _page(405, "Method not allowed", "")
        if session["status"] == "open":
            failed = self._deliver_completed(session)
            if failed:
                return _page(502, "Webhook failed", f"<p>stripe_webhook answered {html.escape(failed)}.</p>")
        target = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
        return 303, {"Location": target, "Content-Type": "text/plain"}, b""

    def _deliver_completed(self, session: dict[str, Any]) -> str | None:
        """Mark the session paid and POST its signed `checkout.session.completed`; the failure, if any."""
        if not self.webhook_url:
            return "nothing: the double has no webhook_url"
        paid = {
            **session,
            "status": "complete",
            "payment_status": "paid",
            "payment_intent": stripe_events.new_id("pi"),
        }
        body, headers = stripe_events.delivery(
            stripe_events.event("checkout.session.completed", paid), self.webhook_secret
        )
        try:
            with urllib.request.urlopen(
                urllib.request.Request(self.webhook_url, data=body, headers=headers), timeout=30
            ):
                pass
        except urllib.error.HTTPError as exc:
            return f"{exc.code} {exc.read()[:300].decode(errors='replace')}"
        except OSError as exc:
            return f"nothing ({exc})"
        self.sessions[session["id"]] = paid
        return None

    def _resource(self, req: Received) -> tuple[int, dict[str, Any]]:
        """A price or subscription: GET answers it, DELETE cancels a subscription. Mode `error` is a
        500 for each (the client retries it, then gives up)."""
        if self.mode == "error":
            return 500, _error("api_error", "An unknown error occurred.")
        kind = "price" if req.path.startswith(PRICES_PATH) else "subscription"
        ident = req.path.split("/")[3].split("?")[0]
        missing = (
            404,
            _error(
                "invalid_request_error", f"No such {kind}: '{ident}'", code="resource_missing", param="id"
            ),
        )
        if kind == "price":
            if req.method != "GET" or ident not in self.prices:
                return missing
            interval = self.intervals.get(ident)
            return 200, {
                "id": ident,
                "object": "price",
                "active": True,
                "billing_scheme": "per_unit",
                "currency": self.currency,
                "livemode": False,
                "recurring": {"interval": interval, "interval_count": 1, "usage_type": "licensed"}
                if interval
                else None,
                "type": "recurring" if interval else "one_time",
                "unit_amount": self.prices[ident],
            }
        status = self.subscriptions.get(ident)
        if status is None or req.method not in ("GET", "DELETE"):
            return missing
        if req.method == "DELETE":
            if status == "canceled":
                return missing  # Stripe treats a canceled subscription as gone for a second cancel
            with self._lock:
                self.subscriptions[ident] = status = "canceled"
        return 200, {"id": ident, "object": "subscription", "status": status, "livemode": False}

    def _portal_session(self, form: dict[str, str]) -> dict[str, Any]:
        """A Customer Portal session as Stripe answers it (`url` is where the customer goes)."""
        session_id = "bps_" + secrets.token_hex(12)
        session = {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": "bpc_" + secrets.token_hex(8),
            "created": int(time.time()),
            "customer": form.get("customer"),
            "flow": None,
            "livemode": False,
            "locale": None,
            "on_behalf_of": None,
            "return_url": form.get("return_url"),
            "url": (self.url if self.hosted else "https://billing.stripe.com")
            + PORTAL_PAGE_PATH
            + session_id,
        }
        self.portal_sessions[session_id] = session
        return session

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
            url=(self.url if self.hosted else "https://checkout.stripe.com") + PAY_PATH + session_id,
        )
        session["client_reference_id"] = form.get("client_reference_id")
        session["metadata"] = {
            k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")
        }
        session["mode"] = form.get("mode")
        if session["mode"] == "subscription":
            # A subscription-mode session: no PaymentIntent of its own (the first invoice has one),
            # a customer (reused when given), and `subscription_data.metadata` for the subscription.
            session["customer"] = form.get("customer") or stripe_events.new_id("cus")
            session["subscription_data"] = {
                "metadata": {
                    k[len("subscription_data[metadata][") : -1]: v
                    for k, v in form.items()
                    if k.startswith("subscription_data[metadata][")
                }
            }
        self.sessions[session_id] = session
        return session


def _error(type: str, message: str, **extra: str) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, **extra}}


def _pay_form(session: dict[str, Any]) -> str:
    pack = html.escape(str(session["metadata"].get("packageId", "?")))
    amount = f"{session['amount_total'] / 100:.2f} {session['currency'].upper()}"
    return f"""<p class="muted">Local Stripe double: no card, no money. "Pay" sends Stripe's signed event to stripe_webhook.</p>
<p>Credit pack <strong id="pack">{pack}</strong></p><p class="amount">{amount}</p>
<form method="post"><button id="pay" type="submit">Pay {amount}</button></form>
<p><a id="cancel" href="{html.escape(session["cancel_url"])}">Cancel and go back</a></p>"""


def _page(status: int, title: str, body: str) -> tuple[int, dict[str, str], bytes]:
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>{title} · Stripe test checkout</title>
<style>body{{font:15px system-ui,sans-serif;max-width:420px;margin:48px auto;color:#1d2330}}.muted{{color:#667085}}
.amount{{font-size:28px;font-weight:600}}button{{font:inherit;width:100%;padding:10px;border:0;border-radius:6px;background:#635bff;color:#fff}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"""
    return status, {"Content-Type": "text/html; charset=utf-8"}, page.encode()
