"""Per-user limits on actions that cost us or a third party something (docs/LIMITS.md, "Who may spend, and
how often"). One fixed-window rule, `Window`, counted in two kinds of place:

- A window document of its own, taken by `take_slot` before the action: `checkout_limits/{uid}`
  for checkout sessions, `rate_limits/{action}_{uid}` for exports and the polled reads (`credits`,
  `consent`). One optimistic commit reads it and writes count + 1 under a precondition on what it
  read (or `create` when it does not exist), so concurrent requests cannot both take the last slot.
  The commit also stores the call's own token: when a commit is applied but its answer is lost, the
  client library sends it again, that copy fails its precondition, and the re-read finds this
  call's token, so the call counts once.
- Fields of `users/{uid}` for `generate` (`GenerateLimits`): the charge already reads the user and
  writes its balance under a precondition, so its calls, refunded failures and generations in
  flight are checked and counted in that same commit, for no extra round trip.

A full window is a 429 whose Retry-After is the seconds left until the window ends. Windows are
aligned to multiples of the window length since the epoch, so a burst at the end of one window and
the start of the next can reach twice the limit; that bound is what is promised.
"""

from __future__ import annotations

import functools
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from functions.lib import db
from functions.lib.errors import RateLimited
from functions.lib.once import once
from functions.lib.schema import CHECKOUT_LIMITS, RATE_LIMITS

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentReference

    from functions.lib.config import Settings

# The map on users/{uid} that holds generate's counters (docs/ARCHITECTURE.md, "Data model").
GENERATE_FIELD = "generateLimits"
# A generation usually ends within seconds: a caller at its concurrency limit retries about then.
IN_FLIGHT_RETRY_S = 5


@dataclass(frozen=True)
class Window:
    """At most `limit` `what` per fixed window of `window_s` seconds. A stored window is the map
    {windowStart, count}; one from an earlier window counts as empty."""

    what: str
    limit: int
    window_s: int

    def start(self, now: datetime) -> int:
        return math.floor(now.timestamp() / self.window_s) * self.window_s

    def used(self, stored: Mapping[str, Any] | None, now: datetime) -> int:
        stored = stored or {}
        return int(stored.get("count", 0)) if stored.get("windowStart") == self.start(now) else 0

    def refusal(self, now: datetime) -> RateLimited:
        return RateLimited(
            f"At most {self.limit} {self.what} per {self.window_s} s; retry later.",
            retry_after_s=max(1, math.ceil(self.start(now) + self.window_s - now.timestamp())),
            limit=self.limit,
            windowSeconds=self.window_s,
        )

    def require_room(self, stored: Mapping[str, Any] | None, now: datetime) -> int:
        """What the window holds now; RateLimited (429) when it is full."""
        used = self.used(stored, now)
        if used >= self.limit:
            raise self.refusal(now)
        return used

    def counted(self, stored: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
        """The stored window with one more call counted."""
        return {"windowStart": self.start(now), "count": self.used(stored, now) + 1}


def take_slot(
    client: Client, ref: DocumentReference, window: Window, *, now: datetime, fields: Mapping[str, Any]
) -> int:
    """Count one call in the window document `ref` (written with `fields` too); RateLimited (429)
    when the window is full. Returns how many the window now holds."""
    token = uuid.uuid4().hex

    def plan() -> db.Plan[int]:
        snap = ref.get(**db.rpc())
        data = snap.to_dict() or {}
        if data.get("callToken") == token:  # this call's own commit, applied with its answer lost
            return db.Plan(window.used(data, now))
        window.require_room(data, now)
        counted = window.counted(data, now)
        update = {
            **fields,
            **counted,
            "expiresAt": datetime.fromtimestamp(counted["windowStart"] + window.window_s, UTC),
            "callToken": token,
        }
        batch = client.batch()
        if snap.exists:
            batch.update(ref, update, option=db.precondition(client, snap))
        else:
            batch.create(ref, update)
        return db.Plan(int(counted["count"]), batch)

    return db.commit_optimistically(plan)


def take_checkout_slot(client: Client, uid: str, *, limit: int, window_s: int, now: datetime) -> int:
    """Count one checkout session for `uid` in the current window; RateLimited (429) when it is full.

    Returns how many the window now holds.
    """
    ref = client.collection(CHECKOUT_LIMITS).document(uid)
    return take_slot(client, ref, Window("checkouts", limit, window_s), now=now, fields={})


# The actions limited through `rate_limits/{action}_{uid}`.
EXPORT, CREDITS, CONSENT = "export", "credits", "consent"


def window_for(settings: Settings, action: str) -> Window:
    return {
        EXPORT: Window("exports", settings.export_limit, settings.export_window_s),
        CREDITS: Window("credits requests", settings.credits_limit, settings.credits_window_s),
        CONSENT: Window("consent requests", settings.consent_limit, settings.consent_window_s),
    }[action]


def take_call_slot(client: Client, settings: Settings, action: str, uid: str, *, now: datetime) -> int:
    """Count one `action` by `uid` in its window (`rate_limits/{action}_{uid}`); 429 when it is full."""
    ref = client.collection(RATE_LIMITS).document(f"{action}_{uid}")
    fields = {"userId": uid, "action": action}
    return take_slot(client, ref, window_for(settings, action), now=now, fields=fields)


@dataclass(frozen=True)
class GenerateLimits:
    """generate's per-user limits, kept in `users/{uid}.generateLimits`:
    {calls: window, failures: window, inFlight: {generationId: started (epoch s)}}.

    An in-flight entry is removed by the generation's completion or refund. One left by a process
    that was killed is ignored once it is older than `in_flight_expiry_s` (the generate function's
    timeout: no live request is older) and dropped by the next charge, so a crash never holds a
    slot for longer than that, and the settlement job's refund removes it too.
    """

    calls: Window
    failures: Window
    concurrency: int
    in_flight_expiry_s: int

    @classmethod
    def of(cls, settings: Settings) -> GenerateLimits:
        return cls(
            Window("generations", settings.generate_limit, settings.generate_window_s),
            Window(
                "refunded generations", settings.generate_failure_limit, settings.generate_failure_window_s
            ),
            settings.generate_concurrency,
            settings.generate_function_timeout_s,
        )

    def _live(self, stored: Mapping[str, Any], now: datetime) -> dict[str, float]:
        cutoff = now.timestamp() - self.in_flight_expiry_s
        in_flight = stored.get("inFlight") or {}
        return {gid: float(at) for gid, at in in_flight.items() if float(at) > cutoff}

    def admit(self, user: Mapping[str, Any], generation_id: str, now: datetime) -> dict[str, Any]:
        """Check the three limits against the user document as read; the user fields that count
        this call, to write in the charge's commit. RateLimited (429) when one is reached."""
        stored = user.get(GENERATE_FIELD) or {}
        self.failures.require_room(stored.get("failures"), now)
        self.calls.require_room(stored.get("calls"), now)
        live = self._live(stored, now)
        if len(live) >= self.concurrency:
            raise RateLimited(
                f"At most {self.concurrency} generations at once; retry when one has finished.",
                retry_after_s=IN_FLIGHT_RETRY_S,
                limit=self.concurrency,
            )
        return {
            GENERATE_FIELD: {
                **stored,
                "calls": self.calls.counted(stored.get("calls"), now),
                "inFlight": {**live, generation_id: now.timestamp()},
            }
        }

    def settled(
        self, user: Mapping[str, Any], generation_id: str, now: datetime, *, failure: bool
    ) -> dict[str, Any]:
        """The user fields after a refund: the generation no longer in flight and, when `failure`
        counts toward the limit, one more refunded failure in its window."""
        stored = user.get(GENERATE_FIELD) or {}
        live = self._live(stored, now)
        fields = {**stored, "inFlight": {g: at for g, at in live.items() if g != generation_id}}
        if failure:
            fields["failures"] = self.failures.counted(stored.get("failures"), now)
        return {GENERATE_FIELD: fields}


def finished_field(generation_id: str) -> str:
    """The field path that a completion deletes: the generation is no longer in flight. Deleting one
    key needs no read and commutes with every other write of the user document."""
    return f"{GENERATE_FIELD}.inFlight.{generation_id}"


class ConcurrencyLimit:
    """At most `capacity` of one action at once in this process, and one per user: taking a slot never
    waits (a full one is a 429 at once), so a request that does not take one (an erasure) never
    queues behind those that do."""

    def __init__(self, what: str, capacity: int) -> None:
        self.what, self.capacity = what, capacity
        self._lock = threading.Lock()
        self._holders: set[str] = set()

    def take(self, uid: str) -> Callable[[], None]:
        """A slot for `uid`, or RateLimited; call the returned function (once or more) to give it back."""
        with self._lock:
            if uid in self._holders:
                raise RateLimited(
                    f"One {self.what} at a time; retry when yours has finished.", retry_after_s=10
                )
            if len(self._holders) >= self.capacity:
                raise RateLimited(f"Too many {self.what}s running; retry shortly.", retry_after_s=10)
            self._holders.add(uid)
        return functools.partial(self._give_back, uid)

    def _give_back(self, uid: str) -> None:
        with self._lock:
            self._holders.discard(uid)


@once
def running_exports() -> ConcurrencyLimit:
    """This process's exports in progress (EXPORT_CONCURRENCY). Tests call `running_exports.cache_clear()`."""
    from functions.lib.config import get_settings

    return ConcurrencyLimit("export", get_settings().export_concurrency)
