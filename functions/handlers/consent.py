"""`consent` handler: GET the caller's state for the current terms, POST to accept them."""

from __future__ import annotations

from typing import Any

from functions.edge import Call, endpoint
from functions.lib import auth, db, logs, terms
from functions.lib.config import get_settings


@endpoint("consent", methods=("GET", "POST"))
def handle(call: Call) -> dict[str, Any]:
    """GET -> {version, accepted, acceptedAt}; POST {version} accepts the current version."""
    uid = auth.authenticate(call.headers.get("Authorization"))
    logs.bind(uid=uid)
    current = get_settings().terms_version
    if call.method == "GET":
        return terms.read(db.get_client(), uid, current).body()
    return terms.accept(db.get_client(), uid, call.json().get("version"), current).body()
