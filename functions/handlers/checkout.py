"""`checkout` handler: validate the pack or plan and the return URLs, then create a Stripe Checkout
Session (payment mode for a pack, subscription mode for a plan)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from functions.edge import Call, endpoint
from functions.lib import auth, db, limits, logs, stripe_api, subscriptions
from functions.lib.config import CreditPack, Plan, Settings, get_settings
from functions.lib.errors import AlreadySubscribed, ConfigError, InvalidRequest

MAX_URL_CHARS = 2048


@dataclass(frozen=True)
class CheckoutRequest:
    pack: CreditPack | None
    plan: Plan | None
    success_url: str
    cancel_url: str
    idempotency_key: str | None


def return_url(settings: Settings, body: dict[str, Any], field: str) -> str:
    """An absolute http(s) URL on one of ALLOWED_ORIGINS: Stripe sends the buyer there, so no open
    redirects."""
    if not settings.allowed_origins:
        raise ConfigError(
            "ALLOWED_ORIGINS", "ALLOWED_ORIGINS is empty: checkout cannot accept any return URL"
        )
    url = body.get(field)
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"'{field}' must be a URL of at most {MAX_URL_CHARS} characters.", field=field)
    # A URL holds no whitespace or control characters (RFC 3986); Stripe refuses one that does.
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidRequest(f"'{field}' must not contain spaces or control characters.", field=field)
    try:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        raise InvalidRequest(f"'{field}' is not a valid URL.", field=field) from None
    if (
        parts.scheme not in ("http", "https")
        or parts.username is not None
        or parts.password is not None
        or origin.lower() not in settings.allowed_origins
    ):
        raise InvalidRequest(f"'{field}' must be on one of the app's origins.", field=field)
    return url


FIELDS = frozenset({"packId", "planId", "successUrl", "cancelUrl"})


def parse(settings: Settings, call: Call) -> CheckoutRequest:
    body = call.json(allowed=FIELDS)
    if ("packId" in body) == ("planId" in body):
        raise InvalidRequest("Send exactly one of 'packId' (a credit pack) or 'planId' (a subscription).")
    pack = plan = None
    if "packId" in body:
        pack_id = body.get("packId")
        pack = settings.credit_packs.get(pack_id) if isinstance(pack_id, str) else None
        if pack is None:
            raise InvalidRequest(
                f"'packId' must be one of: {', '.join(sorted(settings.credit_packs))}.", field="packId"
            )
    else:
        plan_id = body.get("planId")
        plan = settings.plans.get(plan_id) if isinstance(plan_id, str) else None
        if plan is None:
            choices = ", ".join(sorted(settings.plans)) or "(no plans are on sale)"
            raise InvalidRequest(f"'planId' must be one of: {choices}.", field="planId")
    return CheckoutRequest(
        pack,
        plan,
        return_url(settings, body, "successUrl"),
        return_url(settings, body, "cancelUrl"),
        call.idempotency_key(),
    )


@endpoint("checkout", methods=("POST",))
def handle(call: Call) -> dict[str, Any]:
    """POST {packId | planId, successUrl, cancelUrl} -> 200 {url, sessionId}; 409 already_subscribed
    for a plan while the caller has a live subscription (plans change in the billing portal)."""
    uid = auth.authenticate(call.headers.get("Authorization"), check_revoked=True)
    logs.bind(uid=uid)
    settings = get_settings()
    req = parse(settings, call)
    client = db.get_client()
    customer = None
    if req.plan is not None:
        # Two checkouts racing past this check could both subscribe; the second is then a plain
        # second subscription the user can cancel in the portal (each paid invoice grants once).
        if subscriptions.live_subscription(client, uid) is not None:
            raise AlreadySubscribed()
        customer = subscriptions.customer_of(client, uid)
    limits.take_checkout_slot(
        client,
        uid,
        limit=settings.checkout_limit,
        window_s=settings.checkout_window_s,
        now=datetime.now(UTC),
    )
    key = stripe_api.checkout_idempotency_key(uid, req.idempotency_key)
    if req.plan is not None:
        session = stripe_api.create_subscription_session(
            settings,
            uid=uid,
            plan=req.plan,
            customer=customer,
            success_url=req.success_url,
            cancel_url=req.cancel_url,
            idempotency_key=key,
        )
    else:
        assert req.pack is not None
        session = stripe_api.create_checkout_session(
            settings,
            uid=uid,
            pack=req.pack,
            success_url=req.success_url,
            cancel_url=req.cancel_url,
            idempotency_key=key,
        )
    return {"url": session.url, "sessionId": session.id}
