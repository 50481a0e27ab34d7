"""The packs and plans on sale, with their prices as Stripe has them (docs/ARCHITECTURE.md, "Catalog").

What is sold, and for how many credits, is the server's own configuration (CREDIT_PACKS, PLANS):
`checkout` and the webhook read only that. What each costs is Stripe's: the operator's
`sync-catalog` reads every configured price from Stripe and writes `catalog/current`, and the public
`catalog` GET joins the two. An entry's amount is shown only while `catalog/current` holds it for the
same price id the configuration sells, so a price changed in the configuration but not yet synced is
shown without an amount rather than with the old one. When `catalog/current` is missing (never
synced) or unreadable, the configured packs and plans are answered without prices and `syncedAt` is
null: the web client can still sell, and the operator sees what to run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from functions.lib import db
from functions.lib.config import Settings
from functions.lib.errors import InvalidRequest
from functions.lib.schema import CATALOG

if TYPE_CHECKING:
    from google.cloud.firestore import Client

log = logging.getLogger(__name__)
CURRENT = "current"
ONE_TIME, RECURRING = "one_time", "recurring"


@dataclass(frozen=True)
class StripePrice:
    """A Stripe Price as the catalog keeps it: minor units, lowercase currency, the billing interval
    of a recurring price (None for a one-time price)."""

    id: str
    amount: int
    currency: str
    interval: str | None = None
    interval_count: int | None = None
    active: bool = True

    @classmethod
    def of(cls, price: dict[str, Any]) -> StripePrice:
        """Stripe's price object read; InvalidRequest when it is not a fixed per-unit price."""
        price_id, amount, currency = price.get("id"), price.get("unit_amount"), price.get("currency")
        if (
            not isinstance(price_id, str)
            or not isinstance(amount, int)
            or isinstance(amount, bool)
            or amount < 0
            or not isinstance(currency, str)
            or len(currency) != 3
        ):
            raise InvalidRequest(
                f"Stripe price {price_id!r} has no fixed unit_amount and currency (tiered or custom "
                "prices cannot be sold here)."
            )
        recurring = price.get("recurring") if isinstance(price.get("recurring"), dict) else None
        interval = recurring.get("interval") if recurring else None
        count = recurring.get("interval_count") if recurring else None
        return cls(
            price_id,
            amount,
            currency.lower(),
            interval if isinstance(interval, str) else None,
            count if isinstance(count, int) and not isinstance(count, bool) else None,
            price.get("active") is not False,
        )


def _pack_entry(price: StripePrice) -> dict[str, Any]:
    return {"price": price.id, "amount": price.amount, "currency": price.currency}


def _plan_entry(price: StripePrice) -> dict[str, Any]:
    return {**_pack_entry(price), "interval": price.interval, "intervalCount": price.interval_count}


@dataclass(frozen=True)
class Change:
    kind: str  # "pack" or "plan"
    id: str
    before: dict[str, Any] | None
    after: dict[str, Any]


@dataclass(frozen=True)
class SyncReport:
    changes: list[Change]
    warnings: list[str]
    written: bool


def sync(client: Client, settings: Settings, retrieve: Callable[[str], StripePrice]) -> SyncReport:
    """Read every configured pack's and plan's price with `retrieve` and write `catalog/current`
    when anything differs (nothing is written when all is as stored: running it twice changes
    nothing). A price of the wrong kind (a recurring price for a pack, a one-time one for a plan)
    stops the sync before anything is written (InvalidRequest naming it)."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    packs: dict[str, dict[str, Any]] = {}
    plans: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for pack in settings.credit_packs.values():
        price = retrieve(pack.price)
        if price.interval is not None:
            raise InvalidRequest(
                f"pack {pack.id}: Stripe price {pack.price} is recurring; a pack needs a one-time price."
            )
        packs[pack.id] = _pack_entry(price)
        warnings += _warnings("pack", pack.id, price, pack.amount, pack.currency)
    for plan in settings.plans.values():
        price = retrieve(plan.price)
        if price.interval is None:
            raise InvalidRequest(
                f"plan {plan.id}: Stripe price {plan.price} is not recurring; a plan needs a recurring one."
            )
        plans[plan.id] = _plan_entry(price)
        warnings += _warnings("plan", plan.id, price, plan.amount, plan.currency)
    ref = client.collection(CATALOG).document(CURRENT)
    stored = ref.get(**db.rpc())
    old = (stored.to_dict() or {}) if stored.exists else {}
    changes = [
        *_diff("pack", _entries(old.get("packs")), packs),
        *_diff("plan", _entries(old.get("plans")), plans),
    ]
    gone = (set(_entries(old.get("packs"))) - set(packs)) | (set(_entries(old.get("plans"))) - set(plans))
    if changes or gone or not stored.exists:
        ref.set({"packs": packs, "plans": plans, "syncedAt": SERVER_TIMESTAMP}, **db.rpc())
        return SyncReport(changes, warnings, True)
    return SyncReport(changes, warnings, False)


def _warnings(
    kind: str, entry: str, price: StripePrice, amount: int | None, currency: str | None
) -> list[str]:
    out = []
    if not price.active:
        out.append(f"{kind} {entry}: Stripe price {price.id} is archived (inactive); Checkout refuses it")
    if amount is not None and (amount, currency) != (price.amount, price.currency):
        out.append(
            f"{kind} {entry}: the configuration expects {amount} {currency} but Stripe charges "
            f"{price.amount} {price.currency}; the webhook will refuse its payments as price_mismatch"
        )
    return out


def _entries(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, dict)}


def _diff(kind: str, old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[Change]:
    return [Change(kind, key, old.get(key), entry) for key, entry in new.items() if old.get(key) != entry]


# The public answer ----------------------------------------------------------------------------


def _amount(stored: dict[str, Any] | None, price: str) -> tuple[int | None, str | None]:
    """The stored amount and currency of `price`, when the stored entry is of that price and usable."""
    if not stored or stored.get("price") != price:
        return None, None
    amount, currency = stored.get("amount"), stored.get("currency")
    if not isinstance(amount, int) or isinstance(amount, bool) or not isinstance(currency, str):
        return None, None
    return amount, currency


def public(client: Client, settings: Settings) -> dict[str, Any]:
    """`catalog` GET: `{packs, plans, syncedAt}`. One document read."""
    snap = client.collection(CATALOG).document(CURRENT).get(**db.rpc())
    data = (snap.to_dict() or {}) if snap.exists else {}
    if not snap.exists:
        log.warning("catalog/current is missing: run `python -m functions.admin sync-catalog`")
    stored_packs, stored_plans = _entries(data.get("packs")), _entries(data.get("plans"))
    packs = {}
    for pack in settings.credit_packs.values():
        amount, currency = _amount(stored_packs.get(pack.id), pack.price)
        packs[pack.id] = {
            "credits": pack.credits,
            "expiresInDays": pack.expires_in_days,
            "price": pack.price,
            "amount": amount,
            "currency": currency,
        }
    plans = {}
    for plan in settings.plans.values():
        stored = stored_plans.get(plan.id)
        amount, currency = _amount(stored, plan.price)
        interval = stored.get("interval") if stored and amount is not None else None
        plans[plan.id] = {
            "credits": plan.credits,
            "rollover": plan.rollover,
            "trialCredits": plan.trial_credits,
            "price": plan.price,
            "amount": amount,
            "currency": currency,
            "interval": interval if isinstance(interval, str) else None,
        }
    synced = data.get("syncedAt")
    return {
        "packs": packs,
        "plans": plans,
        "syncedAt": synced.isoformat() if isinstance(synced, datetime) else None,
    }
