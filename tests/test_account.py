"""`account`: export and erasure of a user, against the Firestore emulator and the session's real Firebase
Auth emulator (accounts signed up over its REST API, their ID tokens checked with it, deleted in it).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter

from devstack import stripe_events
from devstack.auth import AuthEmulator
from devstack.firestore import FirestoreEmulator
from devstack.procs import wait_until
from devstack.serve import ServedFunction
from tests.helpers import ACCOUNTS, TERMS, balance, owned
from tests.test_openapi import check

SECRET = "whsec_test_local"


@pytest.fixture
def accounts(emulator: FirestoreEmulator) -> AuthEmulator:
    """The session's Auth emulator (cleared after each test that signs someone up)."""
    assert ACCOUNTS.emulator is not None
    ACCOUNTS.emulator.wait_ready()
    return ACCOUNTS.emulator


@dataclass
class Person:
    uid: str
    email: str
    token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def sign_up(auth: AuthEmulator, name: str) -> Person:
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    uid, token = auth.sign_up(email, "correct horse battery")
    ACCOUNTS.created.add(uid)
    return Person(uid, email, token)


def deliver(app: Any, event: dict[str, Any]) -> Any:
    body, headers = stripe_events.delivery(event, SECRET)
    res = app("stripe_webhook").post("/", data=body, headers=headers)
    assert res.status_code == 200, res.json
    return res


def give_a_history(app: Any, db: Any, settings: Any, person: Person) -> dict[str, Any]:
    """Consent, a purchase and a partial refund of it, a project with two versions, a charge still
    running, a stored problem event: through the real handlers and domain code."""
    from functions.lib import generations, limits

    ids = {
        "session": stripe_events.new_id("cs_test"),
        "pi": stripe_events.new_id("pi"),
        "charge": stripe_events.new_id("ch"),
    }
    assert app("consent").post("/", json={"version": TERMS}, headers=person.bearer).status_code == 200
    deliver(app, stripe_events.checkout_completed(ids["session"], person.uid, "creator", ids["pi"]))  # +500
    deliver(app, stripe_events.charge_refunded(ids["charge"], ids["pi"], 1000, 100))  # -50
    first = app("generate").post("/", json={"prompt": "a lighthouse"}, headers=person.bearer)
    assert first.status_code == 200, first.json
    ids["project"] = first.json["projectId"]
    second = app("generate").post(
        "/", json={"prompt": "at dusk", "projectId": ids["project"]}, headers=person.bearer
    )
    assert second.status_code == 200, second.json
    running = generations.charge(db, settings, generations.GenerationRequest(person.uid, "still running"))
    assert isinstance(running, generations.Charge)
    ids["running"] = running.generation_id
    limits.take_checkout_slot(db, person.uid, limit=10, window_s=3600, now=datetime.now(UTC))
    db.collection("stripe_event_problems").document(f"evt_{person.uid}").set(
        {"type": "charge.refunded", "reason": "test", "status": "open", "userId": person.uid}
    )
    return ids


def everything_of(db: Any, uid: str) -> dict[str, Any]:
    """A snapshot of a user's documents and their contents, to show that they are untouched."""
    docs: dict[str, Any] = {"user": db.collection("users").document(uid).get().to_dict()}
    for name, ids in owned(db, uid).items():
        for doc_id in ids:
            docs[f"{name}/{doc_id}"] = db.collection(name).document(doc_id).get().to_dict()
            if name == "projects":
                for version in db.collection("projects").document(doc_id).collection("versions").stream():
                    docs[f"{name}/{doc_id}/{version.id}"] = version.to_dict()
    return docs


def ledger_by_id(db: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: db.collection("credit_transactions").document(i).get().to_dict() for i in ids}


def admin(*argv: str) -> int:
    from functions.admin.cli import main

    return main(list(argv))


def test_export_has_everything_of_the_caller_and_nothing_of_anyone_else(
    app: Any, db: Any, settings: Any, accounts: AuthEmulator
) -> None:
    ana, bob = sign_up(accounts, "ana"), sign_up(accounts, "bob")
    give_a_history(app, db, settings, ana)
    bob_ids = give_a_history(app, db, settings, bob)
    expected = owned(db, ana.uid)

    res = app("account").get("/", headers=ana.bearer)

    assert res.status_code == 200 and res.headers["Cache-Control"] == "no-store"
    body = check("account", "get", res)
    assert body["uid"] == ana.uid
    assert body["user"]["credits"] == balance(db, ana.uid) == 500 - 50 - 50 - 25 - 50
    assert body["user"]["consent"]["version"] == TERMS
    assert sorted(e["id"] for e in body["ledger"]) == expected["credit_transactions"]
    assert {e["type"] for e in body["ledger"]} == {"purchase", "reversal", "charge"}
    assert sorted(g["id"] for g in body["generations"]) == expected["generations"]
    assert sorted(e["id"] for e in body["analyticsEvents"]) == expected["analytics_events"] != []
    assert [p["id"] for p in body["stripeEventProblems"]] == expected["stripe_event_problems"]
    assert [p["id"] for p in body["payments"]] == expected["payments"] != []
    assert body["checkoutLimit"]["count"] == 1
    [project] = body["projects"]
    assert project["id"] == expected["projects"][0] and project["versionCount"] == 2
    assert sorted(v["number"] for v in project["versions"]) == [1, 2]
    assert {v["prompt"] for v in project["versions"]} == {"a lighthouse", "at dusk"}
    text = res.data.decode()
    assert bob.uid not in text and bob_ids["project"] not in text and bob_ids["session"] not in text


def test_export_without_a_valid_token_is_401(app: Any, db: Any, accounts: AuthEmulator) -> None:
    assert app("account").get("/").status_code == 401
    assert app("account").get("/", headers={"Authorization": "Bearer not-a-token"}).status_code == 401


def test_delete_erases_the_user_keeps_the_ledger_under_a_pseudonym_and_leaves_others_alone(
    app: Any, db: Any, settings: Any, accounts: AuthEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.lib import retention

    ana, bob = sign_up(accounts, "ana"), sign_up(accounts, "bob")
    ana_ids = give_a_history(app, db, settings, ana)
    give_a_history(app, db, settings, bob)
    entry_ids = owned(db, ana.uid)["credit_transactions"]
    balance_before = balance(db, ana.uid)
    bob_before = everything_of(db, bob.uid)

    res = app("account").delete("/", headers=ana.bearer)

    assert res.status_code == 200, res.json
    report = check("account", "delete", res)
    assert (
        report["erased"]
        and report["chargesRefunded"] == 1
        and report["projectsDeleted"] == 1
        and report["versionsDeleted"] == 2
    )
    assert report["loginDeleted"] and 0 < report["maxCommitWrites"] <= 500
    assert (
        report["creditsForfeited"] == balance_before + 50
    )  # what was left once the running charge was refunded
    # Nothing of the user remains...
    assert all(ids == [] for ids in owned(db, ana.uid).values()), owned(db, ana.uid)
    assert not db.collection("users").document(ana.uid).get().exists
    assert not db.collection("checkout_limits").document(ana.uid).get().exists
    assert ana_ids["project"] not in [p.id for p in db.collection("projects").stream()]
    assert not list(db.collection("projects").document(ana_ids["project"]).collection("versions").stream())
    # ...except the ledger, under one pseudonym that is not the uid, closed by a forfeit, summing to zero.
    kept = ledger_by_id(db, entry_ids)
    pseudonyms = {e["userId"] for e in kept.values()}
    [pseudonym] = pseudonyms
    assert pseudonym != ana.uid and pseudonym.startswith("erased_") and ana.uid not in pseudonym
    closing = (
        db.collection("credit_transactions").where(filter=FieldFilter("userId", "==", pseudonym)).stream()
    )
    entries = {d.id: d.to_dict() for d in closing}
    assert set(entries) == {*entry_ids, f"refund_{ana_ids['running']}", f"forfeit_{pseudonym}"}
    assert entries[f"forfeit_{pseudonym}"]["amount"] == -report["creditsForfeited"]
    assert entries[f"forfeit_{pseudonym}"]["balanceAfter"] == 0
    assert sum(e["amount"] for e in entries.values()) == 0
    assert db.collection("payments").document(ana_ids["pi"]).get().get("userId") == pseudonym
    # The sign-in is gone: no new sign-in, and the old token gets 401.
    with pytest.raises(urllib.error.HTTPError) as refused:
        accounts.sign_in(ana.email, "correct horse battery")
    assert refused.value.code == 400
    assert app("generate").post("/", json={"prompt": "x"}, headers=ana.bearer).status_code == 401
    assert owned(db, ana.uid)["generations"] == [] and owned(db, ana.uid)["credit_transactions"] == []
    assert app("account").get("/", headers=ana.bearer).status_code == 401
    assert app("account").delete("/", headers=ana.bearer).status_code == 401
    # Others untouched; the audit counts a closed account; the sweep finds nothing of the user to settle.
    assert everything_of(db, bob.uid) == bob_before
    assert admin("audit") == 0
    assert "1 closed (erased) accounts" in capsys.readouterr().out
    later = datetime.now(UTC) + timedelta(days=settings.retention_days + 1)
    swept = retention.sweep(db, settings, now=later)
    assert swept.complete and swept.refunds_settled == 1  # bob's running charge, not ana's
    assert admin("audit") == 0


def test_delete_needs_a_recent_sign_in(
    app: Any, db: Any, accounts: AuthEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.lib import auth

    ana = sign_up(accounts, "ana")
    monkeypatch.setattr(auth, "RECENT_SIGN_IN_S", -1)

    res = app("account").delete("/", headers=ana.bearer)

    assert check("account", "delete", res)["reason"] == "stale_sign_in" and res.status_code == 401
    assert accounts.sign_in(ana.email, "correct horse battery")[0] == ana.uid


def test_forget_of_a_user_with_nothing_writes_nothing_and_a_second_run_changes_nothing(
    db: Any, accounts: AuthEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.lib import ledger

    ana = sign_up(accounts, "ana")
    ledger.grant(db, ana.uid, "welcome", 30, "welcome")

    assert admin("forget", ana.uid) == 0
    first = json.loads(capsys.readouterr().out)
    ledger_after_first = {d.id: d.to_dict() for d in db.collection("credit_transactions").stream()}
    assert admin("forget", ana.uid) == 0
    second = json.loads(capsys.readouterr().out)

    assert first["creditsForfeited"] == 30 and first["entriesPseudonymised"] == 2 and first["loginDeleted"]
    assert (
        second["creditsForfeited"] == 0 and second["entriesPseudonymised"] == 0 and not second["loginDeleted"]
    )
    assert {d.id: d.to_dict() for d in db.collection("credit_transactions").stream()} == ledger_after_first
    assert [u.id for u in db.collection("users").stream()] == []


def seed_projects(db: Any, uid: str, projects: int, versions: int) -> None:
    """Raw project data (no money in it): `projects` projects of `versions` versions."""
    for p in range(projects):
        project = db.collection("projects").document(f"{uid}-p{p}")
        batch = db.batch()
        for n in range(versions):
            batch.set(
                project.collection("versions").document(f"v{n:04d}"),
                {"number": n + 1, "prompt": "x", "output": "y" * 200},
            )
        batch.set(
            project,
            {"ownerId": uid, "versionCount": versions, "updatedAt": datetime.now(UTC), "deletingAt": None},
        )
        batch.commit()


def projects_left(db: Any, uid: str) -> int:
    return len(list(db.collection("projects").where(filter=FieldFilter("ownerId", "==", uid)).stream()))


def test_an_erasure_killed_mid_way_is_finished_by_a_second_delete_and_writes_nothing_twice(
    app: Any, db: Any, settings: Any, emulator: FirestoreEmulator, accounts: AuthEmulator, tmp_path: Path
) -> None:
    from functions.lib import generations, ledger

    ana, bob = sign_up(accounts, "ana"), sign_up(accounts, "bob")
    for person in (ana, bob):
        assert app("consent").post("/", json={"version": TERMS}, headers=person.bearer).status_code == 200
        ledger.grant(db, person.uid, f"seed-{person.uid}", 200, "test seed")
        seed_projects(db, person.uid, 5, 400)
    running = generations.charge(db, settings, generations.GenerationRequest(ana.uid, "still running"))
    assert isinstance(running, generations.Charge)
    bob_before = everything_of(db, bob.uid)
    served = ServedFunction("account", env={}, log_dir=tmp_path)
    outcome: list[Any] = []

    def delete() -> None:
        req = urllib.request.Request(served.url + "/", method="DELETE", headers=ana.bearer)
        try:
            with urllib.request.urlopen(req, timeout=60) as res:
                outcome.append(res.status)
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            outcome.append(exc)

    caller = threading.Thread(target=delete)
    try:
        caller.start()
        wait_until(lambda: projects_left(db, ana.uid) < 5, what="the first project deleted", timeout=60)
        # Freeze Firestore so the erasure cannot run on, then kill the function mid-erasure.
        os.kill(emulator.child.pid, signal.SIGSTOP)
        try:
            served.kill()
        finally:
            os.kill(emulator.child.pid, signal.SIGCONT)
        caller.join(timeout=30)
    finally:
        served.stop()

    assert len(outcome) == 1 and not isinstance(outcome[0], int), "the killed erasure answered"
    marker = db.collection("users").document(ana.uid).get().to_dict()["erasure"]
    assert projects_left(db, ana.uid) > 0, "the erasure finished before the kill: nothing was interrupted"
    assert db.collection("generations").document(running.generation_id).get().get("status") == "refunded"

    again = app("account").delete("/", headers=ana.bearer)

    assert again.status_code == 200, again.json
    assert again.json["chargesRefunded"] == 0  # refunded once, by the first run
    assert all(ids == [] for ids in owned(db, ana.uid).values())
    pseudonym = marker["pseudonym"]
    kept = {
        d.id: d.to_dict()
        for d in db.collection("credit_transactions")
        .where(filter=FieldFilter("userId", "==", pseudonym))
        .stream()
    }
    assert sorted(kept) == sorted(
        [
            f"grant_seed-{ana.uid}",
            f"charge_{running.generation_id}",
            f"refund_{running.generation_id}",
            f"forfeit_{pseudonym}",
        ]
    )
    assert kept[f"forfeit_{pseudonym}"]["amount"] == -200 and sum(e["amount"] for e in kept.values()) == 0
    assert everything_of(db, bob.uid) == bob_before
    assert admin("audit") == 0


def test_a_refund_after_the_erasure_lands_on_the_pseudonym_never_on_the_uid_and_the_audit_stays_clean(
    app: Any, db: Any, settings: Any, accounts: AuthEmulator
) -> None:
    ana = sign_up(accounts, "ana")
    ids = give_a_history(app, db, settings, ana)
    assert app("account").delete("/", headers=ana.bearer).status_code == 200
    pseudonym = db.collection("payments").document(ids["pi"]).get().get("userId")

    deliver(
        app, stripe_events.charge_refunded(ids["charge"], ids["pi"], 1000, 300)
    )  # 20% more of 500 credits

    assert all(found == [] for found in owned(db, ana.uid).values())
    assert not db.collection("users").document(ana.uid).get().exists
    kept = [
        d.to_dict()
        for d in db.collection("credit_transactions")
        .where(filter=FieldFilter("userId", "==", pseudonym))
        .stream()
    ]
    assert sorted(e["amount"] for e in kept if e["type"] == "reversal") == [-100, -50]
    assert (
        db.collection("users").document(pseudonym).get().get("credits")
        == sum(e["amount"] for e in kept)
        == -100
    )
    assert admin("audit") == 0


def test_the_served_export_is_streamed_in_chunks_and_complete(
    db: Any, accounts: AuthEmulator, tmp_path: Path
) -> None:
    ana = sign_up(accounts, "ana")
    seed_projects(db, ana.uid, 3, 400)
    served = ServedFunction("account", env={}, log_dir=tmp_path)
    try:
        req = urllib.request.Request(served.url + "/", headers=ana.bearer)
        with urllib.request.urlopen(req, timeout=60) as res:
            headers, body = res.headers, json.loads(res.read())
    finally:
        served.stop()

    # Sent as it is read (chunked, no length known in advance), not built in memory first.
    assert headers["Transfer-Encoding"] == "chunked" and headers["Content-Length"] is None
    assert [len(p["versions"]) for p in body["projects"]] == [400, 400, 400]


def test_erasing_a_negative_balance_writes_the_debt_off_with_a_positive_forfeit(
    app: Any, db: Any, accounts: AuthEmulator
) -> None:
    ana = sign_up(accounts, "ana")
    session, pi, charge = (
        stripe_events.new_id("cs_test"),
        stripe_events.new_id("pi"),
        stripe_events.new_id("ch"),
    )
    assert app("consent").post("/", json={"version": TERMS}, headers=ana.bearer).status_code == 200
    deliver(app, stripe_events.checkout_completed(session, ana.uid, "starter", pi))  # +100
    assert (
        app("generate").post("/", json={"prompt": "a lighthouse"}, headers=ana.bearer).status_code == 200
    )  # -50
    deliver(app, stripe_events.charge_refunded(charge, pi, 1000, 1000))  # the whole purchase taken back: -100
    assert balance(db, ana.uid) == -50

    res = app("account").delete("/", headers=ana.bearer)

    assert res.status_code == 200 and res.json["creditsForfeited"] == -50
    pseudonym = db.collection("payments").document(pi).get().get("userId")
    forfeit = db.collection("credit_transactions").document(f"forfeit_{pseudonym}").get().to_dict()
    assert forfeit["amount"] == 50 and forfeit["balanceAfter"] == 0 and forfeit["userId"] == pseudonym
    kept = db.collection("credit_transactions").where(filter=FieldFilter("userId", "==", pseudonym)).stream()
    assert sum(e.get("amount") for e in kept) == 0
    assert admin("audit") == 0
