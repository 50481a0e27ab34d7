"""`billing_portal` handler: a Stripe Customer Portal session for the caller's Stripe customer, where
they change plans, cancel, or update the payment method (the portal's configuration in Stripe
decides which)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from functions.edge import Call, endpoint
from functions.handlers.checkout import return_url
from functions.lib import auth, db, limits, logs, stripe_api, subscriptions
from functions.lib.config import get_settings
from functions.lib.errors import NoCustomer

FIELDS = frozenset({"returnUrl"})


@endpoint("billing_portal", methods=("POST",))
def handle(call: Call) -> dict[str, Any]:
    """POST {returnUrl} -> 200 {url}; 404 no_customer when the caller has no Stripe customer yet."""
    uid = auth.authenticate(call.headers.get("Authorization"), check_revoked=True)
    logs.bind(uid=uid)
    settings = get_settings()
    url = return_url(settings, call.json(allowed=FIELDS), "returnUrl")
    client = db.get_client()
    customer = subscriptions.customer_of(client, uid)
    if customer is None:
        raise NoCustomer()
    # Each portal session is a Stripe API call: it counts in the caller's checkout window.
    limits.take_checkout_slot(
        client, uid, limit=settings.checkout_limit, window_s=settings.checkout_window_s, now=datetime.now(UTC)
    )
    return {"url": stripe_api.create_portal_session(settings, customer=customer, return_url=url)}
