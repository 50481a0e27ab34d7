"""The Stripe edge: a lazily created API client, Checkout Session creation, and webhook verification.

`stripe` is imported inside these functions only, so importing this module (or `main.py`) loads
nothing heavy, and `generate` never loads stripe at all. Nothing here touches Firestore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from functions.lib import ids
from functions.lib.config import CreditPack, Plan, Settings
from functions.lib.errors import IdempotencyKeyReused, InvalidRequest, InvalidSignature, UpstreamFailed
from functions.lib.once import once

if TYPE_CHECKING:
    import stripe

log = logging.getLogger(__name__)
# One attempt plus retries must fit well inside the function's timeout. The retries are safe
# because every create carries an idempotency key.
TIMEOUT_S = 10.0
NETWORK_RETRIES = 2
# Stripe's parameter -> the request field it came from, for a URL Stripe refuses (400, not 502).
RETURN_URL_FIELDS = {"success_url": "successUrl", "cancel_url": "cancelUrl", "return_url": "returnUrl"}


@once
def _client(api_key: str, api_base: str | None) -> stripe.StripeClient:
    import stripe

    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=NETWORK_RETRIES,
        http_client=stripe.RequestsClient(timeout=TIMEOUT_S),
    )


def get_client(settings: Settings) -> stripe.StripeClient:
    """The process's Stripe client for these settings, created on first use; STRIPE_API_BASE points it
    at a double."""
    return _client(settings.require("STRIPE_SECRET_KEY"), settings.stripe_api_base)


def checkout_idempotency_key(uid: str, client_key: str | None) -> str:
    """The Stripe idempotency key of one checkout request.

    With the client's Idempotency-Key, a retried request gets the same session back (Stripe keeps
    keys for 24 h); the uid is part of it because Stripe's keys are account-wide. Without one, a
    fresh key still makes the library's own network retries safe.
    """
    if client_key is None:
        return f"checkout-{uuid.uuid4().hex}"
    return "checkout-" + hashlib.sha256(f"{uid}\x00{client_key}".encode()).hexdigest()


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


def create_checkout_session(
    settings: Settings, *, uid: str, pack: CreditPack, success_url: str, cancel_url: str, idempotency_key: str
) -> CheckoutSession:
    """A Checkout Session in payment mode for one pack, priced by the catalog's Stripe price.

    The webhook credits the pack named in the session's metadata, for the uid in it; the amount
    and the credits never come from the client.
    """
    metadata = {"userId": uid, "packageId": pack.id}
    params = {
        "mode": "payment",
        "line_items": [{"price": pack.price, "quantity": 1}],
        "client_reference_id": uid,
        "metadata": metadata,
        # Copied onto the PaymentIntent, so the dashboard shows who paid for what on refunds and disputes.
        "payment_intent_data": {"metadata": metadata},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    return _create_session(settings, params, idempotency_key, {"packId": pack.id})


def create_subscription_session(
    settings: Settings,
    *,
    uid: str,
    plan: Plan,
    customer: str | None,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
) -> CheckoutSession:
    """A Checkout Session in subscription mode for one plan.

    `subscription_data.metadata` is what matters: Stripe snapshots the subscription's metadata onto
    every invoice it bills, and the webhook grants each paid invoice to the uid found there. The
    user's Stripe customer is reused when known, so the portal shows one customer per user.
    """
    metadata = {"userId": uid, "planId": plan.id}
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": plan.price, "quantity": 1}],
        "client_reference_id": uid,
        "metadata": metadata,
        "subscription_data": {"metadata": metadata},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if customer:
        params["customer"] = customer
    return _create_session(settings, params, idempotency_key, {"planId": plan.id})


def _create_session(
    settings: Settings, params: dict[str, Any], idempotency_key: str, about: dict[str, str]
) -> CheckoutSession:
    import stripe

    client = get_client(settings)
    try:
        session = client.v1.checkout.sessions.create(cast(Any, params), {"idempotency_key": idempotency_key})
    except stripe.StripeError as exc:
        raise _refused(exc, about) from None
    session_id, url = getattr(session, "id", None), getattr(session, "url", None)
    if not isinstance(session_id, str) or not isinstance(url, str) or not url:
        log.error("stripe answered a checkout session without id or url")
        raise UpstreamFailed(
            "The payment provider could not start the checkout; nothing was charged. Retry shortly."
        )
    return CheckoutSession(session_id, url)


def create_portal_session(settings: Settings, *, customer: str, return_url: str) -> str:
    """The URL of a Customer Portal session for `customer` (the portal's own configuration decides
    what it offers: plan changes, cancellation, payment methods)."""
    import stripe

    client = get_client(settings)
    params = {"customer": customer, "return_url": return_url}
    try:
        session = client.v1.billing_portal.sessions.create(cast(Any, params))
    except stripe.StripeError as exc:
        raise _refused(exc, {}, what="billing portal") from None
    url = getattr(session, "url", None)
    if not isinstance(url, str) or not url:
        log.error("stripe answered a billing portal session without url")
        raise UpstreamFailed("The payment provider could not open the billing portal. Retry shortly.")
    return url


def _refused(exc: stripe.StripeError, about: dict[str, str], what: str = "checkout session") -> Exception:
    """A Stripe error as the caller's (a reused idempotency key, a return URL Stripe refuses: 4xx)
    or as Stripe's (logged, 502)."""
    import stripe

    if isinstance(exc, stripe.IdempotencyError):
        log.warning("stripe refused a reused idempotency key", extra={"json_fields": about})
        return IdempotencyKeyReused()
    param = (exc.param or "") if isinstance(exc, stripe.InvalidRequestError) else ""
    field = RETURN_URL_FIELDS.get(param)
    if field is not None:
        log.warning("stripe refused a return url", extra={"json_fields": {"param": param}})
        return InvalidRequest(
            f"'{field}' was refused by the payment provider as not a valid URL.", field=field
        )
    return _upstream_failed(exc, what)


def _upstream_failed(
    exc: stripe.StripeError, what: str = "checkout session", message: str | None = None
) -> UpstreamFailed:
    """Stripe could not create the session for a reason that is not the caller's: logged, then 502."""
    log.error(
        f"stripe {what} failed",
        extra={
            "json_fields": {
                "stripeError": type(exc).__name__,
                "httpStatus": exc.http_status,
                "stripeCode": exc.code,
                "stripeRequestId": exc.request_id,
            }
        },
    )
    return UpstreamFailed(
        message or "The payment provider could not start the checkout; nothing was charged. Retry shortly."
    )


def signed_at(signature: str) -> int:
    """The timestamp of a verified `Stripe-Signature`, read as stripe-python reads it (the first
    `t=`, the text up to any further `=`), so it is the one the signature was checked with."""
    return int(next(item.split("=", 2)[1] for item in signature.split(",") if item.split("=", 1)[0] == "t"))


def construct_event(payload: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """The event in a webhook delivery, verified before it is parsed.

    `Stripe-Signature` must carry a v1 HMAC-SHA256 of "timestamp.body" under the endpoint secret,
    with a timestamp inside Stripe's default 300 s tolerance on either side: stripe-python refuses
    old ones (replays of old deliveries), and this refuses ones dated further ahead, which
    stripe-python accepts (a signature dated ahead, made with a leaked secret or under a wrong
    clock, would stay replayable until its date and beyond). Any failure is a 400: a bad signature
    as `invalid_signature`, a signed but unusable body as `invalid_request`.
    """
    import stripe

    if signature is not None and not signature.isascii():
        raise InvalidSignature()  # stripe-python's compare raises TypeError on non-ASCII input
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, stripe.Webhook.DEFAULT_TOLERANCE)
    except stripe.SignatureVerificationError:
        raise InvalidSignature() from None
    except UnicodeDecodeError:
        raise InvalidRequest("The webhook body is not UTF-8.") from None
    if signed_at(cast(str, signature)) > time.time() + stripe.Webhook.DEFAULT_TOLERANCE:
        raise InvalidSignature()
    try:
        event = json.loads(payload)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidRequest("The webhook body is not valid JSON.") from None
    if (
        not isinstance(event, dict)
        or event.get("object") != "event"
        or not isinstance(event.get("type"), str)
    ):
        raise InvalidRequest("The webhook body is not a Stripe event.")
    event_id = event.get("id")
    if not ids.is_doc_id(event_id) or not event_id.startswith("evt_"):
        raise InvalidRequest("The webhook body has no valid event id.")
    return event


PRICE_FAILED = "The payment provider could not answer the price lookup. Retry shortly."


def retrieve_price(settings: Settings, price_id: str) -> dict[str, Any]:
    """Stripe's Price `price_id` as a plain dict (the operator's catalog sync); InvalidRequest when
    Stripe has no such price, UpstreamFailed when Stripe fails."""
    import stripe

    try:
        price = get_client(settings).v1.prices.retrieve(price_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            raise InvalidRequest(f"Stripe has no price {price_id!r} (see CREDIT_PACKS, PLANS).") from None
        raise _upstream_failed(exc, "price lookup", PRICE_FAILED) from None
    except stripe.StripeError as exc:
        raise _upstream_failed(exc, "price lookup", PRICE_FAILED) from None
    return price.to_dict()


CANCELED_STATUSES = ("canceled", "incomplete_expired")


def cancel_subscription(settings: Settings, subscription_id: str) -> str:
    """Cancel `subscription_id` in Stripe now (no proration, no final invoice) and answer its status.

    Idempotent: Stripe answers 404 `resource_missing` when asked to cancel a subscription that is
    already canceled, so a refusal is checked by retrieving the subscription: canceled (or unknown
    to Stripe: nothing bills) counts as done. Anything else is UpstreamFailed (502), so the caller
    stops and a rerun tries again.
    """
    import stripe

    client = get_client(settings)
    try:
        return str(getattr(client.v1.subscriptions.cancel(subscription_id), "status", None))
    except stripe.InvalidRequestError as exc:
        refused: stripe.StripeError = exc
    except stripe.StripeError as exc:
        raise _cancel_failed(exc) from None
    try:
        status = getattr(client.v1.subscriptions.retrieve(subscription_id), "status", None)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return "canceled"
        raise _cancel_failed(exc) from None
    except stripe.StripeError as exc:
        raise _cancel_failed(exc) from None
    if status not in CANCELED_STATUSES:
        raise _cancel_failed(refused)
    return str(status)


def _cancel_failed(exc: stripe.StripeError) -> UpstreamFailed:
    return _upstream_failed(
        exc,
        "subscription cancel",
        "The payment provider could not cancel the subscription; nothing was erased. Retry shortly.",
    )
