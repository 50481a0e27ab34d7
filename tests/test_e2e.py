"""End to end: the README's local run, the whole served stack (Firestore and Auth emulators, every
function under the functions-framework CLI, the Stripe double), driven as a client would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.no_emulator
def test_local_run_journey_passes_and_stops_everything() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIRESTORE_EMULATOR", "FIREBASE_AUTH_EMULATOR", "STRIPE_", "GEMINI_"))}
    res = subprocess.run([sys.executable, "-m", "devstack.local_run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "signed up with the Auth emulator" in out
    assert '-> 200 {"received": true, "outcome": "credited"}' in out
    assert '"outcome": "duplicate"' in out and "webhook: a forged signature" in out
    assert "journey complete: balance 425 = sum of 5 ledger entries" in out
    assert "stopping everything this run started" in out
