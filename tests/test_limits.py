"""The per-user checkout limit: a fixed-window counter in Firestore (functions/lib/limits.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.stripe_double import StripeDouble
from functions.lib import limits
from functions.lib.errors import RateLimited
from tests.helpers import bearer

T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
BODY = {
    "packId": "starter",
    "successUrl": "http://localhost:5173/ok",
    "cancelUrl": "http://localhost:5173/no",
}


def test_the_window_fills_then_reopens_when_it_ends(db: Any) -> None:
    taken = [
        limits.take_checkout_slot(db, "una", limit=3, window_s=600, now=T0 + timedelta(seconds=s))
        for s in (0, 10, 20)
    ]

    with pytest.raises(RateLimited) as err:
        limits.take_checkout_slot(db, "una", limit=3, window_s=600, now=T0 + timedelta(seconds=100))
    reopened = limits.take_checkout_slot(db, "una", limit=3, window_s=600, now=T0 + timedelta(seconds=600))

    assert taken == [1, 2, 3] and reopened == 1
    assert (
        err.value.status == 429
        and err.value.headers["Retry-After"] == "500"
        and err.value.details["limit"] == 3
    )


def test_a_commit_applied_with_its_answer_lost_counts_the_checkout_once(db: Any, monkeypatch: Any) -> None:
    from google.cloud.firestore_v1.batch import WriteBatch

    real_commit = WriteBatch.commit
    lost: list[bool] = []

    def answer_lost_once(self: WriteBatch, *args: Any, **kwargs: Any) -> Any:
        # What the RPC retry does after a deadline whose commit was in fact applied: it sends the
        # same writes again, and that copy fails its precondition.
        if not lost:
            lost.append(True)
            writes = list(self._write_pbs)
            real_commit(self, *args, **kwargs)
            self._write_pbs = writes
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(WriteBatch, "commit", answer_lost_once)

    taken = limits.take_checkout_slot(db, "una", limit=10, window_s=3600, now=T0)

    assert lost and (taken, db.document("checkout_limits/una").get().get("count")) == (1, 1)


def test_concurrent_requests_never_take_more_than_the_limit(db: Any) -> None:
    start = threading.Barrier(8)

    def take(_: int) -> bool:
        start.wait()
        try:
            limits.take_checkout_slot(db, "vic", limit=3, window_s=3600, now=T0)
        except RateLimited:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(take, range(8)))

    assert results.count(True) == 3
    assert db.document("checkout_limits/vic").get().to_dict()["count"] == 3


def test_checkout_answers_429_with_retry_after_past_the_limit_and_creates_no_session(
    app: Any, db: Any, stripe_api: StripeDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKOUT_LIMIT", "2")
    monkeypatch.setenv("CHECKOUT_WINDOW_S", "3600")

    answers = [app("checkout").post("/", json=BODY, headers=bearer("wes")) for _ in range(3)]
    other = app("checkout").post("/", json=BODY, headers=bearer("xena"))

    assert [a.status_code for a in answers] == [200, 200, 429]
    limited = answers[2]
    assert limited.json["error"] == "rate_limited" and 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert other.status_code == 200 and len(stripe_api.sessions_created) == 3
