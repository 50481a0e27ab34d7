"""`python -m functions.admin status`: one screen of what needs an operator, each with its command."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack import stripe_events as se
from tests.helpers import make_user


def test_status_shows_each_thing_to_act_on_with_its_command(
    app: Any, db: Any, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.admin.cli import main
    from functions.lib import generations, ledger, payments

    assert main(["status"]) == 0
    quiet = capsys.readouterr().out
    assert "open Stripe problem events: 0" in quiet and "stale charges (charged, older than" in quiet
    assert "last sweep: never recorded  -> python -m functions.admin sweep" in quiet

    make_user(db, "op", credits=100)
    ledger.grant(db, "op", "soon", 200, "x", expires_in_days=0.5)  # outlasts both charges
    charged = generations.charge(db, settings, generations.GenerationRequest("op", "crashed"))
    db.collection("generations").document(charged.generation_id).update(
        {"createdAt": datetime.now(UTC) - timedelta(seconds=settings.stale_charge_after_s + 5)}
    )
    payments.handle_event(
        db, settings, se.refund_event("refund.created", "re_x", "ch_x", "pi_never_sold", 100)
    )
    db.collection("subscriptions").document("sub_late").set({"userId": "op", "status": "past_due"})
    assert app("retention_sweep").post("/", json={}).status_code == 200  # records its run (and settles)
    charged = generations.charge(db, settings, generations.GenerationRequest("op", "crashed again"))
    db.collection("generations").document(charged.generation_id).update(
        {"createdAt": datetime.now(UTC) - timedelta(seconds=settings.stale_charge_after_s + 5)}
    )

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "open Stripe problem events: 1 (" in out and "replay EVENT_ID" in out
    assert (
        "stale charges (charged, older than STALE_CHARGE_AFTER_S): 1  -> python -m functions.admin settle"
        in out
    )
    assert "users with grants expiring within a day: 1" in out
    assert "subscriptions past due: 1" in out
    [sweep_line] = [line for line in out.splitlines() if line.startswith("last sweep: ")]
    assert '"refundsSettled": 1' in sweep_line and "never" not in sweep_line
    assert "last settlement: never recorded  -> python -m functions.admin settle" in out
