"""`generate` through functions-framework's real Flask stack against the Firestore emulator."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter

from devstack.procs import wait_until
from tests.helpers import (
    assert_ledger_consistent,
    balance,
    bearer,
    entries,
    generations,
    make_user,
    reset_caches,
)


def post(app: Any, uid: str | None, body: Any, headers: dict[str, str] | None = None) -> Any:
    hdrs = {**(bearer(uid) if uid else {}), **(headers or {})}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return app("generate").post("/", data=data, headers=hdrs, content_type="application/json")


def test_initial_generation_charges_50_and_creates_a_project(app: Any, db: Any) -> None:
    make_user(db, "alice", credits=100)

    res = post(app, "alice", {"prompt": "a red fox"})

    assert res.status_code == 200, res.json
    body = res.json
    assert body["creditsCharged"] == 50 and body["balance"] == 50
    assert "a red fox" in body["output"]
    project = db.collection("projects").document(body["projectId"]).get().to_dict()
    assert (
        project["ownerId"] == "alice"
        and project["versionCount"] == 1
        and project["latestVersionId"] == body["versionId"]
    )
    version = db.document(f"projects/{body['projectId']}/versions/{body['versionId']}").get().to_dict()
    assert version["number"] == 1 and version["prompt"] == "a red fox" and version["output"] == body["output"]
    [gen] = generations(db, "alice")
    assert gen["status"] == "succeeded" and gen["kind"] == "initial" and gen["cost"] == 50
    [charge] = entries(db, "alice", "charge")
    assert charge["id"] == f"charge_{gen['id']}" and charge["amount"] == -50 and charge["balanceAfter"] == 50
    assert balance(db, "alice") == 50
    assert_ledger_consistent(db)


def test_iteration_charges_25_and_adds_a_version(app: Any, db: Any) -> None:
    make_user(db, "alice", credits=100)
    first = post(app, "alice", {"prompt": "v1"}).json

    res = post(app, "alice", {"prompt": "v2", "projectId": first["projectId"]})

    assert res.status_code == 200, res.json
    assert res.json["creditsCharged"] == 25 and res.json["balance"] == 25
    project = db.collection("projects").document(first["projectId"]).get().to_dict()
    assert project["versionCount"] == 2 and project["latestVersionId"] == res.json["versionId"]
    versions = {
        v.to_dict()["number"] for v in db.collection(f"projects/{first['projectId']}/versions").stream()
    }
    assert versions == {1, 2}
    assert_ledger_consistent(db)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}, {"Authorization": "Bearer not-a-jwt"}],
    ids=["missing", "wrong-scheme", "empty", "garbage"],
)
def test_missing_or_malformed_token_is_401(app: Any, db: Any, headers: dict[str, str]) -> None:
    res = app("generate").post("/", json={"prompt": "x"}, headers=headers)

    assert res.status_code == 401
    assert res.json["error"] == "unauthenticated" and res.json["message"]


def test_unsigned_token_is_401_without_the_emulator_switch(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_user(db, "mallory", credits=100)
    monkeypatch.delenv("FIREBASE_AUTH_EMULATOR_HOST")
    # Application Default Credentials as a developer's laptop has them (never used: the token fails first).
    adc = tmp_path / "adc.json"
    adc.write_text(
        json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"})
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    reset_caches()

    res = post(app, "mallory", {"prompt": "free credits?"})

    assert res.status_code == 401
    assert balance(db, "mallory") == 100 and generations(db, "mallory") == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"{not json", 400),
        (b"[1, 2]", 400),
        ({"prompt": ""}, 400),
        ({"prompt": "   "}, 400),
        ({"prompt": 42}, 400),
        ({"prompt": "x" * 8001}, 400),
        ({"prompt": "x", "projectId": 7}, 400),
        ({"prompt": "x", "projectId": "a/b"}, 400),
        ({"prompt": "x", "extra": 1}, 400),
        ({"prompt": "x" * 70000}, 413),
    ],
)
def test_bad_bodies_are_4xx_and_change_nothing(app: Any, db: Any, body: Any, status: int) -> None:
    make_user(db, "bob", credits=100)

    res = post(app, "bob", body)

    assert res.status_code == status
    assert res.json["error"] in ("invalid_request", "payload_too_large") and "Traceback" not in res.get_data(
        as_text=True
    )
    assert balance(db, "bob") == 100 and generations(db, "bob") == []


def test_prompt_of_exactly_8000_chars_is_accepted(app: Any, db: Any) -> None:
    make_user(db, "bob", credits=50)

    assert post(app, "bob", {"prompt": "y" * 8000}).status_code == 200


def test_no_consent_is_403(app: Any, db: Any) -> None:
    make_user(db, "carol", credits=100, consent=False)

    res = post(app, "carol", {"prompt": "x"})

    assert res.status_code == 403 and res.json["error"] == "consent_required"
    assert balance(db, "carol") == 100


def test_outdated_consent_is_403(app: Any, db: Any) -> None:
    from functions.lib import terms

    make_user(db, "carol", credits=100, consent=False)
    terms.accept(db, "carol", "2020-01-01", "2020-01-01")

    res = post(app, "carol", {"prompt": "x"})

    assert res.status_code == 403 and res.json["error"] == "consent_required"
    assert balance(db, "carol") == 100


def test_short_balance_is_402_with_figures(app: Any, db: Any) -> None:
    make_user(db, "dave", credits=30)

    res = post(app, "dave", {"prompt": "x"})

    assert res.status_code == 402
    assert res.json["error"] == "insufficient_credits"
    assert (res.json["balance"], res.json["required"], res.json["shortfall"]) == (30, 50, 20)
    assert balance(db, "dave") == 30 and generations(db, "dave") == []


def test_user_with_no_document_and_consent_is_403_not_500(app: Any, db: Any) -> None:
    res = post(app, "nobody", {"prompt": "x"})

    assert res.status_code == 403


@pytest.mark.parametrize("owner", ["someone-else", None], ids=["not-owner", "missing"])
def test_iteration_on_a_project_the_caller_does_not_own_is_404_without_charge(
    app: Any, db: Any, owner: str | None
) -> None:
    make_user(db, "erin", credits=100)
    project_id = "missing-project"
    if owner:
        make_user(db, owner, credits=100)
        project_id = post(app, owner, {"prompt": "theirs"}).json["projectId"]

    res = post(app, "erin", {"prompt": "mine now", "projectId": project_id})

    assert res.status_code == 404 and res.json["error"] == "project_not_found"
    assert balance(db, "erin") == 100 and entries(db, "erin", "charge") == []


def test_iteration_on_a_project_marked_for_deletion_is_404(app: Any, db: Any) -> None:
    from google.cloud.firestore import SERVER_TIMESTAMP

    make_user(db, "erin", credits=100)
    project_id = post(app, "erin", {"prompt": "v1"}).json["projectId"]
    db.collection("projects").document(project_id).update({"deletingAt": SERVER_TIMESTAMP})

    res = post(app, "erin", {"prompt": "v2", "projectId": project_id})

    assert res.status_code == 404 and balance(db, "erin") == 50


@pytest.mark.parametrize(
    ("mode", "reason"), [("error500", "model_unavailable"), ("error429", "rate_limited"), ("hang", "timeout")]
)
def test_model_failure_refunds_exactly_once_and_answers_502(
    app: Any, db: Any, gemini: Any, mode: str, reason: str
) -> None:
    make_user(db, "fay", credits=60)
    gemini.mode = mode

    res = post(app, "fay", {"prompt": "x"})

    assert res.status_code == 502
    assert (
        res.json["error"] == "generation_failed" and res.json["refunded"] == 50 and res.json["balance"] == 60
    )
    assert res.json["reason"] == reason
    [gen] = generations(db, "fay")
    assert gen["status"] == "refunded" and gen["error"] == reason
    assert len(entries(db, "fay", "refund")) == 1 and len(entries(db, "fay", "charge")) == 1
    assert balance(db, "fay") == 60
    events = [
        e.to_dict()
        for e in db.collection("analytics_events")
        .where(filter=FieldFilter("type", "==", "credits_refunded"))
        .stream()
    ]
    assert len(events) == 1 and events[0]["userId"] == "fay"
    assert_ledger_consistent(db)


def test_gemini_success_goes_through_the_real_client(app: Any, db: Any, gemini: Any) -> None:
    make_user(db, "gil", credits=50)

    res = post(app, "gil", {"prompt": "hello"})

    assert res.status_code == 200 and res.json["output"] == "gemini says: hello"
    [req] = gemini.received
    assert req.path.endswith("/models/gemini-test:generateContent")
    assert req.headers.get("x-goog-api-key") == "test-key"


def test_a_generation_logs_no_per_request_info_noise_from_google_genai(
    app: Any, db: Any, gemini: Any, caplog: pytest.LogCaptureFixture
) -> None:
    make_user(db, "gus", credits=50)

    with caplog.at_level(logging.INFO, logger="google_genai"):
        res = post(app, "gus", {"prompt": "hello"})

    assert res.status_code == 200
    assert [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("google_genai") and r.levelno >= logging.INFO
    ] == []


def test_idempotency_key_replay_charges_once_and_answers_the_same(app: Any, db: Any) -> None:
    make_user(db, "hal", credits=100)
    key = {"Idempotency-Key": "k-1"}

    first = post(app, "hal", {"prompt": "once"}, key)
    second = post(app, "hal", {"prompt": "once"}, key)

    assert first.status_code == second.status_code == 200
    assert first.json == second.json
    assert balance(db, "hal") == 50 and len(entries(db, "hal", "charge")) == 1


def test_idempotency_key_with_another_body_is_422(app: Any, db: Any) -> None:
    make_user(db, "hal", credits=100)
    post(app, "hal", {"prompt": "once"}, {"Idempotency-Key": "k-1"})

    res = post(app, "hal", {"prompt": "twice"}, {"Idempotency-Key": "k-1"})

    assert res.status_code == 422 and res.json["error"] == "idempotency_key_reused"
    assert balance(db, "hal") == 50


def test_failed_idempotency_key_replays_the_same_502(app: Any, db: Any, gemini: Any) -> None:
    make_user(db, "ivy", credits=100)
    gemini.mode = "error500"
    key = {"Idempotency-Key": "k-f"}

    first = post(app, "ivy", {"prompt": "x"}, key)
    gemini.mode = "ok"
    second = post(app, "ivy", {"prompt": "x"}, key)

    assert first.status_code == second.status_code == 502
    assert first.json == second.json
    assert balance(db, "ivy") == 100 and len(entries(db, "ivy", "charge")) == 1 and len(gemini.received) == 1


def test_idempotency_key_while_first_request_runs_is_409(app: Any, db: Any, gemini: Any) -> None:
    make_user(db, "jo", credits=100)
    gemini.gate = threading.Event()  # the model answers only once the second request has been answered
    key = {"Idempotency-Key": "k-slow"}

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, app, "jo", {"prompt": "x"}, key)
        wait_until(lambda: len(gemini.received) == 1, what="the first request's model call", timeout=30)
        second = post(app, "jo", {"prompt": "x"}, key)
        gemini.gate.set()
        first_res = first.result()

    assert first_res.status_code == 200
    assert (
        second.status_code == 409 and second.json["error"] == "in_progress" and second.headers["Retry-After"]
    )
    assert balance(db, "jo") == 50


def test_concurrent_generates_never_overdraw(app: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENERATE_CONCURRENCY", "8")  # the balance, not the limit, is under test
    make_user(db, "kim", credits=175)  # covers 3 of 8 initial generations
    make_user(db, "lee", credits=50)
    # Warm the lazy imports first: CPython 3.11.7 can raise "AST constructor recursion depth
    # mismatch" when threads import modules that build dataclasses at the same moment.
    assert post(app, "nobody", {"prompt": "warm-up"}).status_code == 403

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: post(app, "kim", {"prompt": f"p{i}"}), range(8)))

    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) == 3 and statuses.count(402) == 5, statuses
    assert balance(db, "kim") == 25 and balance(db, "lee") == 50
    assert [g["status"] for g in generations(db, "kim")] == ["succeeded"] * 3
    assert_ledger_consistent(db)


def test_wrong_method_is_405(app: Any, db: Any) -> None:
    res = app("generate").get("/", headers=bearer("x"))

    assert res.status_code == 405 and res.json["error"] == "method_not_allowed"


def test_cors_preflight_and_headers_on_errors(app: Any, db: Any) -> None:
    origin = {"Origin": "https://app.example.com"}

    pre = app("generate").options("/", headers={**origin, "Access-Control-Request-Method": "POST"})
    err = app("generate").post("/", json={"prompt": "x"}, headers=origin)
    foreign = app("generate").post("/", json={"prompt": "x"}, headers={"Origin": "https://evil.example"})

    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    assert err.status_code == 401 and err.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_an_allowed_origin_configured_with_capitals_matches_its_browser_origin(
    app: Any, db: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://App.Example.com/")
    reset_caches()
    origin = {"Origin": "https://app.example.com"}

    pre = app("generate").options("/", headers={**origin, "Access-Control-Request-Method": "POST"})

    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


@pytest.mark.parametrize("key", ["lost-1", None])
@pytest.mark.parametrize("fault", ["resent", "lost"])
def test_a_charge_whose_answer_was_lost_is_recognised_as_this_requests_own(
    app: Any, db: Any, fault: str, key: str | None
) -> None:
    """The charge commit is applied but its answer is lost: either the client library re-sends it
    (which then fails as already existing) or the call ends in DeadlineExceeded. The request must
    still find its own charge and finish, not answer 409 or leave the credits held until the sweep."""
    from google.api_core import exceptions as gexc

    from functions.lib.db import get_client

    make_user(db, "lou", credits=100)
    client = get_client()  # the handler's own cached client
    api = client._firestore_api
    real_commit = api.commit
    calls = {"n": 0}

    def commit_applied_answer_lost(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            return real_commit(*args, **kwargs)
        real_commit(*args, **{**kwargs, "retry": None})
        if fault == "resent":
            return real_commit(*args, **{**kwargs, "retry": None})  # raises: the writes exist now
        raise gexc.DeadlineExceeded("answer lost")

    api.commit = commit_applied_answer_lost
    try:
        res = post(app, "lou", {"prompt": "x"}, {"Idempotency-Key": key} if key else {})
    finally:
        api.commit = real_commit

    assert res.status_code == 200, res.json
    assert res.json["creditsCharged"] == 50 and res.json["balance"] == 50
    [gen] = generations(db, "lou")
    assert gen["status"] == "succeeded"
    assert len(entries(db, "lou", "charge")) == 1 and balance(db, "lou") == 50
    assert_ledger_consistent(db)


def test_a_call_without_a_key_reads_only_the_user_before_its_charge(app: Any, db: Any) -> None:
    """Its generation id is new and random, so there is nothing to look up under it; with a key the
    generation is read too (a replay). One billed read per call instead of two."""
    from functions.lib.db import get_client

    make_user(db, "rita", credits=200)
    api = get_client()._firestore_api
    real_read = api.batch_get_documents
    read: list[list[str]] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        request = kwargs.get("request") or args[0]
        read.append([path.rsplit("/", 2)[-2] for path in request["documents"]])
        return real_read(*args, **kwargs)

    api.batch_get_documents = counted
    try:
        assert post(app, "rita", {"prompt": "x"}).status_code == 200
        keyless = list(read)
        read.clear()
        assert post(app, "rita", {"prompt": "y"}, {"Idempotency-Key": "k-1"}).status_code == 200
    finally:
        api.batch_get_documents = real_read

    assert keyless == [["users"]]
    assert read == [["users", "generations"]]
    assert balance(db, "rita") == 100
    assert_ledger_consistent(db)
