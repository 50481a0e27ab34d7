"""A `generate` process killed mid-generation leaves its charge `charged`; whichever comes first of
the sweep, the user's next `credits` request and a replay of the Idempotency-Key refunds it, once.

End to end: the real functions-framework CLI serves `generate`, the real google-genai client calls a
Gemini double that hangs, and the process gets SIGKILL (what a function timeout or a crash does:
no exception, no refund) while the model call is in flight.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.doubles import GeminiDouble
from devstack.procs import wait_until
from devstack.serve import ServedFunction
from functions.lib import retention
from tests.helpers import assert_ledger_consistent, balance, bearer, entries, generations, make_user

PROMPT = {"prompt": "a lighthouse at dusk"}


def post_generate(url: str, uid: str, outcome: list[Any], key: str | None = None) -> None:
    headers = {**bearer(uid), "Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(PROMPT).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            outcome.append(response.status)
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        outcome.append(exc)


def serve_generate_with_a_hanging_model(model: GeminiDouble, tmp_path: Path) -> ServedFunction:
    return ServedFunction(
        "generate",
        env={
            "GENERATOR": "gemini",
            "GEMINI_API_KEY": "test-key",
            "GEMINI_MODEL": "gemini-test",
            "GEMINI_BASE_URL": model.url,
            "GENERATION_TIMEOUT_S": "60",  # the model call must still be running when the process dies
        },
        log_dir=tmp_path,
    )


@pytest.mark.slow  # a served process killed with SIGKILL, 2 s
def test_killed_generate_leaves_a_charge_that_the_sweep_refunds_exactly_once(
    db: Any, settings: Any, tmp_path: Path
) -> None:
    make_user(db, "crash", credits=100)
    model = GeminiDouble(delay_s=60).start()
    served = serve_generate_with_a_hanging_model(model, tmp_path)
    outcome: list[Any] = []
    caller = threading.Thread(target=post_generate, args=(served.url, "crash", outcome))
    try:
        caller.start()
        wait_until(
            lambda: [g["status"] for g in generations(db, "crash")] == ["charged"],
            what="the charge",
            timeout=30,
        )
        wait_until(lambda: len(model.received) == 1, what="the model call", timeout=30)

        served.kill()
        caller.join(timeout=30)
    finally:
        served.stop()
        model.stop()

    assert len(outcome) == 1 and not isinstance(outcome[0], int), (
        "the client got an answer from a killed process"
    )
    [gen] = generations(db, "crash")
    assert gen["status"] == "charged" and balance(db, "crash") == 50
    assert_ledger_consistent(db)

    not_yet = retention.sweep(db, settings)  # the charge is younger than STALE_CHARGE_AFTER_S

    assert not_yet.refunds_settled == 0
    assert db.collection("generations").document(gen["id"]).get().get("status") == "charged"

    later = datetime.now(UTC) + timedelta(seconds=settings.stale_charge_after_s + 60)
    settled = retention.sweep(db, settings, now=later)
    again = retention.sweep(db, settings, now=later)

    assert settled.refunds_settled == 1 and settled.complete and again.refunds_settled == 0
    stored = db.collection("generations").document(gen["id"]).get().to_dict()
    assert stored["status"] == "refunded" and stored["error"] == "stale_charge"
    [refund] = entries(db, "crash", "refund")
    assert refund["id"] == f"refund_{gen['id']}" and refund["amount"] == 50
    assert balance(db, "crash") == 100
    assert_ledger_consistent(db)


@pytest.mark.slow  # a served process killed with SIGKILL, 2 s
def test_a_killed_charge_is_refunded_by_the_next_credits_request_or_a_replay_of_its_key(
    app: Any, db: Any, settings: Any, tmp_path: Path
) -> None:
    make_user(db, "ava", credits=100)
    make_user(db, "ben", credits=100)
    model = GeminiDouble(delay_s=60).start()
    served = serve_generate_with_a_hanging_model(model, tmp_path)
    callers = [
        threading.Thread(target=post_generate, args=(served.url, uid, [], f"key-{uid}"))
        for uid in ("ava", "ben")
    ]
    try:
        for caller in callers:
            caller.start()
        wait_until(lambda: len(model.received) == 2, what="both model calls", timeout=30)
        served.kill()
        for caller in callers:
            caller.join(timeout=30)
    finally:
        served.stop()
        model.stop()
    in_flight = app("generate").post(
        "/", json=PROMPT, headers={**bearer("ben"), "Idempotency-Key": "key-ben"}
    )
    assert in_flight.status_code == 409  # younger than STALE_CHARGE_AFTER_S: it may still be running
    # Let STALE_CHARGE_AFTER_S pass: the charges' createdAt moves back by that much.
    for gen in generations(db, "ava") + generations(db, "ben"):
        created = gen["createdAt"] - timedelta(seconds=settings.stale_charge_after_s + 1)
        db.collection("generations").document(gen["id"]).update({"createdAt": created})

    statement = app("credits").get("/", headers=bearer("ava"))
    replay = app("generate").post("/", json=PROMPT, headers={**bearer("ben"), "Idempotency-Key": "key-ben"})
    replay_again = app("generate").post(
        "/", json=PROMPT, headers={**bearer("ben"), "Idempotency-Key": "key-ben"}
    )

    assert statement.status_code == 200 and statement.json["balance"] == 100
    assert [t["type"] for t in statement.json["transactions"]][:2] == ["refund", "charge"]
    assert replay.status_code == 502 and replay.json["error"] == "generation_failed"
    assert (
        replay.json["refunded"] == 50 and replay.json["balance"] == 100 and replay_again.json == replay.json
    )
    assert [g["status"] for g in generations(db, "ava") + generations(db, "ben")] == ["refunded", "refunded"]
    assert len(entries(db, "ava", "refund")) == 1 and len(entries(db, "ben", "refund")) == 1
    assert retention.sweep(db, settings).refunds_settled == 0
    assert_ledger_consistent(db)


def test_a_stale_replay_refunded_first_by_another_path_answers_what_is_stored(
    db: Any, settings: Any, monkeypatch: Any
) -> None:
    import pytest

    from functions.lib import generations, ledger
    from functions.lib.errors import GenerationFailed

    make_user(db, "vic", credits=100)
    request = generations.GenerationRequest("vic", "killed mid-generation", idempotency_key="key-vic")
    charged = generations.charge(db, settings, request)
    gen_ref = db.collection("generations").document(charged.generation_id)  # type: ignore[union-attr]
    gen_ref.update({"createdAt": datetime.now(UTC) - timedelta(seconds=settings.stale_charge_after_s + 1)})
    real_refund = generations.refund

    def another_path_first(client: Any, generation_id: str, uid: str, reason: str) -> Any:
        # Between the replay's read and its refund: the dying process's own failure path refunds it,
        # then a grant moves the balance on.
        real_refund(client, generation_id, uid, "model_error")
        ledger.grant(client, uid, "later", 7, "support")
        return real_refund(client, generation_id, uid, reason)

    monkeypatch.setattr(generations, "refund", another_path_first)
    with pytest.raises(GenerationFailed) as replay:
        generations.charge(db, settings, request)
    monkeypatch.setattr(generations, "refund", real_refund)
    with pytest.raises(GenerationFailed) as replay_again:
        generations.charge(db, settings, request)

    assert replay.value.body() == replay_again.value.body()
    assert replay.value.body()["reason"] == "model_error" and replay.value.body()["balance"] == 100
    assert balance(db, "vic") == 107 and len(entries(db, "vic", "refund")) == 1
