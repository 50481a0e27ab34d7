"""A `generate` process killed mid-generation leaves its charge `charged`; the sweep refunds it once.

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

from devstack.doubles import GeminiDouble
from devstack.procs import wait_until
from devstack.serve import ServedFunction
from functions.lib import retention
from tests.conftest import assert_ledger_consistent, bearer
from tests.helpers import balance, entries, generations, make_user


def post_generate(url: str, uid: str, outcome: list[Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps({"prompt": "a lighthouse at dusk"}).encode(), headers={**bearer(uid), "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            outcome.append(response.status)
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        outcome.append(exc)


def test_killed_generate_leaves_a_charge_that_the_sweep_refunds_exactly_once(db: Any, settings: Any, tmp_path: Path) -> None:
    make_user(db, "crash", credits=100)
    model = GeminiDouble(delay_s=60).start()
    served = ServedFunction(
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
    outcome: list[Any] = []
    caller = threading.Thread(target=post_generate, args=(served.url, "crash", outcome))
    try:
        caller.start()
        wait_until(lambda: [g["status"] for g in generations(db, "crash")] == ["charged"], what="the charge", timeout=30)
        wait_until(lambda: len(model.received) == 1, what="the model call", timeout=30)

        served.kill()
        caller.join(timeout=30)
    finally:
        served.stop()
        model.stop()

    assert len(outcome) == 1 and not isinstance(outcome[0], int), "the client got an answer from a killed process"
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
