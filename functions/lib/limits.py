"""Per-user limits on actions that cost us or a third party something: today, checkout sessions.

A fixed window per user: `checkout_limits/{uid}` holds the window's start and a count. One
optimistic commit reads it and writes count + 1 under a precondition on what it read (or `create`
when it does not exist), so concurrent requests cannot both take the last slot. A full window is
a 429 whose Retry-After is the seconds left until the window ends. The commit also stores the
call's own token: when a commit is applied but its answer is lost, the client library sends it
again, that copy fails its precondition, and the re-read finds this call's token, so the call
counts once.

Windows are aligned to multiples of the window length since the epoch, so a burst at the end of
one window and the start of the next can reach twice the limit; that bound is what is promised.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from functions.lib import db
from functions.lib.errors import RateLimited
from functions.lib.schema import CHECKOUT_LIMITS

if TYPE_CHECKING:
    from google.cloud.firestore import Client


def take_checkout_slot(client: Client, uid: str, *, limit: int, window_s: int, now: datetime) -> int:
    """Count one checkout session for `uid` in the current window; RateLimited (429) when it is full.

    Returns how many the window now holds.
    """
    ref = client.collection(CHECKOUT_LIMITS).document(uid)
    window_start = math.floor(now.timestamp() / window_s) * window_s
    window_end = window_start + window_s
    token = uuid.uuid4().hex

    def plan() -> db.Plan[int]:
        snap = ref.get(**db.rpc())
        data = snap.to_dict() or {}
        used = int(data.get("count", 0)) if data.get("windowStart") == window_start else 0
        if data.get("callToken") == token:  # this call's own commit, applied with its answer lost
            return db.Plan(used)
        if used >= limit:
            raise RateLimited(
                f"At most {limit} checkouts per {window_s} s; retry later.",
                retry_after_s=max(1, math.ceil(window_end - now.timestamp())),
                limit=limit,
                windowSeconds=window_s,
            )
        fields = {
            "windowStart": window_start,
            "count": used + 1,
            "expiresAt": datetime.fromtimestamp(window_end, UTC),
            "callToken": token,
        }
        batch = client.batch()
        if snap.exists:
            batch.update(ref, fields, option=db.precondition(client, snap))
        else:
            batch.create(ref, fields)
        return db.Plan(used + 1, batch)

    return db.commit_optimistically(plan)
