"""End to end: the README's local run, the whole served stack (Firestore and Auth emulators, every
function under the functions-framework CLI, the Stripe double), driven as a client would."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

# Minutes of the suite's time (browsers, served stacks, emulator start-ups): `scripts/test --fast` skips them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.no_emulator
def test_local_run_journey_passes_and_stops_everything(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FIRESTORE_EMULATOR", "FIREBASE_AUTH_EMULATOR", "STRIPE_", "GEMINI_"))
    }
    report_file = tmp_path / "journey.json"
    temp = tmp_path / "tmp"
    temp.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "devstack.local_run", "--report", str(report_file)],
        cwd=ROOT,
        env={**env, "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(report_file.read_text())
    calls = {call["step"]: (call["status"], call["body"]) for call in report["steps"]}
    assert calls["generate before accepting the terms"][0] == 403
    assert calls["generate with no credits"][0] == 402
    assert calls["webhook: checkout.session.completed (paid)"] == (
        200,
        {"received": True, "outcome": "credited"},
    )
    assert calls["webhook: the same event redelivered"] == (200, {"received": True, "outcome": "duplicate"})
    assert calls["webhook: a forged signature"][0] == 400
    assert calls["generate: the model fails (refunded)"][1]["refunded"] == 25
    status, statement = calls["credits: balance and ledger"]
    assert status == 200 and statement["balance"] == 455 == sum(
        t["amount"] for t in statement["transactions"]
    )
    assert len(statement["transactions"]) == 8
    # Grants: the flash promotion expired before the first generation, which spent the welcome
    # grant before the pack.
    kinds = [(t["type"], t["amount"], t["grantId"]) for t in statement["transactions"]]
    assert ("expiry", -20, "grant_flash") in kinds
    [first_charge] = [t for t in statement["transactions"] if t["amount"] == -50]
    assert first_charge["metadata"]["draws"]["grant_welcome"] == 30
    _, after_first = calls["credits: the expired flash grant written off, welcome spent first"]
    assert [(g["category"], g["remaining"]) for g in after_first["grants"]] == [("paid", 480)]
    assert calls["retention_sweep: one nightly pass"][1]["complete"] is True

    # The subscription: paid on the double's checkout page, its events through the webhook in
    # Stripe's order; the first period granted once, spent first; one renewal on the test clock.
    assert calls["checkout: the 'pro' plan"][0] == 200
    subscribed = [
        (c["step"], c["body"].get("outcome"))
        for c in report["steps"]
        if c["step"].startswith("subscribe webhook:")
    ]
    assert subscribed == [
        ("subscribe webhook: checkout.session.completed", "ignored"),
        ("subscribe webhook: customer.subscription.created", "recorded"),
        ("subscribe webhook: invoice.paid", "granted"),
        ("subscribe webhook: invoice_payment.paid", "linked"),
    ]
    assert calls["checkout: the plan again (already subscribed)"] == (
        409,
        {
            "error": "already_subscribed",
            "message": calls["checkout: the plan again (already subscribed)"][1]["message"],
        },
    )
    sub = calls["credits: the subscription"][1]["subscription"]
    assert (sub["planId"], sub["status"], sub["cancelAtPeriodEnd"]) == ("pro", "active", False)
    _, spent = calls["credits: the period's grant paid for both"]
    assert [(g["id"][:7], g["remaining"]) for g in spent["grants"]] == [("period_", 925), ("purchas", 455)]
    renewal = [
        (c["step"], c["status"], c["body"].get("outcome"))
        for c in report["steps"]
        if c["step"].startswith("renewal webhook:")
    ]
    assert [(s.split(": ")[1], st, o) for s, st, o in renewal] == [
        ("customer.subscription.updated", 200, "recorded"),
        ("invoice.created", 200, "ignored"),
        ("invoice.finalized", 200, "ignored"),
        ("invoice.paid", 200, "granted"),
        ("invoice_payment.paid", 200, "linked"),
    ]
    _, renewed = calls["credits: the new period and the rollover"]
    assert [(g["id"].split("_")[0], g["remaining"]) for g in renewed["grants"]] == [
        ("period", 1000),
        ("rollover", 200),
        ("purchase", 455),
    ]
    # The new period's grant and the rollover expire together, a period after the first one.
    [ends] = {g["expiresAt"] for g in renewed["grants"][:2]}
    gap = datetime.fromisoformat(ends) - datetime.fromisoformat(spent["grants"][0]["expiresAt"])
    assert gap == timedelta(days=30)
    status, after = calls["credits: balance and ledger after the renewal"]
    assert status == 200 and after["balance"] == 455 + 1000 - 75 - 925 + 200 + 1000 == 1655
    assert after["balance"] == sum(t["amount"] for t in after["transactions"])
    first = spent["grants"][0]["id"]
    moved = [(t["type"], t["amount"]) for t in after["transactions"][:3]]
    assert moved == [("rollover", 200), ("expiry", -925), ("period", 1000)]
    assert after["transactions"][1]["grantId"] == first
    assert report["stopped"] is True
    assert not list(temp.glob("credits-local-*")), "a passed run removes its logs"


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children in their own process groups included), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.no_emulator
def test_sigterm_stops_every_process_the_served_stack_started_and_frees_their_ports() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FIRESTORE_EMULATOR", "FIREBASE_AUTH_EMULATOR", "STRIPE_", "GEMINI_"))
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.local_run", "--serve", "--no-journey"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        for line in proc.stdout:  # blocks until the stack prints that it serves (or exits)
            seen.append(line)
            if "stops everything" in line:
                break
        ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "".join(seen))}
        started = _descendants(proc.pid)

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stdout.read()

    assert "stops everything" in seen[-1], "".join(seen)[-3000:]
    assert len(ports) >= 8 and len(started) >= 8, (ports, started)
    assert code == 0 and "stopping everything this run started" in rest
    assert _descendants(proc.pid) == set() and not [pid for pid in started if Path(f"/proc/{pid}").exists()]
    assert [p for p in ports if not _port_free(p)] == []
