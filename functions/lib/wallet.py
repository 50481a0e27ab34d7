"""A user's credits as grants: the pure rules, with no Firestore in them (docs/ARCHITECTURE.md, "Grants").

Every credit arrives as a grant: an id (the ledger entry that created it), an amount, what remains,
a category (paid or promotional), a priority (0..100, lower spent first), a source, when it was
made and when it expires (None: never). The live grants (remaining > 0) sit on the user document
with `debt` (<= 0: what reversals took beyond their own grant), so that

    credits == sum(live grants' remaining) + debt

always. `Wallet` applies one movement at a time and says what it did (draws, write-offs); the
ledger turns each into entries and commits them with the user document in one batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

PAID, PROMOTIONAL = "paid", "promotional"
CATEGORIES = (PAID, PROMOTIONAL)
DEFAULT_PRIORITY = 50
MIN_PRIORITY, MAX_PRIORITY = 0, 100
# Live grants one user document holds. 100 grants of ~200 bytes each keep the document (read on
# every charge) near 20 KB, far below Firestore's 1 MiB; past the bound a new grant is folded into
# an existing one (`Wallet.add`), so no credit is lost.
MAX_LIVE_GRANTS = 100
# A user document from before grants existed: its balance becomes this one paid, never-expiring
# grant on first touch, with no ledger entry (nothing moved).
LEGACY_PREFIX = "legacy_"


@dataclass(frozen=True)
class Grant:
    id: str
    amount: int
    remaining: int
    category: str = PAID
    priority: int = DEFAULT_PRIORITY
    source: str = ""
    created_at: datetime | None = None
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        """A grant expires at its `expiresAt` instant: from that second on it can no longer be spent."""
        return self.expires_at is not None and now >= self.expires_at

    def spend_key(self) -> tuple[Any, ...]:
        """Spend order: priority, then soonest expiry (never-expiring last), then promotional before
        paid, then oldest, then id (a total order, so two runs always draw alike)."""
        never = self.expires_at is None
        return (
            self.priority,
            never,
            self.expires_at.timestamp() if self.expires_at else 0.0,
            self.category != PROMOTIONAL,
            self.created_at.timestamp() if self.created_at else 0.0,
            self.id,
        )

    def fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "amount": self.amount,
            "remaining": self.remaining,
            "category": self.category,
            "priority": self.priority,
            "source": self.source,
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
        }

    def terms(self) -> dict[str, Any]:
        """What a ledger entry that creates the grant records, so the grant can be restored later."""
        return {k: v for k, v in self.fields().items() if k not in ("id", "remaining")}

    @classmethod
    def of(cls, data: Mapping[str, Any], *, id: str | None = None, remaining: int | None = None) -> Grant:
        return cls(
            id=str(id if id is not None else data["id"]),
            amount=int(data.get("amount") or 0),
            remaining=int(remaining if remaining is not None else data.get("remaining") or 0),
            category=str(data.get("category") or PAID),
            priority=int(data.get("priority", DEFAULT_PRIORITY) or 0),
            source=str(data.get("source") or ""),
            created_at=data.get("createdAt"),
            expires_at=data.get("expiresAt"),
        )


class Short(Exception):
    """A charge the spendable credits do not cover; `balance` is what a charge could spend now."""

    def __init__(self, balance: int, required: int) -> None:
        super().__init__(f"{balance} credits, {required} required")
        self.balance = balance
        self.required = required


@dataclass(frozen=True)
class Taken:
    """A reversal's split: what its own grant still held, and what became debt."""

    from_grant: int
    to_debt: int


@dataclass(frozen=True)
class Returned:
    """Credits given back to a grant: `kept` stay live, `written_off` went at once (the grant has
    expired or was voided), `repaid` paid debt first (reinstatements only)."""

    kept: int
    written_off: int
    repaid: int = 0


@dataclass
class Wallet:
    grants: list[Grant] = field(default_factory=list)
    debt: int = 0

    # Reading and writing the user document ---------------------------------------------------------

    @classmethod
    def of(cls, uid: str, data: Mapping[str, Any] | None) -> Wallet:
        """The wallet on a user document; one from before grants existed becomes a legacy grant."""
        data = data or {}
        if "grants" not in data:
            credits = int(data.get("credits") or 0)
            if credits > 0:
                return cls([Grant(LEGACY_PREFIX + uid, credits, credits, source="legacy")])
            return cls([], min(credits, 0))
        return cls([Grant.of(g) for g in data.get("grants") or []], int(data.get("debt") or 0))

    def fields(self) -> dict[str, Any]:
        """The user document's money fields: balance, live grants in spend order, debt, next expiry."""
        live = sorted((g for g in self.grants if g.remaining > 0), key=Grant.spend_key)
        expiries = [g.expires_at for g in live if g.expires_at is not None]
        return {
            "credits": self.credits,
            "grants": [g.fields() for g in live],
            "debt": self.debt,
            "nextExpiryAt": min(expiries) if expiries else None,
        }

    @property
    def credits(self) -> int:
        return sum(g.remaining for g in self.grants) + self.debt

    def find(self, grant_id: str) -> Grant | None:
        return next((g for g in self.grants if g.id == grant_id), None)

    def _put(self, grant: Grant) -> None:
        self.grants = [g for g in self.grants if g.id != grant.id]
        if grant.remaining > 0:
            self.grants.append(grant)

    # Movements ------------------------------------------------------------------------------------

    def expire(self, now: datetime) -> list[Grant]:
        """Take every live grant past its expiry out; the grants as they were (each one's remaining
        is written off by an `expiry` entry)."""
        gone = [g for g in self.grants if g.remaining > 0 and g.expired(now)]
        self.grants = [g for g in self.grants if g not in gone]
        return gone

    def add(self, grant: Grant) -> str | None:
        """A new grant: it pays debt first; what is left stays live. Returns the id of the grant it
        was folded into, if any.

        Past MAX_LIVE_GRANTS the new grant's remaining is folded into the live grant of the same
        category that would be spent last, whose expiry moves out to the later of the two: the
        credits are kept, and never expire sooner than granted (they may last longer).
        """
        repaid = min(grant.remaining, -self.debt)
        self.debt += repaid
        stored = replace(grant, remaining=grant.remaining - repaid)
        live = [g for g in self.grants if g.remaining > 0]
        if stored.remaining > 0 and len(live) >= MAX_LIVE_GRANTS:
            same = [g for g in live if g.category == stored.category] or live
            into = max(same, key=Grant.spend_key)
            later = (
                None
                if into.expires_at is None or stored.expires_at is None
                else max(into.expires_at, stored.expires_at)
            )
            self._put(replace(into, remaining=into.remaining + stored.remaining, expires_at=later))
            return into.id
        self._put(stored)
        return None

    def draw(self, cost: int, now: datetime) -> dict[str, int]:
        """Draw `cost` in spend order from unexpired grants: {grantId: credits}. Call `expire` first.

        A charge needs the balance (live remaining plus debt) to cover it; Short otherwise.
        """
        if self.credits < cost:
            raise Short(self.credits, cost)
        draws: dict[str, int] = {}
        left = cost
        for grant in sorted((g for g in self.grants if g.remaining > 0), key=Grant.spend_key):
            if left == 0:
                break
            if grant.expired(now):
                continue
            take = min(grant.remaining, left)
            draws[grant.id] = take
            self._put(replace(grant, remaining=grant.remaining - take))
            left -= take
        if left:  # unreachable after `expire`: the balance counted only live grants
            raise Short(self.credits, cost)
        return draws

    def give_back(self, grant: Grant, credits: int, now: datetime, *, ended: bool = False) -> Returned:
        """Return `credits` to `grant` (live, or restored from its terms): kept when the grant is
        still spendable, written off at once when it has expired or `ended` (voided, written off)."""
        if ended or grant.expired(now):
            return Returned(0, credits)
        live = self.find(grant.id)
        base = live if live is not None else replace(grant, remaining=0)
        self._put(replace(base, remaining=base.remaining + credits))
        return Returned(credits, 0)

    def take(self, grant_id: str, credits: int) -> Taken:
        """A reversal: its share from its own grant's remaining; the rest becomes debt."""
        grant = self.find(grant_id)
        from_grant = min(credits, grant.remaining) if grant is not None else 0
        if grant is not None:
            self._put(replace(grant, remaining=grant.remaining - from_grant))
        self.debt -= credits - from_grant
        return Taken(from_grant, credits - from_grant)

    def reinstate(self, grant: Grant, credits: int, now: datetime, *, ended: bool = False) -> Returned:
        """A reinstatement (failed refund, won dispute): repays debt first, the rest goes back to
        the grant it was taken from (written off at once if that grant has expired or ended)."""
        repaid = min(credits, -self.debt)
        self.debt += repaid
        back = (
            self.give_back(grant, credits - repaid, now, ended=ended) if credits > repaid else Returned(0, 0)
        )
        return Returned(back.kept, back.written_off, repaid)

    def void(self, grant_id: str) -> int:
        """Write a grant off (an operator's void): the credits it still held."""
        grant = self.find(grant_id)
        if grant is None:
            return 0
        self.grants = [g for g in self.grants if g.id != grant_id]
        return grant.remaining

    def close(self) -> int:
        """Erasure's forfeit: every grant and the debt written off; the credits that moved (signed)."""
        moved = -self.credits
        self.grants, self.debt = [], 0
        return moved
