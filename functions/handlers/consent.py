"""`consent` handler: GET the caller's state for the current terms, POST to accept them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from functions.edge import Call, endpoint
from functions.lib import auth, db, limits, logs, terms
from functions.lib.config import get_settings


@endpoint("consent", methods=("GET", "POST"))
def handle(call: Call) -> dict[str, Any]:
    """GET -> {version, accepted, acceptedAt}; POST {version} accepts the current version (and gives a
    qualifying new account its sign-up credits, once)."""
    claims = auth.verify_id_token(auth.bearer_token(call.headers.get("Authorization")))
    uid = claims["uid"]
    logs.bind(uid=uid)
    settings, client = get_settings(), db.get_client()
    limits.take_call_slot(client, settings, limits.CONSENT, uid, now=datetime.now(UTC))
    if call.method == "GET":
        return terms.read(client, uid, settings.terms_version).body()
    signup = settings if terms.signup_eligible(claims) else None
    version = call.json().get("version")
    return terms.accept(client, uid, version, settings.terms_version, signup=signup).body()
