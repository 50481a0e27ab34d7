"""`catalog` handler: the packs and plans on sale with their Stripe prices, for anyone (no token).

The answer is the same for every caller and changes only when the operator syncs the catalog, so
browsers and CDNs may keep it for CACHE_S."""

from __future__ import annotations

from functions.edge import Call, Reply, endpoint
from functions.lib import catalog, db
from functions.lib.config import get_settings

CACHE_S = 300


@endpoint("catalog", methods=("GET",), attested=False)
def handle(call: Call) -> Reply:
    """GET -> {packs: {id: {credits, expiresInDays, price, amount, currency}}, plans: {id: {credits,
    rollover, trialCredits, price, amount, currency, interval}}, syncedAt}."""
    body = catalog.public(db.get_client(), get_settings())
    return Reply(body, headers={"Cache-Control": f"public, max-age={CACHE_S}"})
