"""`credits` handler: the caller's balance and latest ledger entries."""

from __future__ import annotations

from typing import Any

from functions.http import Call, endpoint
from functions.lib import auth, db, ledger, logs


@endpoint("credits", methods=("GET",))
def handle(call: Call) -> dict[str, Any]:
    """GET -> {balance, transactions: [latest first, up to 50]}."""
    uid = auth.authenticate(call.headers.get("Authorization"))
    logs.bind(uid=uid)
    statement = ledger.statement(db.get_client(), uid)
    return {"balance": statement.balance, "transactions": statement.transactions}
