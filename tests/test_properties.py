"""A reference model of every balance, driven by a hypothesis state machine against the real domain
functions and the Firestore emulator.

The model is plain Python: what Stripe has told the backend about each payment (refunds by id with
their amounts and failures, the largest cumulative `amount_refunded`, disputes and how they closed),
which purchases were credited, and each generation's cost and fate. From that alone it says what each
balance must be (docs/ARCHITECTURE.md, "Stripe events"):

    balance = purchases credited - what their payments took back - generations charged and not refunded

Steps: purchases (duplicated, both session event types, unpaid ones), refunds announced by
`refund.created` and by `charge.refunded` in either order, refund failures, disputes opened, won and
lost, generations that succeed, fail or crash, settlement passes and sweeps, and steps run
concurrently in threads (a refund racing its purchase, a sweep racing a late completion). After every
step each stored balance must equal the model's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devstack import stripe_events as se
from tests.helpers import TERMS, assert_ledger_consistent

USERS = ("ann", "bo", "cy")
PAYMENTS = 4  # a small pool, so duplicates and several events per payment happen often
PACKS = {"starter": 100, "creator": 500}
AMOUNT = 1000  # what each payment cost, in cents
COST = {"initial": 50, "iteration": 25}

_env: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _bind(emulator: Any, db: Any, settings: Any) -> None:
    _env.update(emulator=emulator, db=db, settings=settings)


class FailingProvider:
    def generate(self, prompt: str) -> str:
        from functions.lib.models import ModelError

        raise ModelError("model_unavailable")


@dataclass
class Payment:
    """One Checkout payment: what Stripe did (the truth) and what it told the backend (the model's input)."""

    n: int
    credited: bool = False
    issued: list[tuple[str, int]] = field(default_factory=list)  # refunds Stripe made: (id, amount)
    failed: set[str] = field(default_factory=set)
    told_refunds: dict[str, bool] = field(default_factory=dict)  # refund id -> failed, as announced
    told_cumulative: int = 0
    disputes: dict[str, str] = field(default_factory=dict)  # id -> open | won | lost

    @property
    def uid(self) -> str:
        return USERS[self.n % len(USERS)]

    @property
    def pack(self) -> str:
        return "starter" if self.n % 2 else "creator"

    @property
    def pi(self) -> str:
        return f"pi_prop_{self.n}"

    @property
    def charge(self) -> str:
        return f"ch_prop_{self.n}"

    def amount_of(self, refund_id: str) -> int:
        return dict(self.issued)[refund_id]

    def truly_refunded(self) -> int:
        """What Stripe's Charge reports as `amount_refunded` now: refunds made and not failed."""
        return sum(amount for rid, amount in self.issued if rid not in self.failed)

    def taken_back(self) -> int:
        """The credits this payment must have given back, from what the backend was told."""
        credits = PACKS[self.pack]
        if any(status in ("open", "lost") for status in self.disputes.values()):
            return credits
        by_id = sum(self.amount_of(rid) for rid, failed in self.told_refunds.items() if not failed)
        failed = sum(self.amount_of(rid) for rid, failed in self.told_refunds.items() if failed)
        refunded = min(AMOUNT, max(by_id, self.told_cumulative - failed, 0))
        return credits * refunded // AMOUNT


class Credits(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        import dataclasses

        from functions.lib import terms
        from functions.lib.breaker import CircuitBreaker

        _env["emulator"].clear()
        # The money invariants, not the abuse limits (tests/test_generate_limits.py), are under test here.
        self.db = _env["db"]
        self.settings = dataclasses.replace(
            _env["settings"], generate_concurrency=10**6, generate_limit=10**6, generate_failure_limit=10**6
        )
        self.breaker = CircuitBreaker(10**6, 1, 1)
        for uid in USERS:
            terms.accept(self.db, uid, TERMS, TERMS)
        self.payments = [Payment(n) for n in range(PAYMENTS)]
        self.generations: dict[
            str, tuple[str, int, str]
        ] = {}  # id -> (uid, cost, charged | succeeded | refunded)
        self.projects: dict[str, list[str]] = {uid: [] for uid in USERS}
        self.later = datetime.now(UTC) + timedelta(seconds=self.settings.stale_charge_after_s + 60)

    # The model -----------------------------------------------------------------------------------

    def model_balance(self, uid: str) -> int:
        bought = sum(PACKS[p.pack] - p.taken_back() for p in self.payments if p.credited and p.uid == uid)
        spent = sum(
            cost for owner, cost, status in self.generations.values() if owner == uid and status != "refunded"
        )
        return bought - spent

    def deliver(self, event: dict[str, Any]) -> None:
        from functions.lib import payments

        outcome = payments.handle_event(self.db, self.settings, event)
        assert outcome.action != payments.PROBLEM, outcome

    # Purchases ------------------------------------------------------------------------------------

    def purchase_event(self, p: Payment, kind: str) -> dict[str, Any]:
        session = f"cs_prop_{p.n}"
        if kind == "async":
            return se.async_payment_succeeded(session, p.uid, p.pack, p.pi)
        return se.checkout_completed(session, p.uid, p.pack, p.pi, paid=kind == "completed")

    @rule(n=st.integers(0, PAYMENTS - 1), kind=st.sampled_from(["completed", "async", "unpaid"]))
    def purchase(self, n: int, kind: str) -> None:
        p = self.payments[n]
        self.deliver(self.purchase_event(p, kind))
        p.credited = p.credited or kind != "unpaid"

    # Refunds --------------------------------------------------------------------------------------

    def new_refund(self, p: Payment, share: float) -> tuple[str, int] | None:
        room = AMOUNT - p.truly_refunded()
        if room <= 0:
            return None
        refund = (f"re_prop_{p.n}_{len(p.issued)}", max(1, int(room * share)))
        p.issued.append(refund)
        return refund

    def refund_created(self, p: Payment, refund_id: str) -> dict[str, Any]:
        p.told_refunds.setdefault(refund_id, False)
        return se.refund_event("refund.created", refund_id, p.charge, p.pi, p.amount_of(refund_id), "pending")

    @rule(
        n=st.integers(0, PAYMENTS - 1),
        share=st.sampled_from([0.25, 0.5, 1.0]),
        announce=st.sampled_from(["refund", "charge", "both"]),
    )
    def refund(self, n: int, share: float, announce: str) -> None:
        p = self.payments[n]
        made = self.new_refund(p, share)
        if made is None:
            return
        if announce in ("refund", "both"):
            self.deliver(self.refund_created(p, made[0]))
        if announce in ("charge", "both"):
            self.announce_cumulative(n)

    @rule(n=st.integers(0, PAYMENTS - 1))
    def announce_cumulative(self, n: int) -> None:
        """`charge.refunded` with the charge's refunded total as Stripe reports it now."""
        p = self.payments[n]
        total = p.truly_refunded()
        if total == 0:
            return
        p.told_cumulative = max(p.told_cumulative, total)
        self.deliver(se.charge_refunded(p.charge, p.pi, AMOUNT, total))

    @rule(n=st.integers(0, PAYMENTS - 1), data=st.data())
    def refund_fails(self, n: int, data: st.DataObject) -> None:
        p = self.payments[n]
        open_refunds = [rid for rid, _ in p.issued if rid not in p.failed]
        if not open_refunds:
            return
        rid = data.draw(st.sampled_from(open_refunds))
        p.failed.add(rid)
        p.told_refunds[rid] = True
        self.deliver(se.refund_event("refund.failed", rid, p.charge, p.pi, p.amount_of(rid), "failed"))

    # Disputes -------------------------------------------------------------------------------------

    @rule(n=st.integers(0, PAYMENTS - 1), step=st.sampled_from(["created", "won", "lost"]))
    def dispute(self, n: int, step: str) -> None:
        p = self.payments[n]
        dispute_id = f"dp_prop_{n}"
        known = p.disputes.get(dispute_id)
        if step == "created":
            self.deliver(se.dispute_created(dispute_id, p.charge, p.pi, AMOUNT))
            if known is None:
                p.disputes[dispute_id] = "open"
        else:
            self.deliver(se.dispute_closed(dispute_id, p.charge, p.pi, step, AMOUNT))
            if known in (None, "open"):
                p.disputes[dispute_id] = step

    # Generations ----------------------------------------------------------------------------------

    def request(self, uid: str, iterate: bool) -> Any:
        from functions.lib import generations

        project = self.projects[uid][-1] if iterate and self.projects[uid] else None
        return generations.GenerationRequest(uid, "prompt", project)

    def expect_charge(self, uid: str, req: Any, attempt: Callable[[], Any]) -> Any:
        """Run `attempt`; the model says whether it may charge (402 exactly when the balance is short)."""
        from functions.lib.errors import InsufficientCredits

        cost = COST[req.kind]
        affordable = self.model_balance(uid) >= cost
        try:
            result = attempt()
        except InsufficientCredits as short:
            assert not affordable and short.details["balance"] == self.model_balance(uid)
            return None
        assert affordable
        return result

    @rule(
        uid=st.sampled_from(USERS),
        fate=st.sampled_from(["succeeds", "fails", "crashes"]),
        iterate=st.booleans(),
    )
    def generate(self, uid: str, fate: str, iterate: bool) -> None:
        from functions.lib import generations
        from functions.lib.errors import GenerationFailed
        from functions.lib.models import OfflineProvider

        req = self.request(uid, iterate)
        if fate == "crashes":  # charged, then the process dies before the model answers
            charged = self.expect_charge(uid, req, lambda: generations.charge(self.db, self.settings, req))
            if charged is not None:
                self.generations[charged.generation_id] = (uid, charged.cost, "charged")
            return
        provider = OfflineProvider() if fate == "succeeds" else FailingProvider()

        def attempt() -> Any:
            try:
                return generations.generate(self.db, self.settings, provider, req, self.breaker)
            except GenerationFailed as failed:
                return failed

        done = self.expect_charge(uid, req, attempt)
        if isinstance(done, GenerationFailed):
            self.generations[f"failed-{len(self.generations)}"] = (uid, COST[req.kind], "refunded")
        elif done is not None:
            self.generations[done.project_id + done.version_id] = (uid, done.credits_charged, "succeeded")
            if req.kind == "initial":
                self.projects[uid].append(done.project_id)

    def settle_all_crashed(self) -> None:
        for gen_id, (uid, cost, status) in list(self.generations.items()):
            if status == "charged":
                self.generations[gen_id] = (uid, cost, "refunded")

    @rule()
    def settlement_job(self) -> None:
        from functions.lib import settlement

        settlement.settle_stale_charges(self.db, self.settings, now=self.later)
        self.settle_all_crashed()

    @rule()
    def sweep(self) -> None:
        from functions.lib.retention import sweep

        sweep(self.db, self.settings, now=self.later)
        self.settle_all_crashed()

    # Concurrent steps -----------------------------------------------------------------------------

    @rule(n=st.integers(0, PAYMENTS - 1), kind=st.sampled_from(["completed", "async"]))
    def refund_races_its_purchase(self, n: int, kind: str) -> None:
        p = self.payments[n]
        made = self.new_refund(p, 0.5)
        if made is None:
            return
        events = [self.purchase_event(p, kind), self.refund_created(p, made[0])]
        start = threading.Barrier(2)

        def send(event: dict[str, Any]) -> None:
            start.wait(timeout=10)
            self.deliver(event)

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(send, events))
        p.credited = True

    @rule(uid=st.sampled_from(USERS))
    def sweep_races_a_late_completion(self, uid: str) -> None:
        from functions.lib import generations, settlement
        from functions.lib.errors import GenerationFailed

        req = self.request(uid, iterate=False)
        charged = self.expect_charge(uid, req, lambda: generations.charge(self.db, self.settings, req))
        if charged is None:
            return
        start = threading.Barrier(2)

        def complete() -> None:
            start.wait(timeout=10)
            with contextlib.suppress(GenerationFailed):  # the settlement refunded it first
                generations.complete(self.db, charged, "late output")

        def settle() -> None:
            start.wait(timeout=10)
            settlement.settle_stale_charges(self.db, self.settings, now=self.later)

        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(complete), pool.submit(settle)]:
                future.result()
        status = self.db.collection("generations").document(charged.generation_id).get().get("status")
        assert status in ("succeeded", "refunded")
        self.generations[charged.generation_id] = (uid, charged.cost, status)
        self.settle_all_crashed()  # the pass also refunded every older crashed charge

    # After every step -----------------------------------------------------------------------------

    @invariant()
    def every_balance_equals_the_model(self) -> None:
        if not hasattr(self, "db"):
            return
        stored = {
            u.id: int((u.to_dict() or {}).get("credits", 0)) for u in self.db.collection("users").stream()
        }
        assert {uid: stored.get(uid, 0) for uid in USERS} == {uid: self.model_balance(uid) for uid in USERS}
        assert_ledger_consistent(self.db)

    @precondition(lambda self: hasattr(self, "db"))
    @invariant()
    def once_every_refund_is_announced_the_model_is_stripes_truth(self) -> None:
        """The model's rule converges: told every refund by id and every failure, without disputes,
        a payment has given back exactly the refunded share of what Stripe really refunded."""
        for p in self.payments:
            told_all = p.told_refunds == {rid: rid in p.failed for rid, _ in p.issued}
            if told_all and not p.disputes:
                assert p.taken_back() == PACKS[p.pack] * p.truly_refunded() // AMOUNT

    @precondition(lambda self: hasattr(self, "db"))
    @invariant()
    def no_purchase_gives_back_more_than_it_gave(self) -> None:
        for p in self.payments:
            snap = self.db.collection("payments").document(p.pi).get()
            if snap.exists and p.credited:
                assert 0 <= snap.get("reversedCredits") <= PACKS[p.pack]


# In CI: 15 examples of up to 20 steps each (about 25 s on this machine, see the README).
Credits.TestCase.settings = settings(
    max_examples=15, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
)
TestCreditsAgainstTheModel = Credits.TestCase
