"""Operator CLI money commands against the emulator: grant, ledger, audit, replay."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack import stripe_events
from tests.helpers import assert_ledger_consistent, balance, entries, reset_caches, token

ROOT = Path(__file__).resolve().parent.parent


def admin(*argv: str) -> int:
    from functions.admin.cli import main

    return main(list(argv))


def test_grant_twice_with_one_id_grants_once(db: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token("uma")
    first = admin("grant", "uma", "40", "--reason", "ticket 7 apology", "--id", "ticket-7")
    second = admin("grant", "uma", "40", "--reason", "ticket 7 apology", "--id", "ticket-7")

    out = capsys.readouterr().out
    assert first == second == 0
    assert "granted 40 promotional credits to uma" in out and "already granted" in out
    assert balance(db, "uma") == 40 and [e["id"] for e in entries(db, "uma")] == ["grant_ticket-7"]


def test_grant_refuses_a_uid_without_an_auth_account_unless_told(
    db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = admin("grant", "umaa", "40", "--reason", "typo", "--id", "ticket-8")
    err = capsys.readouterr().err
    phantom = db.document("users/umaa").get().exists
    allowed = admin(
        "grant", "umaa", "40", "--reason", "migrated user", "--id", "ticket-8", "--allow-unknown-user"
    )

    assert (
        refused == 1
        and "no Firebase Auth account has uid 'umaa'" in err
        and "--allow-unknown-user" in err
        and not phantom
    )
    assert allowed == 0 and balance(db, "umaa") == 40


def test_grant_refuses_a_uid_that_cannot_name_a_document(db: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin("grant", "a/b", "40", "--reason", "x", "--id", "g", "--allow-unknown-user") == 1
    assert "cannot be a uid" in capsys.readouterr().err and list(db.collection("users").stream()) == []


def test_grant_refuses_a_non_positive_amount(db: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token("uma")
    assert admin("grant", "uma", "0", "--reason", "x", "--id", "g") == 1
    assert "positive" in capsys.readouterr().err and entries(db, "uma") == []


def test_ledger_prints_balance_and_entries(db: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token("vic")
    admin("grant", "vic", "30", "--reason", "seed", "--id", "a")
    admin("grant", "vic", "12", "--reason", "seed", "--id", "b")
    capsys.readouterr()

    assert admin("ledger", "vic") == 0

    out = capsys.readouterr().out
    assert "user vic: balance 42" in out and "grant_a" in out and "grant_b" in out
    entries = out[out.index("newest first") :]
    assert entries.index("grant_b") < entries.index("grant_a")


def test_audit_passes_on_a_clean_ledger_and_reports_a_corrupted_balance(
    db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.lib import ledger

    for i in range(25):
        ledger.grant(db, f"user{i:02d}", f"seed-{i}", 10 + i, "seed")
    assert admin("audit", "--progress-every", "10") == 0
    clean = capsys.readouterr().out
    assert "audit: 25 users, 25 ledger entries" in clean and "clean" in clean and "... 20 users" in clean

    db.collection("users").document("user07").update({"credits": 999})  # corruption, bypassing the ledger
    db.collection("users").document("user11").update({"credits": -3})
    db.collection("credit_transactions").document("grant_orphan").set(
        {"userId": "ghost", "type": "grant", "amount": 5}
    )

    assert admin("audit") == 4
    out = capsys.readouterr().out
    assert "DIFFERENCE user user07: balance_differs_from_ledger (credits 999, ledger sum 17)" in out
    assert "DIFFERENCE user user11: negative_balance (credits -3, ledger sum 21)" in out
    assert "DIFFERENCE user ghost: ledger_without_user (credits None, ledger sum 5)" in out
    # The hand edits moved neither grants nor debt: the balances disagree with those too.
    assert (
        "DIFFERENCE user user07: balance_differs_from_grants (credits 999, ledger sum 17, grants and debt 17)"
        in out
    )
    assert "6 differences" in out


def test_replay_of_a_fixed_problem_event_credits_once(
    db: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.lib import payments

    event = stripe_events.checkout_completed("cs_replay_1", "wes", "legacy", "pi_replay_1")
    assert payments.handle_event(db, settings, event).action == payments.Action.PROBLEM
    assert balance(db, "wes") == 0

    monkeypatch.setenv(
        "CREDIT_PACKS", '{"legacy": {"credits": 70, "price": "price_legacy"}}'
    )  # the operator's fix
    reset_caches()
    first = admin("replay", event["id"])
    second = admin("replay", event["id"])

    out = capsys.readouterr().out
    assert first == second == 0
    assert f"replayed {event['id']}: credited, +70 credits for wes" in out and "duplicate" in out
    assert balance(db, "wes") == 70 and [e["id"] for e in entries(db, "wes")] == ["purchase_cs_replay_1"]
    assert db.collection("stripe_event_problems").document(event["id"]).get().get("status") == "resolved"
    assert_ledger_consistent(db)


def test_replay_of_an_unknown_event_fails_clearly(db: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin("replay", "evt_nope") == 1
    assert "No stored Stripe event evt_nope" in capsys.readouterr().err


def test_cli_runs_as_a_module(db: Any) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "functions.admin", "audit"],
        env=dict(os.environ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert res.returncode == 0, res.stderr
    assert "audit: 0 users, 0 ledger entries" in res.stdout


def test_the_audit_reads_one_moment_so_live_traffic_shows_no_false_difference(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.lib import audit, ledger

    monkeypatch.setattr(audit, "PAGE", 2)  # several pages, so traffic lands between two reads
    for uid in ("a", "b", "c", "d"):
        ledger.grant(db, uid, f"seed-{uid}", 10, "seed")

    def traffic(report: audit.AuditReport) -> None:
        # After the first user the ledger scan has read c's entry, the balance scan not yet c's balance.
        if report.users == 1:
            ledger.grant(db, "c", "zz-late", 5, "granted while the audit runs")

    report = audit.audit(db, traffic, every=1)

    assert report.clean, report.differences
    assert (report.users, report.entries) == (4, 4)
    assert balance(db, "c") == 15 and audit.audit(db).entries == 5


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("grant", "uma", "40", "--reason", "x", "--id", "ticket/7"), "'id' must be an id"),
        (("grant", "uma", "40", "--reason", "x", "--id", ""), "'id' must be an id"),
        (("grant", "uma", "9223372036854775808", "--reason", "x", "--id", "g"), "at most 1,000,000"),
        (("ledger", "a/b"), "'user' must be an id"),
        (("ledger", "uma", "--limit", "-1"), "--limit must be between 1"),
        (("ledger", "uma", "--limit", "0"), "--limit must be between 1"),
        (("audit", "--progress-every", "0"), "--progress-every must be between 1"),
        (("export", "a/b"), "'user' must be an id"),
        (("export", "uma", "--out", "/missing/dir/x.json"), "cannot write /missing/dir/x.json"),
        (("forget", "a/b"), "'user' must be an id"),
        (("forget", ""), "'user' must be an id"),
        (("replay", "evt/1"), "'event_id' must be an id"),
    ],
)
def test_bad_operator_input_fails_with_a_message_naming_it_and_writes_nothing(
    db: Any, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    token("uma")

    code = admin(*argv)

    assert code == 1 and says in capsys.readouterr().err
    assert list(db.collection("credit_transactions").stream()) == []


def test_export_files_are_readable_by_their_owner_only_even_when_they_existed(
    db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token("uma")
    admin("grant", "uma", "40", "--reason", "r", "--id", "t-export")
    fresh, existing = tmp_path / "new.json", tmp_path / "old.json"
    existing.write_text("an older, longer export that must not survive " * 100)
    existing.chmod(0o644)

    assert admin("export", "uma", "--out", str(fresh)) == 0
    assert admin("export", "uma", "--out", str(existing)) == 0

    for path in (fresh, existing):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert [e["id"] for e in json.loads(path.read_text())["ledger"]] == ["grant_t-export"]


def test_a_replay_that_leaves_its_event_open_fails(
    db: Any, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.lib import payments

    pi = stripe_events.new_id("pi")
    early = stripe_events.refund_event("refund.created", "re_open", "ch_" + pi, pi, 1000, "succeeded")
    assert payments.handle_event(db, settings, early).action == "parked"

    code = admin("replay", early["id"])

    assert code == 1 and "still open" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [("grant", "nell", "100", "--reason", "r", "--id", "t-1"), ("forget", "nell")]
)
def test_a_command_without_google_credentials_names_what_to_set(
    db: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: tuple[str, ...],
) -> None:
    """Locally, FIRESTORE_EMULATOR_HOST without FIREBASE_AUTH_EMULATOR_HOST sends the Auth calls to
    Google, which needs credentials: a message naming the missing variable and exit 2, not a traceback."""
    monkeypatch.delenv("FIREBASE_AUTH_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    reset_caches()

    assert admin(*command) == 2
    err = capsys.readouterr().err
    assert f"{command[0]} failed: no Google credentials for Firebase Auth" in err
    assert "FIREBASE_AUTH_EMULATOR_HOST is not" in err and "Traceback" not in err
    assert entries(db, "nell", "grant") == []


def test_schedule_without_google_credentials_says_how_to_log_in(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    argv = ["--project", "acme-prod", "--region", "us-central1", "--url", "https://sweep.example.com"]

    assert admin("schedule", *argv, "--service-account", "sweep@acme-prod.iam.gserviceaccount.com") == 2
    err = capsys.readouterr().err
    assert (
        "schedule failed: no usable Google credentials" in err
        and "gcloud auth application-default login" in err
    )
    assert "Traceback" not in err


def test_a_login_that_can_no_longer_be_refreshed_says_how_to_log_in_again(
    db: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.auth.exceptions import RefreshError

    from functions.lib import auth

    def expired(uid: str) -> Any:
        raise RefreshError("Reauthentication is needed")

    monkeypatch.setattr(auth, "lookup_account", expired)

    assert admin("grant", "nell", "100", "--reason", "r", "--id", "t-1") == 2
    err = capsys.readouterr().err
    assert "grant failed: no usable Google credentials (Reauthentication is needed)" in err
    assert "gcloud auth application-default login" in err and "Traceback" not in err
    assert entries(db, "nell", "grant") == []
