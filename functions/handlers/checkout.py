"""`checkout` handler: validate the pack and the return URLs, then create a Stripe Checkout Session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from functions.edge import Call, endpoint
from functions.lib import auth, db, limits, logs, stripe_api
from functions.lib.config import CreditPack, Settings, get_settings
from functions.lib.errors import ConfigError, InvalidRequest

MAX_URL_CHARS = 2048


@dataclass(frozen=True)
class CheckoutRequest:
    pack: CreditPack
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


FIELDS = frozenset({"packId", "successUrl", "cancelUrl"})


def parse(settings: Settings, call: Call) -> CheckoutRequest:
    body = call.json(allowed=FIELDS)
    pack_id = body.get("packId")
    pack = settings.credit_packs.get(pack_id) if isinstance(pack_id, str) else None
    if pack is None:
        raise InvalidRequest(
            f"'packId' must be one of: {', '.join(sorted(settings.credit_packs))}.", field="packId"
        )
    return CheckoutRequest(
        pack,
        return_url(settings, body, "successUrl"),
        return_url(settings, body, "cancelUrl"),
        call.idempotency_key(),
    )


@endpoint("checkout", methods=("POST",))
def handle(call: Call) -> dict[str, Any]:
    """POST {packId, successUrl, cancelUrl} -> 200 {url, sessionId}."""
    uid = auth.authenticate(call.headers.get("Authorization"), check_revoked=True)
    logs.bind(uid=uid)
    settings = get_settings()
    req = parse(settings, call)
    limits.take_checkout_slot(
        db.get_client(),
        uid,
        limit=settings.checkout_limit,
        window_s=settings.checkout_window_s,
        now=datetime.now(UTC),
    )
    session = stripe_api.create_checkout_session(
        settings,
        uid=uid,
        pack=req.pack,
        success_url=req.success_url,
        cancel_url=req.cancel_url,
        idempotency_key=stripe_api.checkout_idempotency_key(uid, req.idempotency_key),
    )
    return {"url": session.url, "sessionId": session.id}
