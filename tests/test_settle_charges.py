"""The settlement job (`settle_charges`, scheduler_fn.on_schedule) served by functions-framework, as
Cloud Scheduler calls it: stale charges are refunded exactly once, live ones are left alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from functions.lib.generations import GenerationRequest, charge
from tests.helpers import assert_ledger_consistent, balance, entries, generations, make_user


def test_the_scheduled_job_refunds_stale_charges_once_and_leaves_live_ones(
    db: Any, settings: Any, app: Any
) -> None:
    make_user(db, "crashed", credits=100)
    stale = charge(db, settings, GenerationRequest("crashed", "killed mid-generation"))
    live = charge(db, settings, GenerationRequest("crashed", "still running"))
    old = db.collection("generations").document(stale.generation_id).get().get("createdAt")  # type: ignore[union-attr]
    db.collection("generations").document(stale.generation_id).update(  # type: ignore[union-attr]
        {"createdAt": old - timedelta(seconds=settings.stale_charge_after_s + 1)}
    )
    job = app("settle_charges")
    headers = {
        "X-CloudScheduler-JobName": "firebase-schedule-settle_charges-us-central1",
        "X-CloudScheduler-ScheduleTime": "2026-11-26T07:30:00Z",
    }

    first = job.post("/", headers=headers)
    second = job.post("/", headers=headers)

    assert first.status_code == 200 and second.status_code == 200
    statuses = {g["id"]: g["status"] for g in generations(db, "crashed")}
    assert statuses == {stale.generation_id: "refunded", live.generation_id: "charged"}  # type: ignore[union-attr]
    assert [e["id"] for e in entries(db, "crashed", "refund")] == [f"refund_{stale.generation_id}"]  # type: ignore[union-attr]
    assert balance(db, "crashed") == 100 - 50
    assert_ledger_consistent(db)
