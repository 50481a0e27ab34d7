"""firestore.rules against an emulator started with the rules file, called as client apps call it.

Requests go to the emulator's REST API with a user's ID token (what the Web/mobile SDKs send);
seeding uses the emulator's `owner` token, which bypasses rules like the Admin SDK does.
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.firestore import FirestoreEmulator
from devstack.tokens import emulator_id_token

# slow: an emulator of its own to start, or a deploy to pack (`scripts/test --fast` skips them).
pytestmark = [pytest.mark.no_emulator, pytest.mark.slow]
PROJECT = "demo-credits-rules"
ROOT = Path(__file__).resolve().parent.parent


class RestClient:
    def __init__(self, emu: FirestoreEmulator) -> None:
        self.base = f"http://{emu.host}/v1/projects/{PROJECT}/databases/(default)/documents"

    def call(self, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> int:
        req = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                return int(res.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def seed(self, path: str, fields: dict[str, str]) -> None:
        body = {"fields": {k: {"stringValue": v} for k, v in fields.items()}}
        assert self.call("PATCH", path, "owner", body) == 200


@pytest.fixture(scope="module")
def rest() -> Iterator[RestClient]:
    emu = FirestoreEmulator(PROJECT, log_dir=Path(tempfile.mkdtemp()), rules=ROOT / "firestore.rules")
    client = RestClient(emu)
    for uid in ("u1", "u2"):
        client.seed(f"/users/{uid}", {"name": uid})
        client.seed(f"/credit_transactions/purchase_{uid}", {"userId": uid})
        client.seed(f"/generations/g_{uid}", {"userId": uid})
        client.seed(f"/projects/p_{uid}", {"ownerId": uid})
        client.seed(f"/projects/p_{uid}/versions/v1", {"prompt": "x"})
    client.seed("/analytics_events/e1", {"userId": "u1"})
    client.seed("/credit_transactions/forfeit_erased_0f3a", {"userId": "erased_0f3a", "type": "forfeit"})
    yield client
    emu.stop()


def token(uid: str) -> str:
    return emulator_id_token(uid, PROJECT)


@pytest.mark.parametrize(
    "path",
    [
        "/users/u1",
        "/credit_transactions/purchase_u1",
        "/generations/g_u1",
        "/projects/p_u1",
        "/projects/p_u1/versions/v1",
    ],
)
def test_a_user_reads_their_own_documents(rest: RestClient, path: str) -> None:
    assert rest.call("GET", path, token("u1")) == 200


@pytest.mark.parametrize(
    "path",
    [
        "/users/u2",
        "/credit_transactions/purchase_u2",
        "/generations/g_u2",
        "/projects/p_u2",
        "/projects/p_u2/versions/v1",
        "/analytics_events/e1",
    ],
)
def test_other_users_documents_and_analytics_are_denied(rest: RestClient, path: str) -> None:
    assert rest.call("GET", path, token("u1")) == 403


def test_signed_out_reads_are_denied(rest: RestClient) -> None:
    req = urllib.request.Request(rest.base + "/users/u1")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403


def test_a_user_can_query_their_own_ledger_but_not_everyones(rest: RestClient) -> None:
    def query(where: dict[str, Any] | None) -> int:
        structured: dict[str, Any] = {"from": [{"collectionId": "credit_transactions"}]}
        if where:
            structured["where"] = where
        return rest.call("POST", ":runQuery", token("u1"), {"structuredQuery": structured})

    own = {"fieldFilter": {"field": {"fieldPath": "userId"}, "op": "EQUAL", "value": {"stringValue": "u1"}}}
    assert query(own) == 200
    assert query(None) == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/users/u1"),
        ("PATCH", "/users/u1?updateMask.fieldPaths=credits"),
        ("PATCH", "/users/new-user"),
        ("PATCH", "/credit_transactions/grant_free"),
        ("PATCH", "/credit_transactions/purchase_u1"),
        ("DELETE", "/credit_transactions/purchase_u1"),
        ("PATCH", "/generations/g_u1"),
        ("PATCH", "/analytics_events/e2"),
        ("PATCH", "/projects/p_u1"),
        ("DELETE", "/projects/p_u1/versions/v1"),
    ],
)
def test_every_client_write_to_money_and_records_is_denied(rest: RestClient, method: str, path: str) -> None:
    uid = "new-user" if "new-user" in path else "u1"
    body = (
        {"fields": {"credits": {"integerValue": "1000000"}, "userId": {"stringValue": uid}}}
        if method == "PATCH"
        else None
    )

    assert rest.call(method, path, token(uid), body) == 403


def test_an_erased_users_ledger_is_readable_by_no_sign_in_not_even_one_named_like_its_pseudonym(
    rest: RestClient,
) -> None:
    own = {
        "fieldFilter": {
            "field": {"fieldPath": "userId"},
            "op": "EQUAL",
            "value": {"stringValue": "erased_0f3a"},
        }
    }
    query = {"structuredQuery": {"from": [{"collectionId": "credit_transactions"}], "where": own}}

    assert rest.call("GET", "/credit_transactions/forfeit_erased_0f3a", token("erased_0f3a")) == 403
    assert rest.call("GET", "/credit_transactions/forfeit_erased_0f3a", token("u1")) == 403
    assert rest.call("POST", ":runQuery", token("erased_0f3a"), query) == 403
