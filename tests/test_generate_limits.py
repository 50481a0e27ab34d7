"""generate's cost controls: per-user calls, refunded failures and generations in flight (counted on
users/{uid}), the model's circuit breaker, and what one model request may use."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devstack.procs import wait_until
from functions.lib.breaker import CircuitBreaker
from functions.lib.errors import ModelUnavailable
from tests.helpers import assert_ledger_consistent, balance, entries, generations, make_user, reset_caches
from tests.test_generate import post


def assert_refused_without_charge(res: Any, db: Any, uid: str, balance_before: int, charges: int) -> None:
    assert res.status_code == 429 and res.json["error"] == "rate_limited", res.json
    assert int(res.headers["Retry-After"]) >= 1 and res.json["retryAfterSeconds"] >= 1
    assert balance(db, uid) == balance_before and len(entries(db, uid, "charge")) == charges


def test_calls_past_the_window_limit_are_429_and_charge_and_call_nothing(
    app: Any, db: Any, gemini: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENERATE_LIMIT", "2")
    monkeypatch.setenv("GENERATE_WINDOW_S", "3600")
    make_user(db, "ada", credits=500)

    answers = [post(app, "ada", {"prompt": f"p{n}"}) for n in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert_refused_without_charge(answers[2], db, "ada", 400, 2)
    assert answers[2].json["limit"] == 2 and int(answers[2].headers["Retry-After"]) <= 3600
    assert len(gemini.received) == 2
    assert post(app, "bob-other", {"prompt": "x"}).status_code == 403  # another user is not limited by ada's
    assert_ledger_consistent(db)


def test_refunded_failures_past_their_limit_are_429_and_call_nothing(
    app: Any, db: Any, gemini: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENERATE_FAILURE_LIMIT", "2")
    make_user(db, "bea", credits=500)
    gemini.mode = "blocked"

    answers = [post(app, "bea", {"prompt": f"p{n}"}) for n in range(3)]

    assert [a.status_code for a in answers] == [502, 502, 429]
    assert answers[0].json["reason"] == "blocked" and answers[0].json["fault"] == "user"
    assert_refused_without_charge(answers[2], db, "bea", 500, 2)
    assert len(gemini.received) == 2
    limits = db.document("users/bea").get().to_dict()["generateLimits"]
    assert limits["failures"]["count"] == 2 and limits["inFlight"] == {}


def test_upstream_failures_are_refunded_without_counting_toward_the_failure_limit(
    app: Any, db: Any, gemini: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENERATE_FAILURE_LIMIT", "1")
    monkeypatch.setenv("MODEL_BREAKER_FAILURES", "10")
    make_user(db, "cid", credits=500)
    gemini.mode = "error500"

    answers = [post(app, "cid", {"prompt": f"p{n}"}) for n in range(3)]

    assert [a.status_code for a in answers] == [502, 502, 502]
    assert {a.json["fault"] for a in answers} == {"ours"} and balance(db, "cid") == 500


def test_generations_in_flight_past_the_concurrency_limit_are_429(
    app: Any, db: Any, gemini: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENERATE_CONCURRENCY", "1")
    make_user(db, "dot", credits=500)
    gemini.gate = threading.Event()  # the first generation stays in the model until the second is answered

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, app, "dot", {"prompt": "slow"})
        wait_until(lambda: len(gemini.received) == 1, what="the first model call", timeout=30)
        second = post(app, "dot", {"prompt": "second"})
        gemini.gate.set()
        first_res = first.result()
    third = post(app, "dot", {"prompt": "after"})  # the completion took the first out of flight

    assert first_res.status_code == 200 and third.status_code == 200
    assert_refused_without_charge(second, db, "dot", 400, 2)
    assert len(gemini.received) == 2
    assert db.document("users/dot").get().to_dict()["generateLimits"]["inFlight"] == {}


def test_a_crashed_generation_holds_its_slot_only_until_the_function_timeout(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.lib import generations as gens
    from functions.lib.config import get_settings

    monkeypatch.setenv("GENERATE_CONCURRENCY", "1")
    reset_caches()
    settings = get_settings()
    make_user(db, "eve", credits=500)
    crashed = gens.charge(db, settings, gens.GenerationRequest("eve", "crash"))  # the process dies here
    assert isinstance(crashed, gens.Charge)

    while_live = post(app, "eve", {"prompt": "next"})
    # The crashed request's start, moved back past the generate function's timeout: no live request is that old.
    old = time.time() - settings.generate_function_timeout_s - 1
    db.document("users/eve").update({f"generateLimits.inFlight.{crashed.generation_id}": old})
    after = post(app, "eve", {"prompt": "next"})

    assert while_live.status_code == 429 and after.status_code == 200
    in_flight = db.document("users/eve").get().to_dict()["generateLimits"]["inFlight"]
    assert in_flight == {}  # the stale key was dropped by the next charge, the new one by its completion


def test_the_breaker_opens_on_a_burst_of_429s_fails_fast_and_closes_after_a_good_trial(
    app: Any, db: Any, gemini: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_BREAKER_FAILURES", "3")
    monkeypatch.setenv("MODEL_BREAKER_COOLDOWN_S", "1")
    make_user(db, "fay", credits=1000)
    gemini.mode = "error429"

    burst = [post(app, "fay", {"prompt": f"p{n}"}) for n in range(3)]
    open_answer = post(app, "fay", {"prompt": "while open"})
    docs_while_open = len(generations(db, "fay"))

    assert [a.status_code for a in burst] == [502, 502, 502] and burst[0].json["reason"] == "rate_limited"
    assert open_answer.status_code == 503 and open_answer.json["error"] == "model_unavailable"
    assert 1 <= int(open_answer.headers["Retry-After"]) <= 1
    assert len(gemini.received) == 3 and docs_while_open == 3 and balance(db, "fay") == 1000

    time.sleep(1.1)  # the cooldown ends: one trial call goes through
    gemini.mode = "ok"
    trial = post(app, "fay", {"prompt": "trial"})
    closed = post(app, "fay", {"prompt": "closed"})

    assert trial.status_code == 200 and closed.status_code == 200 and len(gemini.received) == 5
    assert_ledger_consistent(db)


def test_a_failed_trial_opens_the_breaker_again_and_one_trial_at_a_time() -> None:
    now = [0.0]
    breaker = CircuitBreaker(2, window_s=10, cooldown_s=5, clock=lambda: now[0])
    for _ in range(2):
        breaker.failed_upstream(breaker.admit())
    assert breaker.state == "open"
    with pytest.raises(ModelUnavailable) as err:
        breaker.admit()
    assert err.value.headers["Retry-After"] == "5"

    now[0] = 5.0
    trial = breaker.admit()
    with pytest.raises(ModelUnavailable):  # the trial is out: nobody else calls the model
        breaker.admit()
    breaker.failed_upstream(trial)
    assert breaker.state == "open"

    now[0] = 10.0
    breaker.release(breaker.admit())  # a trial that did not reach the model leaves the next one its turn
    breaker.succeeded(breaker.admit())
    assert breaker.state == "closed"


def test_failures_spread_beyond_the_window_do_not_open_the_breaker() -> None:
    now = [0.0]
    breaker = CircuitBreaker(2, window_s=10, cooldown_s=5, clock=lambda: now[0])
    breaker.failed_upstream(breaker.admit())
    now[0] = 11.0
    breaker.failed_upstream(breaker.admit())

    assert breaker.state == "closed"


def test_the_model_request_carries_the_output_cap_and_thinking_budget(
    app: Any, db: Any, gemini: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_MAX_OUTPUT_TOKENS", "512")
    monkeypatch.setenv("GEMINI_THINKING_BUDGET", "0")
    make_user(db, "gus", credits=100)

    assert post(app, "gus", {"prompt": "a long saga"}).status_code == 200
    # google-genai sends the thinking config's field in snake case (the API's JSON parser takes both).
    assert gemini.generation_config() == {"maxOutputTokens": 512, "thinkingConfig": {"thinking_budget": 0}}


def test_the_output_cap_reached_before_any_text_is_refunded_as_the_users_and_logged_at_warning(
    app: Any, db: Any, gemini: Any, caplog: pytest.LogCaptureFixture
) -> None:
    make_user(db, "hal", credits=100)
    gemini.mode = "max_tokens"

    with caplog.at_level(logging.INFO):
        res = post(app, "hal", {"prompt": "write forever"})

    assert res.status_code == 502 and (res.json["reason"], res.json["fault"]) == ("output_limit", "user")
    assert balance(db, "hal") == 100
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    refunded = [
        r for r in caplog.records if r.levelno == logging.WARNING and "output_limit" in r.getMessage()
    ]
    assert refunded


def test_settling_a_crashed_charge_frees_its_slot_without_counting_a_failure(db: Any, settings: Any) -> None:
    from functions.lib import generations as gens

    make_user(db, "ida", credits=100)
    crashed = gens.charge(db, settings, gens.GenerationRequest("ida", "crash"))
    assert isinstance(crashed, gens.Charge)
    in_flight = db.document("users/ida").get().to_dict()["generateLimits"]["inFlight"]

    settled = gens.refund(db, crashed.generation_id, "ida", gens.STALE_CHARGE_REASON)

    limits = db.document("users/ida").get().to_dict()["generateLimits"]
    assert list(in_flight) == [crashed.generation_id] and settled.applied
    assert limits["inFlight"] == {} and "failures" not in limits and limits["calls"]["count"] == 1
    assert_ledger_consistent(db)
