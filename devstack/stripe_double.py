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
`webhook_secret`, as Stripe would, and redirects the buyer to the session's success URL. A
subscription-mode session's "Pay" starts a subscription (devstack/stripe_billing.py) and delivers
`checkout.session.completed`, `customer.subscription.created`, `invoice.paid` and
`invoice_payment.paid`, in that order.

Billing, as Stripe's test clocks and Customer Portal would drive it (any mode):

- `POST /_clock/subscriptions/<sub id>/<action>[?price=<price id>][&order=...][&twice=1]`, action one
  of `stripe_billing.ACTIONS` (renew, fail_payment, retry_payment, upgrade, downgrade,
  cancel_at_period_end, resume, cancel_now): delivers that step's signed events and answers
  `{subscription, action, deliveries: [{type, id, status, answer}]}` (502 when the webhook refused
  one). `order`: `stripe` (the default), `reversed`, or event types to deliver first, comma-separated
  (`order=invoice.paid`); `twice=1` delivers each event twice.
- `GET /p/session/<portal session id>` (hosted): the portal page of `billing_portal`'s URL: the
  customer's subscription, and buttons to cancel at period end, resume, change plan, which post back
  and run the same steps, then a link back to the session's `return_url`.

Local only: nothing here is deployed.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from devstack import stripe_events
from devstack.doubles import Received, _Double
from devstack.stripe_billing import Billing, BillingError
from devstack.stripe_events import DEFAULT_AMOUNT, checkout_session

SESSIONS_PATH = "/v1/checkout/sessions"
PORTAL_PATH = "/v1/billing_portal/sessions"
PAY_PATH = "/c/pay/"
PORTAL_PAGE_PATH = "/p/session/"
CLOCK_PATH = "/_clock/subscriptions/"
# Delivers one signed event body with its headers to the webhook: (status, answer body).
Deliver = Callable[[bytes, dict[str, str]], tuple[int, bytes]]
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
    plan_names: dict[str, str] = field(default_factory=dict)  # price id -> plan name (portal page)
    deliver: Deliver | None = None  # instead of POSTing to webhook_url (tests: a test client)
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # every event delivered, in order
    _replays: dict[str, tuple[bytes, tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _session_prices: dict[str, str] = field(default_factory=dict)
    _pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # unpaid deliveries

    def __post_init__(self) -> None:
        self.billing = Billing(self.prices)

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
        parts = urlsplit(req.path)
        query = dict(parse_qsl(parts.query))
        if parts.path.startswith(CLOCK_PATH) and req.method == "POST":
            return self._clock(parts.path[len(CLOCK_PATH) :], query)
        if self.hosted and parts.path.startswith(PORTAL_PAGE_PATH):
            return self._portal_page(req, parts.path[len(PORTAL_PAGE_PATH) :])
        if not (self.hosted and parts.path.startswith(PAY_PATH)):
            return super().respond(req)
        session = self.sessions.get(parts.path[len(PAY_PATH) :])
        if session is None:
            return _page(404, "No such checkout session", "<p>This checkout link is not valid.</p>")
        if req.method == "GET":
            return _page(200, "Complete your purchase", _pay_form(session, self.plan_names))
        if req.method != "POST":
            return _page(405, "Method not allowed", "")
        if session["status"] == "open":
            if session["mode"] == "subscription":
                failed = self._deliver_subscribed(session, query.get("order", "stripe"))
            else:
                failed = self._deliver_completed(session)
            if failed:
                return _page(502, "Webhook failed", f"<p>stripe_webhook answered {html.escape(failed)}.</p>")
        target = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
        return 303, {"Location": target, "Content-Type": "text/plain"}, b""

    def _deliver_completed(self, session: dict[str, Any]) -> str | None:
        """Mark the session paid and POST its signed `checkout.session.completed`; the failure, if any."""
        if not self.webhook_url and self.deliver is None:
            return "nothing: the double has no webhook_url"
        paid = {
            **session,
            "status": "complete",
            "payment_status": "paid",
            "payment_intent": stripe_events.new_id("pi"),
        }
        record = self.post_event(stripe_events.event("checkout.session.completed", paid))
        if not 200 <= record["status"] < 300:
            return _refusal(record)
        self.sessions[session["id"]] = paid
        return None

    # -- webhook deliveries ------------------------------------------------------------------------

    def post_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Deliver one signed event as Stripe would; what the webhook answered (also in `deliveries`)."""
        body, headers = stripe_events.delivery(event, self.webhook_secret)
        status, answer = 0, b"nothing: the double has no webhook_url"
        if self.deliver is not None:
            status, answer = self.deliver(body, headers)
        elif self.webhook_url:
            try:
                request = urllib.request.Request(self.webhook_url, data=body, headers=headers)
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, answer = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read()
            except OSError as exc:
                answer = f"nothing ({exc})".encode()
        try:
            parsed: Any = json.loads(answer)
        except ValueError:
            parsed = answer[:300].decode(errors="replace")
        record = {"type": event["type"], "id": event["id"], "status": status, "answer": parsed}
        self.deliveries.append(record)
        return record

    def deliver_all(
        self, events: list[dict[str, Any]], order: str = "stripe", twice: bool = False
    ) -> list[dict[str, Any]]:
        """Deliver `events` (in Stripe's order) in the `order` asked for, each once or twice."""
        return [self.post_event(e) for e in ordered(events, order) for _ in range(2 if twice else 1)]

    def _deliver_subscribed(self, session: dict[str, Any], order: str) -> str | None:
        """A subscription-mode session paid: its subscription's first events delivered; the first
        refusal, if any (the session then stays open, and paying again delivers the same events)."""
        try:
            with self._lock:
                events = self._pending.get(session["id"])
                if events is None:
                    price = self._session_prices.get(session["id"], "")
                    events = self._pending[session["id"]] = self.billing.subscribe(session, price)
            records = self.deliver_all(events, order)
        except BillingError as exc:
            return str(exc)
        refused = next((r for r in records if not 200 <= r["status"] < 300), None)
        if refused:
            return _refusal(refused)
        self._pending.pop(session["id"], None)
        self.sessions[session["id"]] = events[0]["data"]["object"]
        return None

    def _clock(self, rest: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        sub_id, _, action = rest.partition("/")
        order = query.get("order", "stripe")
        try:
            ordered([], order)  # a bad order is refused before anything happens
            events = self.billing.act(sub_id, action, query.get("price"))
        except BillingError as exc:
            return _json(exc.status, _error("invalid_request_error", str(exc)))
        records = self.deliver_all(events, order, query.get("twice") == "1")
        ok = all(200 <= r["status"] < 300 for r in records)
        return _json(200 if ok else 502, {"subscription": sub_id, "action": action, "deliveries": records})

    # -- the Customer Portal page ------------------------------------------------------------------

    def _portal_page(self, req: Received, session_id: str) -> tuple[int, dict[str, str], bytes]:
        portal = self.portal_sessions.get(session_id)
        if portal is None:
            return _page(404, "No such portal session", "<p>This link is not valid.</p>")
        if req.method == "POST":
            form = req.form()
            subs = {s["id"] for s in self.billing.of_customer(portal["customer"])}
            if form.get("subscription") not in subs:
                return _page(404, "No such subscription", "<p>Not a subscription of this customer.</p>")
            try:
                events = self.billing.act(form["subscription"], form.get("action", ""), form.get("price"))
            except BillingError as exc:
                return _page(exc.status, "Not possible", f"<p>{html.escape(str(exc))}</p>")
            refused = next((r for r in self.deliver_all(events) if not 200 <= r["status"] < 300), None)
            if refused:
                return _page(
                    502, "Webhook failed", f"<p>stripe_webhook answered {html.escape(_refusal(refused))}.</p>"
                )
            return 303, {"Location": PORTAL_PAGE_PATH + session_id, "Content-Type": "text/plain"}, b""
        if req.method != "GET":
            return _page(405, "Method not allowed", "")
        subs = self.billing.of_customer(portal["customer"])
        return _page(
            200, "Manage your subscription", _portal_body(portal, subs, self.prices, self.plan_names)
        )

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
        self._session_prices[session_id] = form.get("line_items[0][price]", "")
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


def ordered(events: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    """`events` in the delivery order asked for: `stripe` (as given), `reversed`, or event types to
    deliver first, comma-separated (each type's events keep their order), then the rest."""
    if order in ("", "stripe"):
        return list(events)
    if order == "reversed":
        return events[::-1]
    first = [t.strip() for t in order.split(",") if t.strip()]
    if not all("." in t for t in first):
        raise BillingError(400, f"order must be stripe, reversed or event types, got {order!r}")
    picked = [e for t in first for e in events if e["type"] == t]
    return picked + [e for e in events if e not in picked]


def _refusal(record: dict[str, Any]) -> str:
    answer = record["answer"]
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return f"{record['status']} {text[:300]} to {record['type']}"


def _json(status: int, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _money(cents: int, currency: str = "usd") -> str:
    return f"{cents / 100:.2f} {currency.upper()}"


def _day(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%d %b %Y")


def _pay_form(session: dict[str, Any], plan_names: dict[str, str]) -> str:
    amount = _money(session["amount_total"], session["currency"])
    note = '<p class="muted">Local Stripe double: no card, no money. "Pay" sends Stripe\'s signed events to stripe_webhook.</p>'
    if session.get("mode") == "subscription":
        plan = html.escape(str(session["metadata"].get("planId", "?")))
        what = f'<p>Subscription to plan <strong id="plan">{plan}</strong>, renewing monthly</p><p class="amount">{amount} / month</p>'
        label = f"Subscribe for {amount} / month"
    else:
        pack = html.escape(str(session["metadata"].get("packageId", "?")))
        what = f'<p>Credit pack <strong id="pack">{pack}</strong></p><p class="amount">{amount}</p>'
        label = f"Pay {amount}"
    return f"""{note}
{what}
<form method="post"><button id="pay" type="submit">{label}</button></form>
<p><a id="cancel" href="{html.escape(session["cancel_url"])}">Cancel and go back</a></p>"""


def _portal_body(
    portal: dict[str, Any], subs: list[dict[str, Any]], prices: dict[str, int], names: dict[str, str]
) -> str:
    """The customer's subscriptions, each with what the portal's configuration allows: cancel at
    period end (or resume), a change to another plan (upgrades invoiced at once)."""
    back = html.escape(str(portal.get("return_url") or "/"))
    rows = []
    for sub in subs:
        item = sub["items"]["data"][0]
        price = item["price"]["id"]
        sid = html.escape(sub["id"])

        def button(action: str, label: str, price_id: str = "", ident: str = "", sid: str = sid) -> str:
            extra = f'<input type="hidden" name="price" value="{html.escape(price_id)}">' if price_id else ""
            return (
                f'<form method="post"><input type="hidden" name="subscription" value="{sid}">'
                f'<input type="hidden" name="action" value="{action}">{extra}'
                f'<button id="{ident or action.replace("_", "-")}" type="submit">{label}</button></form>'
            )

        end = int(item["current_period_end"])
        if sub["status"] == "canceled":
            state, actions = f"Canceled on {_day(int(sub['ended_at'] or end))}", []
        elif sub["cancel_at_period_end"]:
            state, actions = f"Cancels on {_day(end)}", [button("resume", "Don't cancel")]
        else:
            others = [p for p in names if p != price]
            changes = [
                button(
                    "upgrade" if prices.get(p, 0) > prices.get(price, 0) else "downgrade",
                    f"Switch to {html.escape(names[p])} ({_money(prices.get(p, 0))} / month)",
                    p,
                    f"change-{p}",
                )
                for p in others
            ]
            state = f"Renews on {_day(end)}"
            actions = [*changes, button("cancel_at_period_end", "Cancel plan")]
        name = html.escape(names.get(price, price))
        rows.append(
            f'<section class="sub" data-subscription="{sid}" data-status="{html.escape(sub["status"])}">'
            f'<p>Plan <strong class="plan">{name}</strong> · {_money(prices.get(price, 0))} / month</p>'
            f'<p class="state">{html.escape(sub["status"])} · {state}</p>{"".join(actions)}</section>'
        )
    listed = "".join(rows) or '<p class="muted">No subscriptions.</p>'
    return f"""<p class="muted">Local Stripe double of the Customer Portal: each button delivers Stripe's signed events to stripe_webhook.</p>
{listed}
<p><a id="return" href="{back}">Return to the app</a></p>"""


def _page(status: int, title: str, body: str) -> tuple[int, dict[str, str], bytes]:
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>{title} · Stripe test checkout</title>
<style>body{{font:15px system-ui,sans-serif;max-width:420px;margin:48px auto;color:#1d2330}}.muted{{color:#667085}}
.amount{{font-size:28px;font-weight:600}}button{{font:inherit;width:100%;padding:10px;border:0;border-radius:6px;background:#635bff;color:#fff}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"""
    return status, {"Content-Type": "text/html; charset=utf-8"}, page.encode()
