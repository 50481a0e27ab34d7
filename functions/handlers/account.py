"""`account` handler: GET exports everything kept about the caller, DELETE erases the caller."""

from __future__ import annotations

from typing import Any

from functions.edge import Call, Stream, endpoint
from functions.lib import auth, db, logs, user_data


@endpoint("account", methods=("GET", "DELETE"))
def handle(call: Call) -> dict[str, Any] | Stream:
    """GET -> the caller's data as one JSON document (streamed); DELETE -> erase the caller."""
    # Both check the account with Firebase Auth: a revoked or deleted session exports nothing either.
    if call.method == "DELETE":
        uid = auth.authenticate_recent_sign_in(call.headers.get("Authorization"))
    else:
        uid = auth.authenticate(call.headers.get("Authorization"), check_revoked=True)
    logs.bind(uid=uid)
    if call.method == "GET":
        return Stream(user_data.export(db.get_client(), uid))
    return user_data.erase(db.get_client(), uid, delete_login=auth.delete_login).body()
