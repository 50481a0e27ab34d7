"""`credits` handler: the caller's balance, live grants and latest ledger entries, after settling the
caller's crashed charges and expired grants (docs/ARCHITECTURE.md, "Settlement"), so the balance
shown is the one that counts."""

from __future__ import annotations

from typing import Any

from functions.edge import Call, endpoint
from functions.lib import auth, db, ledger, logs, settlement
from functions.lib.config import get_settings


@endpoint("credits", methods=("GET",))
def handle(call: Call) -> dict[str, Any]:
    """GET -> {balance, transactions: [latest first, up to 50], grants: [live ones, in spend order],
    debt, subscription}."""
    uid = auth.authenticate(call.headers.get("Authorization"))
    logs.bind(uid=uid)
    client = db.get_client()
    settlement.settle_user(client, get_settings(), uid)
    statement = ledger.statement(client, uid)
    return {
        "balance": statement.balance,
        "transactions": statement.transactions,
        "grants": statement.grants,
        "debt": statement.debt,
        "subscription": None,  # subscriptions arrive with Stripe Billing plans
    }
