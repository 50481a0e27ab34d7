"""`consent` handler: GET the caller's state for the current terms, POST to accept them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from functions.edge import Call, endpoint
from functions.lib import auth, db, limits, logs, terms
from functions.lib.config import get_settings


@endpoint("consent", methods=("GET", "POST"))
def handle(call: Call) -> dict[str, Any]:
    """GET -> {version, accepted, acceptedAt}; POST {version} accepts the current version."""
    uid = auth.authenticate(call.headers.get("Authorization"))
    logs.bind(uid=uid)
    settings, client = get_settings(), db.get_client()
    limits.take_call_slot(client, settings, limits.CONSENT, uid, now=datetime.now(UTC))
    if call.method == "GET":
        return terms.read(client, uid, settings.terms_version).body()
    return terms.accept(client, uid, call.json().get("version"), settings.terms_version).body()
