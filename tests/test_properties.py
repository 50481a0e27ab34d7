"""Property-based: random interleavings of purchases (with duplicates), generations (succeeding,
failing, crashing), refunds, disputes and sweeps against the emulator. After every step: each
balance equals its ledger sum and is >= 0, each paid session is credited once, reversals of a
purchase never exceed it; after a sweep no generation is left `charged`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from devstack import stripe_events
from tests.conftest import TERMS, assert_ledger_consistent

USERS = ("ann", "bo", "cy")
SESSIONS = 6  # a small pool, so duplicates and two event types per session happen often
PACK_CREDITS = {"starter": 100, "creator": 500}
AMOUNT = 1000  # cents per session in these events

_env: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _bind(emulator: Any, db: Any, settings: Any) -> None:
    _env.update(emulator=emulator, db=db, settings=settings)


class FailingProvider:
    name = "failing"

    def generate(self, prompt: str) -> str:
        from functions.lib.models import ModelError

        raise ModelError("model_unavailable")


class Ledger(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        from functions.lib import consent

        _env["emulator"].clear()
        self.db, self.settings = _env["db"], _env["settings"]
        for uid in USERS:
            consent.accept(self.db, uid, TERMS, TERMS)
        self.paid: set[int] = set()
        self.refunded: dict[int, int] = {}
        self.projects: dict[str, list[str]] = {uid: [] for uid in USERS}
        self.swept = False

    def _session(self, n: int) -> tuple[str, str, str, str]:
        uid = USERS[n % len(USERS)]
        pack = "starter" if n % 2 else "creator"
        return f"cs_prop_{n}", uid, pack, f"pi_prop_{n}"

    @rule(n=st.integers(0, SESSIONS - 1), kind=st.sampled_from(["completed", "async", "unpaid"]))
    def deliver_purchase(self, n: int, kind: str) -> None:
        from functions.lib import payments

        session, uid, pack, pi = self._session(n)
        if kind == "async":
            event = stripe_events.async_payment_succeeded(session, uid, pack, pi)
        else:
            event = stripe_events.checkout_completed(session, uid, pack, pi, paid=kind == "completed")
        payments.handle_event(self.db, self.settings, event)
        if kind != "unpaid":
            self.paid.add(n)

    @rule(n=st.integers(0, SESSIONS - 1), step=st.integers(1, AMOUNT))
    def deliver_refund(self, n: int, step: int) -> None:

        _, _, _, pi = self._session(n)
        total = min(AMOUNT, self.refunded.get(n, 0) + step)
        self.refunded[n] = total
        self._reverse(n, stripe_events.charge_refunded(f"ch_prop_{n}", pi, AMOUNT, total))

    def _reverse(self, n: int, event: dict[str, Any]) -> None:
        """A reversal applies once its purchase is credited; before that it asks Stripe to retry."""
        from functions.lib import payments
        from functions.lib.errors import Unavailable

        try:
            payments.handle_event(self.db, self.settings, event)
        except Unavailable:
            assert n not in self.paid

    @rule(n=st.integers(0, SESSIONS - 1))
    def deliver_dispute(self, n: int) -> None:

        _, _, _, pi = self._session(n)
        self._reverse(n, stripe_events.dispute_created(f"dp_prop_{n}", f"ch_prop_{n}", pi, AMOUNT))

    @rule(uid=st.sampled_from(USERS), outcome=st.sampled_from(["ok", "fail", "crash"]), iterate=st.booleans())
    def generate(self, uid: str, outcome: str, iterate: bool) -> None:
        from functions.lib import generations
        from functions.lib.errors import GenerationFailed, InsufficientCredits, ProjectNotFound
        from functions.lib.models import OfflineProvider

        project = self.projects[uid][-1] if iterate and self.projects[uid] else None
        req = generations.GenerationRequest(uid, "prompt", project)
        try:
            if outcome == "crash":  # charged, then the process dies before the model answers
                generations.charge(self.db, self.settings, req)
                self.swept = False
                return
            provider = OfflineProvider() if outcome == "ok" else FailingProvider()
            done = generations.generate(self.db, self.settings, provider, req)
            if not iterate:
                self.projects[uid].append(done.project_id)
        except (InsufficientCredits, GenerationFailed, ProjectNotFound):
            pass

    @rule()
    def sweep(self) -> None:
        from functions.lib.retention import sweep

        later = datetime.now(UTC) + timedelta(seconds=self.settings.stale_charge_after_s + 60)
        sweep(self.db, self.settings, now=later)
        self.swept = True

    @invariant()
    def balances_match_the_ledger(self) -> None:
        if hasattr(self, "db"):
            assert_ledger_consistent(self.db)

    @invariant()
    def each_paid_session_is_credited_once_and_reversals_stay_within_it(self) -> None:
        if not hasattr(self, "db"):
            return
        docs = [d.to_dict() | {"id": d.id} for d in self.db.collection("credit_transactions").stream()]
        purchases = {d["id"] for d in docs if d["type"] == "purchase"}
        assert purchases == {f"purchase_cs_prop_{n}" for n in self.paid}
        for n in self.paid:
            _, _, pack, pi = self._session(n)
            reversed_total = -sum(d["amount"] for d in docs if d["type"] == "reversal" and d["metadata"].get("stripePaymentIntentId") == pi)
            assert 0 <= reversed_total <= PACK_CREDITS[pack]

    @invariant()
    def nothing_is_left_charged_after_a_sweep(self) -> None:
        if hasattr(self, "db") and self.swept:
            charged = [g.id for g in self.db.collection("generations").stream() if g.to_dict()["status"] == "charged"]
            assert charged == []


Ledger.TestCase.settings = settings(max_examples=12, stateful_step_count=14, deadline=None, suppress_health_check=list(HealthCheck))
TestLedgerInterleavings = Ledger.TestCase
