"""`credits` handler: the caller's balance, live grants and latest ledger entries, after settling the
caller's crashed charges and expired grants (docs/ARCHITECTURE.md, "Settlement"), so the balance
shown is the one that counts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from functions.edge import Call, endpoint
from functions.lib import auth, db, ledger, limits, logs, settlement, subscriptions
from functions.lib.config import get_settings


@endpoint("credits", methods=("GET",))
def handle(call: Call) -> dict[str, Any]:
    """GET -> {balance, transactions: [latest first, up to 50], grants: [live ones, in spend order],
    debt, subscription}."""
    uid = auth.authenticate(call.headers.get("Authorization"))
    logs.bind(uid=uid)
    client, settings = db.get_client(), get_settings()
    # Sized for a client polling after a purchase (CREDITS_LIMIT per CREDITS_WINDOW_S), checked before
    # the up to 52 reads a call makes.
    limits.take_call_slot(client, settings, limits.CREDITS, uid, now=datetime.now(UTC))
    settlement.settle_user(client, settings, uid)
    statement = ledger.statement(client, uid)
    return {
        "balance": statement.balance,
        "transactions": statement.transactions,
        "grants": statement.grants,
        "debt": statement.debt,
        "subscription": subscriptions.public(subscriptions.live_subscription(client, uid)),
    }
