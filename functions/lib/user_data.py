"""A user's data: everything kept about a user as one JSON document (`export`), and erasure of
the user (`erase`). The steps, why a run killed anywhere is finished by running it again, and why
the pseudonym is random: docs/ARCHITECTURE.md, "A user's data".

Export streams the document page by page (`db.pages`, 300 documents a round trip): memory holds
one page, whatever the number of projects and versions. Erasure cancels the user's subscriptions in
Stripe first (step 0, outside any commit plan), then runs steps 1-5, each finding its work by a
query on the uid (`db.drain`), until `users/{uid}` is deleted under a precondition; the Firebase Auth
account goes last. Its progress events are `ErasureEvent`; what a run did is `ErasureReport`.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from functions.lib import db, generations, ledger, projects, schema
from functions.lib.errors import Contention, NotFound

if TYPE_CHECKING:
    from google.cloud.firestore import Client, DocumentReference, DocumentSnapshot, Query, WriteBatch

PAGE = 300
ERASED_REASON = "account_erased"
# Rounds of steps 2-5 before giving up with a retryable error: each round is needed only when
# something changed the user document while the previous one ran.
MAX_ROUNDS = 5

# Stripe statuses of a subscription that will never bill again: nothing to cancel.
FINAL_STATUSES = ("canceled", "incomplete_expired")

# cancel(subscriptionId) cancels a subscription in Stripe and answers its status (idempotently).
Cancel = Callable[[str], str]


class ErasureEvent(StrEnum):
    """What `progress(event, fields)` hears from an erasure (`event` is the value), with its fields."""

    CANCELED = "canceled"  # subscriptionId, status: canceled in Stripe
    BEGUN = "begun"  # the user is marked as being erased
    REFUNDED = "refunded"  # generationId, amount: a charge left running, refunded
    PROJECT = "project"  # projectId, versionsDeleted
    DELETED = "deleted"  # collection, documents
    CLOSED = "closed"  # forfeited: the balance forfeited
    PSEUDONYMISED = "pseudonymised"  # entries, payments, subscriptions
    AGAIN = "again"  # collections: something wrote during the round, another round follows
    LOGIN = "login"  # deleted
    DONE = "done"  # the report's body


# progress(event, fields): the events are ErasureEvent's values.
Progress = Callable[[str, dict[str, Any]], None]


# Export ---------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """Firestore values that JSON has no type for: times, references, bytes, geo points."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "path") and hasattr(value, "parent"):
        return value.path
    if hasattr(value, "latitude") and hasattr(value, "longitude"):
        return {"latitude": value.latitude, "longitude": value.longitude}
    raise TypeError(f"cannot export a {type(value).__name__}")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _document(snap: DocumentSnapshot) -> dict[str, Any]:
    return {"id": snap.id, **(snap.to_dict() or {})}


def _owned(client: Client, collection: str, uid: str, field: str = "userId") -> Query:
    """The uid's documents in `collection`, in id order (a total order for paging)."""
    return client.collection(collection).where(filter=db.where(field, "==", uid)).order_by("__name__")


def _sections(client: Client, uid: str) -> list[tuple[str, Query]]:
    return [
        ("ledger", _owned(client, schema.LEDGER, uid)),
        ("payments", _owned(client, schema.PAYMENTS, uid)),
        ("generations", _owned(client, schema.GENERATIONS, uid)),
        ("analyticsEvents", _owned(client, schema.EVENTS, uid)),
        ("stripeEventProblems", _owned(client, schema.PROBLEMS, uid)),
        ("rateLimits", _owned(client, schema.RATE_LIMITS, uid)),
        ("subscriptions", _owned(client, schema.SUBSCRIPTIONS, uid)),
        ("invoices", _owned(client, schema.INVOICES, uid)),
    ]


def export(client: Client, uid: str) -> Iterator[str]:
    """Everything kept about `uid`, as the pieces of one JSON document (join them to get it).

    The user document is read before this returns, so an unreachable Firestore fails the call
    (a clean 503) rather than the stream; the rest is read page by page as the pieces are taken.
    """
    user = client.collection(schema.USERS).document(uid).get(**db.rpc())
    return _export_pieces(client, uid, user)


def _export_pieces(client: Client, uid: str, user: DocumentSnapshot) -> Iterator[str]:
    wallet = ledger.wallet_of(user)
    head = {
        "uid": uid,
        "exportedAt": datetime.now(UTC),
        "user": user.to_dict() if user.exists else None,
        "grants": [ledger.public_grant(g) for g in wallet.fields()["grants"]],
        "debt": wallet.debt,
    }
    yield _dumps(head)[:-1]
    for name, query in _sections(client, uid):
        yield f', "{name}": ['
        for n, snap in enumerate(db.pages(query, PAGE)):
            yield ("," if n else "") + _dumps(_document(snap))
        yield "]"
    limit = client.collection(schema.CHECKOUT_LIMITS).document(uid).get(**db.rpc())
    yield ', "checkoutLimit": ' + _dumps(limit.to_dict() if limit.exists else None)
    yield ', "projects": ['
    for n, project in enumerate(db.pages(_owned(client, schema.PROJECTS, uid, "ownerId"), PAGE)):
        # The project's own fields, then its versions: "{...}" opened up to take one more key.
        yield ("," if n else "") + _dumps(_document(project))[:-1] + ', "versions": ['
        versions = project.reference.collection(schema.VERSIONS).order_by("__name__")
        for m, version in enumerate(db.pages(versions, PAGE)):
            yield ("," if m else "") + _dumps(_document(version))
        yield "]}"
    yield "]}"


# Erasure --------------------------------------------------------------------------------------


@dataclass
class ErasureReport:
    """What one erasure run did; a run that finishes an interrupted one counts only its own work."""

    subscriptions_canceled: int = 0
    charges_refunded: int = 0
    projects_deleted: int = 0
    versions_deleted: int = 0
    generations_deleted: int = 0
    events_deleted: int = 0
    problems_deleted: int = 0
    entries_pseudonymised: int = 0
    payments_pseudonymised: int = 0
    subscriptions_pseudonymised: int = 0
    credits_forfeited: int = 0
    login_deleted: bool = False
    commits: int = 0
    max_commit_writes: int = 0

    def body(self) -> dict[str, Any]:
        """The DELETE answer (the pseudonym is never in it: it must not be linked to the uid)."""
        return {"erased": True, **{_camel(k): v for k, v in asdict(self).items()}}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


class _Erasure:
    def __init__(
        self, client: Client, uid: str, progress: Progress | None, commit: db.Commit, cancel: Cancel
    ) -> None:
        self.client = client
        self.uid = uid
        self.progress = progress
        self._commit = commit
        self._cancel = cancel
        self.report = ErasureReport()
        self.user_ref = client.collection(schema.USERS).document(uid)

    def emit(self, event: ErasureEvent, **fields: Any) -> None:
        if self.progress is not None:
            self.progress(event.value, fields)

    def commit(self, batch: WriteBatch) -> object:
        """Every bulk commit of the erasure goes through here, to be counted."""
        writes = len(batch)
        result = self._commit(batch)
        self.report.commits += 1
        self.report.max_commit_writes = max(self.report.max_commit_writes, writes)
        return result

    def cancel_subscriptions(self) -> None:
        """Step 0: cancel in Stripe every subscription of the user not known to be over, then mark
        each of the user's subscription documents `erased`. Stripe is called here, outside any commit
        plan (a plan may run again on contention); a failure raises before anything is marked or
        deleted."""
        snaps = [s for s in _owned(self.client, schema.SUBSCRIPTIONS, self.uid).stream(**db.rpc())]
        for snap in snaps:
            data = snap.to_dict() or {}
            if data.get("erased") or data.get("status") in FINAL_STATUSES:
                continue
            status = self._cancel(snap.id)
            self.report.subscriptions_canceled += 1
            self.emit(ErasureEvent.CANCELED, subscriptionId=snap.id, status=status)
        for snap in snaps:
            self.mark_erased(snap.reference)

    def mark_erased(self, ref: DocumentReference) -> None:
        """The subscription's document says it is over and its user erased: later events of it change
        nothing. Its `userId` is renamed with the ledger (step 4)."""
        from google.cloud.firestore import SERVER_TIMESTAMP

        def plan() -> db.Plan[None]:
            snap = ref.get(**db.rpc())
            data = snap.to_dict() or {}
            if not snap.exists or data.get("erased"):
                return db.Plan(None)
            fields: dict[str, Any] = {"erased": True, "status": "canceled", "updatedAt": SERVER_TIMESTAMP}
            if not data.get("endedAt"):
                fields["endedAt"] = SERVER_TIMESTAMP
            batch = self.client.batch()
            batch.update(ref, fields, option=db.precondition(self.client, snap))
            return db.Plan(None, batch)

        db.commit_optimistically(plan)

    def begin(self) -> str:
        """Step 1: no consent from now on, and the pseudonym, new or the one an earlier run chose."""
        from google.cloud.firestore import DELETE_FIELD, SERVER_TIMESTAMP

        def plan() -> db.Plan[str]:
            user = self.user_ref.get(**db.rpc())
            data = user.to_dict() or {}
            marker = data.get("erasure")
            if isinstance(marker, dict) and isinstance(marker.get("pseudonym"), str):
                if "consent" not in data:
                    return db.Plan(marker["pseudonym"])
                batch = self.client.batch()
                batch.update(
                    self.user_ref, {"consent": DELETE_FIELD}, option=db.precondition(self.client, user)
                )
                return db.Plan(marker["pseudonym"], batch)
            pseudonym = ledger.ERASED_PREFIX + uuid.uuid4().hex
            fields = {"erasure": {"pseudonym": pseudonym, "startedAt": SERVER_TIMESTAMP}}
            batch = self.client.batch()
            if user.exists:
                batch.update(
                    self.user_ref,
                    {**fields, "consent": DELETE_FIELD},
                    option=db.precondition(self.client, user),
                )
            else:
                batch.create(self.user_ref, {**fields, **ledger.new_user_fields()})
            return db.Plan(pseudonym, batch)

        pseudonym = db.commit_optimistically(plan)
        self.emit(ErasureEvent.BEGUN)
        return pseudonym

    def settle(self) -> None:
        """Step 2: refund every charge still open; each refund takes its generation out of the query."""
        query = (
            self.client.collection(schema.GENERATIONS)
            .where(filter=db.where("userId", "==", self.uid))
            .where(filter=db.where("status", "==", generations.CHARGED))
            .select([])
        )
        while page := list(query.limit(PAGE).stream(**db.rpc())):
            for snap in page:
                try:
                    refund = generations.refund(self.client, snap.id, self.uid, ERASED_REASON)
                except NotFound:
                    continue
                if refund.applied:
                    self.report.charges_refunded += 1
                    self.emit(ErasureEvent.REFUNDED, generationId=snap.id, amount=refund.amount)

    def delete_projects(self) -> None:
        """Step 3a: each project's versions in commits of <= 500 writes, the project document in the last."""
        query = (
            self.client.collection(schema.PROJECTS)
            .where(filter=db.where("ownerId", "==", self.uid))
            .select([])
        )
        while page := list(query.limit(PAGE).stream(**db.rpc())):
            for project in page:
                self.delete_project(project.reference)

    def delete_project(self, project_ref: DocumentReference) -> None:
        """One of the user's projects (the query on `ownerId` found it), by `projects.delete_project`."""
        deletion = projects.delete_project(self.client, project_ref, commit=self.commit)
        self.report.projects_deleted += int(deletion.project_deleted)
        self.report.versions_deleted += deletion.versions_deleted
        self.emit(ErasureEvent.PROJECT, projectId=project_ref.id, versionsDeleted=deletion.versions_deleted)

    def delete(self, refs: list[DocumentReference]) -> int:
        batch = self.client.batch()
        for ref in refs:
            batch.delete(ref)
        self.commit(batch)
        return len(refs)

    def delete_owned(self, collection: str, counter: str | None) -> None:
        """Step 3b: every document of `collection` whose `userId` is the uid."""
        query = self.client.collection(collection).where(filter=db.where("userId", "==", self.uid)).select([])
        n = db.drain(self.client, query, lambda batch, ref: batch.delete(ref), commit=self.commit)
        if counter is not None:
            setattr(self.report, counter, getattr(self.report, counter) + n)
        if n:
            self.emit(ErasureEvent.DELETED, collection=collection, documents=n)

    def checkout_limit(self) -> DocumentReference | None:
        """The user's checkout rate-limit window (`checkout_limits/{uid}`), if there is one."""
        ref = self.client.collection(schema.CHECKOUT_LIMITS).document(self.uid)
        return ref if ref.get(field_paths=["count"], **db.rpc()).exists else None

    def delete_checkout_limit(self) -> None:
        """Step 3c: the user's checkout rate-limit window, if there is one."""
        ref = self.checkout_limit()
        if ref is not None:
            self.delete([ref])
            self.emit(ErasureEvent.DELETED, collection=schema.CHECKOUT_LIMITS, documents=1)

    def close_ledger(self, pseudonym: str) -> None:
        """Step 4: the closing `forfeit` entry, then the uid renamed to the pseudonym."""
        closed = ledger.close_account(self.client, self.uid, pseudonym, ERASED_REASON)
        if closed is not None:
            self.report.credits_forfeited -= closed.amount
            self.emit(ErasureEvent.CLOSED, forfeited=-closed.amount)
        renamed = ledger.pseudonymise(self.client, self.uid, pseudonym, commit=self.commit)
        query = (
            self.client.collection(schema.PAYMENTS)
            .where(filter=db.where("userId", "==", self.uid))
            .select([])
        )
        records = db.drain(
            self.client,
            query,
            lambda batch, ref: batch.update(ref, {"userId": pseudonym}),
            commit=self.commit,
        )
        links = 0
        for collection in (schema.SUBSCRIPTIONS, schema.INVOICES):
            links += db.drain(
                self.client,
                _owned(self.client, collection, self.uid).select([]),
                lambda batch, ref: batch.update(ref, {"userId": pseudonym}),
                commit=self.commit,
            )
        self.report.entries_pseudonymised += renamed
        self.report.payments_pseudonymised += records
        self.report.subscriptions_pseudonymised += links
        if renamed or records or links:
            self.emit(ErasureEvent.PSEUDONYMISED, entries=renamed, payments=records, subscriptions=links)

    def finish(self) -> bool:
        """Step 5: delete the user document if nothing moved it since steps 2-4 (else False: go round
        again)."""
        from google.api_core import exceptions as gexc

        user = self.user_ref.get(**db.rpc())
        if not user.exists:
            return True
        data = user.to_dict() or {}
        if ledger.balance_of(user) != 0 or ledger.wallet_of(user).grants or "consent" in data:
            return False
        left = self.still_named()
        if left:
            self.emit(ErasureEvent.AGAIN, collections=left)
            return False
        batch = self.client.batch()
        batch.delete(self.user_ref, option=db.precondition(self.client, user))
        try:
            self.commit(batch)
        except gexc.FailedPrecondition:
            return False
        return True

    def still_named(self) -> list[str]:
        """The collections where a document still names the uid: something wrote while this round
        ran, after the step that clears that collection."""
        named = {
            schema.PROJECTS: _owned(self.client, schema.PROJECTS, self.uid, "ownerId"),
            **{
                name: _owned(self.client, name, self.uid)
                for name in (
                    schema.GENERATIONS,
                    schema.EVENTS,
                    schema.PROBLEMS,
                    schema.LEDGER,
                    schema.PAYMENTS,
                    schema.RATE_LIMITS,
                    schema.SUBSCRIPTIONS,
                    schema.INVOICES,
                )
            },
        }
        left = [name for name, query in named.items() if list(query.select([]).limit(1).stream(**db.rpc()))]
        if self.checkout_limit() is not None:
            left.append(schema.CHECKOUT_LIMITS)
        return left

    def run(self, delete_login: Callable[[str], bool]) -> ErasureReport:
        for _ in range(MAX_ROUNDS):
            # Each round: a subscription bought while the previous round ran is canceled too.
            self.cancel_subscriptions()
            pseudonym = self.begin()
            self.settle()
            self.delete_projects()
            self.delete_owned(schema.GENERATIONS, "generations_deleted")
            self.delete_owned(schema.EVENTS, "events_deleted")
            self.delete_owned(schema.PROBLEMS, "problems_deleted")
            self.delete_checkout_limit()
            self.delete_owned(schema.RATE_LIMITS, None)
            self.close_ledger(pseudonym)
            if self.finish():
                break
        else:
            raise Contention("The account kept changing during its erasure; run it again.")
        self.report.login_deleted = delete_login(self.uid)
        self.emit(ErasureEvent.LOGIN, deleted=self.report.login_deleted)
        self.emit(ErasureEvent.DONE, **self.report.body())
        return self.report


def erase(
    client: Client,
    uid: str,
    *,
    delete_login: Callable[[str], bool],
    progress: Progress | None = None,
    commit: db.Commit = db.commit_batch,
    cancel_subscription: Cancel | None = None,
) -> ErasureReport:
    """Erase `uid` (see the module docstring); running it again finishes an interrupted erasure.

    `delete_login(uid)` deletes the Firebase Auth account (False if it was already gone);
    `progress` hears each step; `commit` commits each bulk batch (benchmarks count them);
    `cancel_subscription` cancels one in Stripe (by default through `stripe_api` with the process's
    settings, which needs STRIPE_SECRET_KEY only when the user has a subscription to cancel).
    """
    return _Erasure(client, uid, progress, commit, cancel_subscription or _cancel_in_stripe).run(delete_login)


def _cancel_in_stripe(subscription_id: str) -> str:
    from functions.lib import stripe_api
    from functions.lib.config import get_settings

    return stripe_api.cancel_subscription(get_settings(), subscription_id)
