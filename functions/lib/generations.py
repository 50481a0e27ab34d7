"""Generations: charge, generate, save the version, or refund exactly once.

The money path of `generate` (docs/ARCHITECTURE.md, "Money"):
1. `charge`: one optimistic commit reads the user (consent and balance), the project (iterations)
   and, when an Idempotency-Key names it, the generation id, then writes the charge entry, the new
   balance and `generations/{id}` with status `charged`. The generation id derives from (user,
   Idempotency-Key), so a key can charge at most once; a replay answers from what is stored.
2. The model is called outside any commit, with its own timeout.
3. `complete`: version, project and status `succeeded` in one commit, under a precondition on
   the generation as charged (a concurrent refund by the sweep makes it fail, never both).
4. `refund`: status `charged` -> `refunded` plus `refund_{id}` in one commit, exactly once. The
   nightly sweep settles charges that a killed process left behind through the same function.

Limits (`lib/limits.py`, `GenerateLimits`): the charge's commit checks and counts the user's calls,
refunded failures and generations in flight on `users/{uid}`, which it writes anyway; the
completion deletes the generation's in-flight key and the refund removes it (and counts the
failure, by REFUND_POLICY) in their own commits. The model's circuit breaker (`lib/breaker.py`) is
asked before the charge, so an open breaker charges nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from functions.lib import analytics, clock, db, ledger, limits, models, schema, terms
from functions.lib.breaker import CircuitBreaker
from functions.lib.config import Settings
from functions.lib.errors import (
    Contention,
    GenerationFailed,
    IdempotencyKeyReused,
    InProgress,
    NotFound,
    ProjectNotFound,
    Unavailable,
)
from functions.lib.models import ModelError, Provider
from functions.lib.schema import GENERATIONS, PROJECTS, VERSIONS
from functions.lib.wallet import LEGACY_PREFIX

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentSnapshot

log = logging.getLogger(__name__)

CHARGED, SUCCEEDED, REFUNDED = "charged", "succeeded", "refunded"
INITIAL, ITERATION = "initial", "iteration"
MAX_PROMPT_CHARS = 8000
# Why a crashed charge was refunded (docs/ARCHITECTURE.md, "Settlement").
STALE_CHARGE_REASON = "stale_charge"
USER, OURS = "user", "ours"


@dataclass(frozen=True)
class RefundPolicy:
    """Every failure is refunded; `fault` tells the user whose it was, and `counts` whether it counts
    toward GENERATE_FAILURE_LIMIT (failures a prompt can provoke, and that may bill model tokens)."""

    fault: str
    counts: bool


# docs/LIMITS.md, "Who may spend, and how often" has the same table with the reasons for each row.
REFUND_POLICY = {
    models.BLOCKED: RefundPolicy(USER, True),
    models.OUTPUT_LIMIT: RefundPolicy(USER, True),
    models.REJECTED: RefundPolicy(USER, True),
    models.TIMEOUT: RefundPolicy(OURS, True),
    models.EMPTY: RefundPolicy(OURS, True),
    models.UPSTREAM_RATE_LIMITED: RefundPolicy(OURS, False),
    models.UPSTREAM_UNAVAILABLE: RefundPolicy(OURS, False),
    "model_error": RefundPolicy(OURS, False),
    "save_failed": RefundPolicy(OURS, False),
    "project_deleted": RefundPolicy(OURS, False),
    STALE_CHARGE_REASON: RefundPolicy(OURS, False),
    "account_erased": RefundPolicy(OURS, False),
}
# A reason not in the table (a new one) counts: failing closed bounds what it can cost.
UNLISTED = RefundPolicy(OURS, True)


def policy_of(reason: str) -> RefundPolicy:
    return REFUND_POLICY.get(reason, UNLISTED)


def failed(refunded: object, balance: object, reason: str) -> GenerationFailed:
    """The 502 of a refunded generation: what came back, the balance, why, and whose fault it was."""
    return GenerationFailed(refunded=refunded, balance=balance, reason=reason, fault=policy_of(reason).fault)


@dataclass(frozen=True)
class GenerationRequest:
    uid: str
    prompt: str
    project_id: str | None = None
    idempotency_key: str | None = None

    @property
    def kind(self) -> str:
        return ITERATION if self.project_id else INITIAL

    def fingerprint(self) -> str:
        """What an Idempotency-Key is bound to: the same key with another body is a 422."""
        body = json.dumps({"prompt": self.prompt, "projectId": self.project_id}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def generation_id(self) -> str:
        if self.idempotency_key is None:
            return "g" + uuid.uuid4().hex
        digest = hashlib.sha256(f"{self.uid}\x00{self.idempotency_key}".encode()).hexdigest()
        return "g" + digest[:32]


@dataclass(frozen=True)
class Charge:
    """A committed charge, with what `complete` needs to commit without reading again."""

    generation_id: str
    project_id: str
    kind: str
    cost: int
    balance: int
    prompt: str
    uid: str
    charged_at: datetime
    version_count: int


@dataclass(frozen=True)
class Completed:
    project_id: str
    version_id: str
    output: str
    credits_charged: int
    balance: int
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "projectId": self.project_id,
            "versionId": self.version_id,
            "output": self.output,
            "creditsCharged": self.credits_charged,
            "balance": self.balance,
        }


@dataclass(frozen=True)
class Refund:
    generation_id: str
    applied: bool
    status: str
    amount: int
    balance: int


class _ProjectGone(Exception):
    """The project disappeared between charge and completion (deleted by the sweep)."""


class _Stale(Exception):
    """A replayed Idempotency-Key whose charge is still `charged` long after any live request ended."""


def cost_of(settings: Settings, kind: str) -> int:
    return settings.initial_cost if kind == INITIAL else settings.iteration_cost


def _generations(client: Client) -> Any:
    return client.collection(GENERATIONS)


def _replay(
    client: Client, req: GenerationRequest, gen: DocumentSnapshot, stale_before: datetime
) -> Completed:
    """Answer a repeated Idempotency-Key from the stored generation, or raise what it ended as."""
    data = gen.to_dict() or {}
    if data.get("userId") != req.uid or data.get("requestHash") != req.fingerprint():
        raise IdempotencyKeyReused()
    status = data.get("status")
    if status == CHARGED:
        created = data.get("createdAt")
        if isinstance(created, datetime) and created < stale_before:
            raise _Stale()  # its process died: settle it now instead of answering 409 until a job does
        raise InProgress(headers={"Retry-After": "2"})
    if status == REFUNDED:
        raise failed(data.get("cost"), data.get("balanceAfterRefund"), str(data.get("error")))
    version = (
        client.collection(PROJECTS)
        .document(data["projectId"])
        .collection(VERSIONS)
        .document(data["versionId"])
        .get(**db.rpc())
    )
    output = (version.to_dict() or {}).get("output", "") if version.exists else ""
    return Completed(
        data["projectId"],
        data["versionId"],
        output,
        int(data["cost"]),
        int(data["balanceAfterCharge"]),
        replayed=True,
    )


def stale_cutoff(settings: Settings, now: datetime | None = None) -> datetime:
    """A `charged` generation created before this is stale: its process is gone (STALE_CHARGE_AFTER_S)."""
    return (now or datetime.now(UTC)) - timedelta(seconds=settings.stale_charge_after_s)


def charge(client: Client, settings: Settings, req: GenerationRequest) -> Charge | Completed:
    """Step 1: check consent, ownership and balance, and charge, in one atomic commit.

    Returns the stored answer instead when the Idempotency-Key already finished; a key whose
    charge a dead process left behind is refunded now (`_settle_stale_replay`).
    """
    generation_id = req.generation_id()
    project_id = req.project_id or "p" + generation_id[1:]
    user_ref = client.collection(schema.USERS).document(req.uid)
    gen_ref = _generations(client).document(generation_id)
    project_refs = [client.collection(PROJECTS).document(project_id)] if req.kind == ITERATION else []
    # Marks this call's own charge: when a commit is applied but its answer is lost, the client
    # library re-sends it and the re-read finds the generation; the token tells "mine" from a
    # concurrent request with the same Idempotency-Key.
    token = uuid.uuid4().hex
    now = datetime.now(UTC)
    stale_before = stale_cutoff(settings, now)
    # Without a key the generation id is new and random: nothing can be stored under it before this
    # call's own first commit, so only a re-run (which may follow that commit, applied with its answer
    # lost) reads it. The usual call reads one document less.
    fresh_id = req.idempotency_key is None

    def plan() -> db.Plan[Charge | Completed]:
        nonlocal fresh_id
        if fresh_id:
            fresh_id = False
            gen = None
            user, *maybe_project = db.get_all(client, [user_ref, *project_refs])
        else:
            user, gen, *maybe_project = db.get_all(client, [user_ref, gen_ref, *project_refs])
        project = maybe_project[0] if maybe_project else None
        if gen is not None and gen.exists:
            return db.Plan(_existing(client, req, gen, project, token, stale_before))
        terms.require_current(user, settings.terms_version)
        counted = limits.GenerateLimits.of(settings).admit(user.to_dict() or {}, generation_id, now)
        return _stage_charge(client, settings, req, user, project, generation_id, project_id, token, counted)

    try:
        try:
            return db.commit_optimistically(plan)
        except Contention:
            raise
        except Unavailable:
            # The charge may have been applied with its answer lost: one more look (or try) tells.
            try:
                return db.commit_optimistically(plan, attempts=1)
            except Unavailable:
                raise Unavailable(
                    "Could not confirm the charge; if credits were taken they will be refunded automatically."
                ) from None
    except _Stale:
        return _settle_stale_replay(client, req, generation_id, plan)


def _existing(
    client: Client,
    req: GenerationRequest,
    gen: DocumentSnapshot,
    project: DocumentSnapshot | None,
    token: str,
    stale_before: datetime,
) -> Charge | Completed:
    """The generation already exists: this call's own charge (its commit's answer was lost), or a replay."""
    data = gen.to_dict() or {}
    if data.get("chargeToken") != token or data.get("status") != CHARGED:
        return _replay(client, req, gen, stale_before)
    version_count = int((project.to_dict() or {}).get("versionCount") or 0) if project is not None else 0
    return Charge(
        gen.id,
        data["projectId"],
        req.kind,
        int(data["cost"]),
        int(data["balanceAfterCharge"]),
        req.prompt,
        req.uid,
        gen.update_time,
        version_count,
    )


def _stage_charge(
    client: Client,
    settings: Settings,
    req: GenerationRequest,
    user: DocumentSnapshot,
    project: DocumentSnapshot | None,
    generation_id: str,
    project_id: str,
    token: str,
    counted: dict[str, Any],
) -> db.Plan[Charge | Completed]:
    """The charge's batch: ledger entry and balance with the user's limit counters (`counted`), the
    `charged` generation, and for an iteration the project's `updatedAt` under a precondition (a
    sweep that marked the project first makes the commit fail and the retry answers 404; a sweep
    after it sees the project fresh)."""
    from google.cloud.firestore import SERVER_TIMESTAMP

    cost = cost_of(settings, req.kind)
    batch = client.batch()
    version_count = 0
    if project is not None:
        fields = project.to_dict() or {}
        if not project.exists or fields.get("ownerId") != req.uid or fields.get("deletingAt") is not None:
            raise ProjectNotFound()
        version_count = int(fields.get("versionCount") or 0)
        batch.update(
            project.reference, {"updatedAt": SERVER_TIMESTAMP}, option=db.precondition(client, project)
        )
    book = ledger.Book(client, batch, user, clock.now())
    draws = book.charge(generation_id, cost, {"generationId": generation_id, "projectId": project_id})
    balance = book.close(also=counted)
    record = {
        "userId": req.uid,
        "projectId": project_id,
        "kind": req.kind,
        "cost": cost,
        "status": CHARGED,
        "requestHash": req.fingerprint(),
        "chargeToken": token,
        "balanceAfterCharge": balance,
        "draws": draws,  # {grantId: credits}: what a refund gives back, to the same grants
        "shard": db.shard_of(generation_id),
        "createdAt": SERVER_TIMESTAMP,
        "updatedAt": SERVER_TIMESTAMP,
        "error": None,
    }
    batch.create(_generations(client).document(generation_id), record)

    def charged(commit_time: datetime) -> Charge:
        return Charge(
            generation_id,
            project_id,
            req.kind,
            cost,
            balance,
            req.prompt,
            req.uid,
            commit_time,
            version_count,
        )

    return db.Plan(batch=batch, then=charged)


def _settle_stale_replay(client: Client, req: GenerationRequest, generation_id: str, plan: Any) -> Completed:
    """A replayed key whose process died: refund it now and answer that, not 409 until a job does."""
    settled = refund(client, generation_id, req.uid, STALE_CHARGE_REASON)
    if settled.applied:
        raise failed(settled.amount, settled.balance, STALE_CHARGE_REASON)
    # Settled first by another path (its completion landed after all, or a refund did): answer from
    # what is stored, as every later replay of the key will.
    result: Completed = db.commit_optimistically(plan)
    return result


def complete(client: Client, ch: Charge, output: str) -> Completed:
    """Step 3: version, project and status `succeeded` in one commit.

    The first attempt trusts the state the charge wrote (its commit time is the generation's and,
    for iterations, the project's update time), so the usual case costs one round trip; a retry
    reads both again.
    """
    gen_ref = _generations(client).document(ch.generation_id)
    project_ref = client.collection(PROJECTS).document(ch.project_id)
    first_attempt = True

    def plan() -> db.Plan[Completed]:
        nonlocal first_attempt
        if first_attempt:
            first_attempt = False
            return _stage_completion(client, ch, output, ch.version_count, ch.charged_at, ch.charged_at)
        gen, project = db.get_all(client, [gen_ref, project_ref])
        data = gen.to_dict() or {}
        if data.get("status") == SUCCEEDED:
            return db.Plan(Completed(ch.project_id, data["versionId"], output, ch.cost, ch.balance))
        if data.get("status") != CHARGED:
            raise failed(data.get("cost"), data.get("balanceAfterRefund"), str(data.get("error")))
        if ch.kind == ITERATION and (
            not project.exists or (project.to_dict() or {}).get("deletingAt") is not None
        ):
            raise _ProjectGone()
        count = int((project.to_dict() or {}).get("versionCount") or 0) if project.exists else 0
        return _stage_completion(client, ch, output, count, gen.update_time, project.update_time)

    return db.commit_optimistically(plan)


def _stage_completion(
    client: Client,
    ch: Charge,
    output: str,
    version_count: int,
    gen_time: datetime,
    project_time: datetime | None,
) -> db.Plan[Completed]:
    """The success batch: the version, the project (created, or updated under a precondition), the
    generation's status, under a precondition on the generation as charged, and the user's
    in-flight key deleted."""
    from google.cloud.firestore import DELETE_FIELD, SERVER_TIMESTAMP

    project_ref = client.collection(PROJECTS).document(ch.project_id)
    number, version_id = version_count + 1, ch.generation_id
    version = {
        "number": number,
        "prompt": ch.prompt,
        "output": output,
        "generationId": ch.generation_id,
        "createdAt": SERVER_TIMESTAMP,
    }
    batch = client.batch()
    batch.create(project_ref.collection(VERSIONS).document(version_id), version)
    project_fields = {"updatedAt": SERVER_TIMESTAMP, "versionCount": number, "latestVersionId": version_id}
    if ch.kind == INITIAL:
        batch.create(
            project_ref,
            {
                "ownerId": ch.uid,
                "createdAt": SERVER_TIMESTAMP,
                "deletingAt": None,
                "shard": db.shard_of(ch.project_id),
                **project_fields,
            },
        )
    else:
        batch.update(project_ref, project_fields, option=client.write_option(last_update_time=project_time))
    batch.update(
        _generations(client).document(ch.generation_id),
        {"status": SUCCEEDED, "versionId": version_id, "updatedAt": SERVER_TIMESTAMP},
        option=client.write_option(last_update_time=gen_time),
    )
    batch.update(
        client.collection(schema.USERS).document(ch.uid),
        {limits.finished_field(ch.generation_id): DELETE_FIELD},
    )
    props = {"generationId": ch.generation_id, "projectId": ch.project_id, "kind": ch.kind, "cost": ch.cost}
    analytics.stage_event(
        client, batch, analytics.GENERATION_SUCCEEDED, ch.uid, props, event_id=f"{ch.generation_id}-succeeded"
    )
    return db.Plan(Completed(ch.project_id, version_id, output, ch.cost, ch.balance), batch)


def refund(
    client: Client, generation_id: str, uid: str, reason: str, gate: limits.GenerateLimits | None = None
) -> Refund:
    """Step 4: refund a `charged` generation exactly once (`refund_{id}`); a settled one is left as it is.

    The same commit takes the generation out of the user's in-flight ones and, when its reason
    counts (REFUND_POLICY), counts a failure in the user's window (`gate`: the limits of the
    settings in force; the default ones when the caller has none).
    """
    from google.cloud.firestore import SERVER_TIMESTAMP

    from functions.lib.config import get_settings

    gate = gate or limits.GenerateLimits.of(get_settings())
    counts = policy_of(reason).counts

    gen_ref = _generations(client).document(generation_id)
    user_ref = client.collection(schema.USERS).document(uid)

    def plan() -> db.Plan[Refund]:
        gen, user = db.get_all(client, [gen_ref, user_ref])
        if not gen.exists:
            raise NotFound(f"No generation {generation_id}.")
        data = gen.to_dict() or {}
        if data.get("userId") != uid:
            raise NotFound(
                f"No generation {generation_id} for this user."
            )  # credits go back only to who paid
        cost = int(data.get("cost") or 0)
        if data.get("status") != CHARGED:
            return db.Plan(
                Refund(generation_id, False, str(data.get("status")), cost, ledger.balance_of(user))
            )
        batch = client.batch()
        book = ledger.Book(client, batch, user, clock.now())
        # A charge from before grants existed drew from the balance, now the legacy grant.
        draws = {str(k): int(v) for k, v in (data.get("draws") or {LEGACY_PREFIX + uid: cost}).items()}
        grants = ledger.ended_grants(client, uid, list(draws), book.wallet)
        metadata = {"generationId": generation_id, "projectId": data.get("projectId"), "reason": reason}
        settled = gate.settled(user.to_dict() or {}, generation_id, datetime.now(UTC), failure=counts)
        book.refund(generation_id, draws, grants, metadata)
        balance = book.close(also=settled)
        batch.update(
            gen_ref,
            {
                "status": REFUNDED,
                "error": reason,
                "balanceAfterRefund": balance,
                "updatedAt": SERVER_TIMESTAMP,
            },
            option=db.precondition(client, gen),
        )
        props = {"generationId": generation_id, "amount": cost, "reason": reason}
        analytics.stage_event(
            client, batch, analytics.CREDITS_REFUNDED, uid, props, event_id=f"{generation_id}-refunded"
        )
        return db.Plan(Refund(generation_id, True, REFUNDED, cost, balance), batch)

    result = db.commit_optimistically(plan)
    if result.applied:
        analytics.emitted(
            analytics.CREDITS_REFUNDED,
            uid,
            {"generationId": generation_id, "amount": result.amount, "reason": reason},
        )
    return result


def _fail(client: Client, settings: Settings, ch: Charge, reason: str) -> GenerationFailed | Unavailable:
    """Refund after a failure; the error to answer with (502 refunded, or 503 if even that failed).

    Logged at WARNING with the reason, never ERROR: users can make failures at will, and an alert
    per user would be noise (an outage shows as the breaker opening)."""
    policy = policy_of(reason)
    log.warning(
        "generation %s failed: %s, refunding",
        ch.generation_id,
        reason,
        extra={
            "json_fields": {"refundReason": reason, "fault": policy.fault, "countsTowardLimit": policy.counts}
        },
    )
    try:
        settled = refund(client, ch.generation_id, ch.uid, reason, limits.GenerateLimits.of(settings))
    except Exception:
        log.exception("refund of %s failed; the sweep will settle it", ch.generation_id)
        return Unavailable(
            "The generation failed and the refund could not be recorded yet; "
            "it will be refunded automatically."
        )
    if settled.status == SUCCEEDED:  # the completion had committed after all
        return Unavailable("The generation finished but its answer was lost; look for it in the project.")
    return failed(settled.amount, settled.balance, reason)


def _call_model(provider: Provider, breaker: CircuitBreaker, ticket: Any, prompt: str) -> str:
    """The model call, its outcome told to the breaker: 429/5xx count against the model, an answer
    for it, anything else (a timeout, a blocked prompt) neither."""
    try:
        output = provider.generate(prompt)
    except ModelError as exc:
        if exc.reason in models.UPSTREAM_FAILURES:
            breaker.failed_upstream(ticket)
            if breaker.state == "open":
                log.warning("model circuit breaker open after %s", exc.reason)
        else:
            breaker.release(ticket)
        raise
    except BaseException:
        breaker.release(ticket)
        raise
    breaker.succeeded(ticket)
    return output


def generate(
    client: Client, settings: Settings, provider: Provider, req: GenerationRequest, breaker: CircuitBreaker
) -> Completed:
    """Charge, call the model, save the version; refund exactly once on any failure after the charge.

    The breaker is asked first: while the model is failing, the call is a 503 that charged nothing."""
    ticket = breaker.admit()
    try:
        charged = charge(client, settings, req)
    except BaseException:
        breaker.release(ticket)
        raise
    if isinstance(charged, Completed):
        breaker.release(ticket)
        return charged
    try:
        output = _call_model(provider, breaker, ticket, req.prompt)
    except ModelError as exc:
        raise _fail(client, settings, charged, exc.reason) from exc
    except Exception as exc:
        log.exception("model provider crashed")
        raise _fail(client, settings, charged, "model_error") from exc
    try:
        done = complete(client, charged, output)
    except _ProjectGone as exc:
        raise _fail(client, settings, charged, "project_deleted") from exc
    except GenerationFailed:
        raise
    except Exception as exc:
        log.exception("saving generation %s failed", charged.generation_id)
        raise _fail(client, settings, charged, "save_failed") from exc
    analytics.emitted(
        analytics.GENERATION_SUCCEEDED,
        req.uid,
        {"generationId": charged.generation_id, "kind": req.kind, "cost": charged.cost},
    )
    return done
