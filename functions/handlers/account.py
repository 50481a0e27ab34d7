"""`account` handler: GET exports everything kept about the caller, DELETE erases the caller.

An export takes a slot of this instance's EXPORT_CONCURRENCY (one per user) and then one of the
user's EXPORT_LIMIT per EXPORT_WINDOW_S; the slot goes back when the stream ends or the client goes
away. An erasure takes neither, so it never waits behind exports.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from functions.edge import Call, Stream, endpoint
from functions.lib import auth, db, limits, logs, user_data
from functions.lib.config import get_settings


@endpoint("account", methods=("GET", "DELETE"))
def handle(call: Call) -> dict[str, Any] | Stream:
    """GET -> the caller's data as one JSON document (streamed); DELETE -> erase the caller."""
    # Both check the account with Firebase Auth: a revoked or deleted session exports nothing either.
    if call.method == "DELETE":
        uid = auth.authenticate_recent_sign_in(call.headers.get("Authorization"))
    else:
        uid = auth.authenticate(call.headers.get("Authorization"), check_revoked=True)
    logs.bind(uid=uid)
    client = db.get_client()
    if call.method == "DELETE":
        return user_data.erase(client, uid, delete_login=auth.delete_login).body()
    give_back = limits.running_exports().take(uid)
    try:
        limits.take_call_slot(client, get_settings(), limits.EXPORT, uid, now=datetime.now(UTC))
        return Stream(user_data.export(client, uid), on_close=give_back)
    except BaseException:
        give_back()
        raise
