"""`stripe_webhook` handler: verify the delivery, then hand the event to `lib.payments`.

No CORS (Stripe is not a browser) and no Firebase auth: the signature is the authentication, so
the endpoint secret is required and the check runs over the raw body before anything parses it.
"""

from __future__ import annotations

from functions.edge import Call, Reply, endpoint
from functions.lib import db, logs, payments, stripe_api
from functions.lib.config import get_settings

# Stripe events (a Checkout Session, a Charge) are a few KiB; the cap stays far below Firestore's
# 1 MiB document limit, so a problem event can always be stored whole.
MAX_EVENT_BYTES = 512 * 1024


@endpoint("stripe_webhook", methods=("POST",), cors=False, max_body=MAX_EVENT_BYTES)
def handle(call: Call) -> Reply:
    """POST a signed Stripe event -> 200 {received, outcome}; 400 unsigned or unusable; 503 retry later."""
    settings = get_settings()
    secret = settings.require("STRIPE_WEBHOOK_SECRET")
    event = stripe_api.construct_event(call.raw_body, call.headers.get("Stripe-Signature"), secret)
    logs.bind(stripeEventId=event["id"], stripeEventType=event["type"])
    outcome = payments.handle_event(db.get_client(), settings, event)
    logs.bind(uid=outcome.uid)
    body = {
        "received": True,
        "outcome": outcome.action,
        **({"problem": outcome.problem} if outcome.problem else {}),
    }
    return Reply(body, credits_moved=outcome.credits)
